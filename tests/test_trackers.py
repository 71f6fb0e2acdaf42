"Tests of `tsai_cbs.trackers` (and `MultiLossCallback.set_weight`): BPReveal's re-basing table through real fastai trackers, record epochs across fits."
import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.tracker import EarlyStoppingCallback, ReduceLROnPlateau, SaveModelCallback, TrackerCallback

from tsai_cbs.multi_loss import MultiLoss, MultiLossCallback
from tsai_cbs.trackers import TrackerRecords, find_trackers
from tsai_cbs.testing import synth_learner

RAW, WGT = [10., 9., 8., 7., 6., 5.], [1., 1., 1., 2., 2., 2.]


class Schedule(Callback):
    "Makes the scripted term return RAW[epoch]; sets the weight WGT[epoch] before each epoch (re-basing through the MultiLossCallback if `rebase`)"
    order = 0
    def __init__(self, state, mlcb, rebase): self.state, self.mlcb, self.rebase_on, self.rebased = state, mlcb, rebase, {}
    def before_epoch(self):
        self.state['epoch'] = self.epoch
        w = WGT[self.epoch]
        if w == self.mlcb.mloss.weight('h', 'c'): return
        if self.rebase_on: self.rebased[self.epoch] = [(type(t).__name__, old, new) for t, old, new in self.mlcb.set_weight('h', 'c', w)]
        else: self.mlcb.mloss.set_weight('h', 'c', w)


def table_learner(trackers, rebase, path, train_mean=True):
    state = {'epoch': 0}
    def scripted(pred, y): return torch.tensor(RAW[state['epoch']]) + 0 * pred.mean()  # gradient through the model, value scripted
    mlcb = MultiLossCallback(train_mean=train_mean)
    sched = Schedule(state, mlcb, rebase)
    learn = synth_learner(loss_func=MultiLoss({'h': {'c': scripted}}), cbs=[*trackers, mlcb, sched], path=path, n_train=64, n_valid=32, lr=1e-3)
    return learn, sched, mlcb


def fit_quiet(learn, *args, **kwargs):
    with learn.no_bar(), learn.no_logging(): learn.fit(*args, **kwargs)


def test_bpreveal_table_rebased(in_tmp, capsys):
    es, lrp, sm = EarlyStoppingCallback(patience=1), ReduceLROnPlateau(patience=1, factor=10), SaveModelCallback(fname='tbl')
    es_tr = EarlyStoppingCallback(monitor='train_loss', patience=1)
    learn, sched, mlcb = table_learner([es, lrp, sm, es_tr], rebase=True, path=in_tmp)
    fit_quiet(learn, 6)
    vals = learn.recorder.values
    assert len(vals) == 6, 'early stopping fired: 14 after a re-based 16 must count as an improvement'
    assert [v[1] for v in vals] == pytest.approx([10, 9, 8, 14, 12, 10])
    assert [v[0] for v in vals] == pytest.approx([10, 9, 8, 14, 12, 10])  # train_loss: the epoch mean
    # the one weight change (before epoch 3) re-based the four trackers from 8 to 2 * 8
    assert sched.rebased == {3: [('SaveModelCallback', 8., 16.), ('ReduceLROnPlateau', 8., 16.),
                                 ('EarlyStoppingCallback', 8., 16.), ('EarlyStoppingCallback', 8., 16.)]}
    for t in (es, lrp, sm, es_tr): assert t.best == pytest.approx(10.)
    assert learn.opt.hypers[-1]['lr'] == pytest.approx(1e-3)  # the plateau callback never lost patience
    out = capsys.readouterr().out
    assert 'Better model found at epoch 3' in out and 'early stopping' not in out
    assert mlcb.records.record_epoch(es) == (0, 5)


def test_bpreveal_table_without_rebase_stops(in_tmp, capsys):
    "The control: same run, weight changed without re-basing, stops at epoch 3 and cuts the LR"
    es, lrp = EarlyStoppingCallback(patience=1), ReduceLROnPlateau(patience=1, factor=10)
    learn, _, _ = table_learner([es, lrp], rebase=False, path=in_tmp)
    fit_quiet(learn, 6)
    assert len(learn.recorder.values) == 4
    assert es.best == pytest.approx(8.)
    assert learn.opt.hypers[-1]['lr'] == pytest.approx(1e-4)
    assert 'No improvement since epoch 2: early stopping' in capsys.readouterr().out


def test_other_metrics_left_alone(in_tmp):
    "A tracker on a raw term column keeps its best; only total-loss trackers move"
    raw_tr = EarlyStoppingCallback(monitor='valid_h_c_loss', patience=10)
    w_tr = EarlyStoppingCallback(monitor='valid_h_c_wloss', patience=10)
    es = EarlyStoppingCallback(patience=10)
    learn, sched, _ = table_learner([raw_tr, w_tr, es], rebase=True, path=in_tmp)
    fit_quiet(learn, 4)
    assert [n for n, _, _ in sched.rebased[3]] == ['EarlyStoppingCallback']
    assert raw_tr.best == pytest.approx(7.) and w_tr.best == pytest.approx(8.) and es.best == pytest.approx(14.)


def test_train_loss_tracker_needs_epoch_mean(in_tmp):
    "With the smoothed fastai train_loss (train_mean=False) a train_loss tracker cannot be re-based: it is left alone"
    es_tr, es = EarlyStoppingCallback(monitor='train_loss', patience=10), EarlyStoppingCallback(patience=10)
    learn, sched, _ = table_learner([es_tr, es], rebase=True, path=in_tmp, train_mean=False)
    fit_quiet(learn, 4)
    assert [(n, new) for n, _, new in sched.rebased[3]] == [('EarlyStoppingCallback', pytest.approx(16.))]
    assert sched.rebased[3] and es.best == pytest.approx(14.)


def test_tsai_save_model_rebased(in_tmp):
    save_model = pytest.importorskip('tsai_cbs.save_model')
    sm, es = save_model.SaveModel(fname='tbl'), EarlyStoppingCallback(patience=1)
    learn, sched, mlcb = table_learner([sm, es], rebase=True, path=in_tmp)
    fit_quiet(learn, 6)
    assert len(learn.recorder.values) == 6
    assert ('SaveModel', 8., 16.) in sched.rebased[3]
    assert sm.best == pytest.approx(10.) and sm.best_epoch == 5
    assert mlcb.records.record_epoch(sm) == (0, 5)


def test_records_across_fits(in_tmp):
    "Record epochs keyed (fit_no, epoch): with reset_on_fit=False a best from the first fit keeps its key"
    recs = TrackerRecords()
    keep = EarlyStoppingCallback(patience=100, reset_on_fit=False)
    reset = EarlyStoppingCallback(monitor='train_loss', patience=100)
    learn = synth_learner(cbs=[keep, reset, recs], path=in_tmp, n_train=64, n_valid=32, lr=3e-2)
    fit_quiet(learn, 3)
    v1 = [v[1] for v in learn.recorder.values]
    fit_quiet(learn, 3)
    v2 = [v[1] for v in learn.recorder.values]
    allv = [((0, e), x) for e, x in enumerate(v1)] + [((1, e), x) for e, x in enumerate(v2)]
    best_key, best = None, np.inf
    for k, x in allv:
        if x < best: best_key, best = k, x
    assert keep.best == pytest.approx(best) and recs.record_epoch(keep) == best_key
    t2 = [v[0] for v in learn.recorder.values]
    assert recs.record_epoch(reset) == (1, int(np.argmin(t2)))
    assert recs.fit_no == 1 and find_trackers(learn) == [keep, reset]
    assert find_trackers(learn, ('train_loss',)) == [reset]


def test_unknown_record_not_rebased(in_tmp):
    "A tracker first seen with a finite best (record epoch unknown) is not re-based"
    recs = TrackerRecords()
    es = EarlyStoppingCallback(patience=100, reset_on_fit=False)
    learn = synth_learner(cbs=[es], path=in_tmp, n_train=64, n_valid=32)
    fit_quiet(learn, 1)
    learn.add_cb(recs)
    recs.before_fit(); recs.before_epoch()
    assert recs.record_epoch(es) is None
    before = es.best
    assert recs.rebase({'valid_loss': lambda k: 123.}) == [] and es.best == before


def test_find_trackers_refuses_bad_input_naming_the_parameter(in_tmp):
    with pytest.raises(TypeError, match=r'`learn` must be a fastai Learner, got str'): find_trackers('x')
    with pytest.raises(TypeError, match=r'`learn` must be a fastai Learner, got NoneType'): find_trackers(None)
    valid, other = EarlyStoppingCallback(), EarlyStoppingCallback(monitor='loss')
    learn = synth_learner(cbs=[valid, other], path=in_tmp, n_train=32, n_valid=32)
    for bad in (3, [1, 'valid_loss'], object()):
        with pytest.raises(TypeError, match=r'`monitors` must be None, a monitored name or a list of names'): find_trackers(learn, bad)
    # one name is one name: 'loss' is a substring of 'valid_loss', not the same monitor
    assert find_trackers(learn, 'valid_loss') == [valid]
    assert find_trackers(learn, ['loss']) == [other] and find_trackers(learn) == [valid, other]


def test_metric_direction_and_tracker_direction_warning(in_tmp):
    import warnings
    from fastai.metrics import mae
    from tsai_cbs.metrics import DIRMetric, shot_regions
    from tsai_cbs.trackers import metric_direction, check_tracker_directions
    def my_err(p, y): return (p - y).abs().mean()
    my_err.lower_is_better = True
    def my_score(p, y): return -(p - y).abs().mean()
    my_score.greater_is_better = True
    learn = synth_learner(path=in_tmp, n_train=64, n_valid=32)
    learn.metrics = [DIRMetric('few_mae', regions=shot_regions(learn.dls.train.dataset.tensors[1])), my_err, my_score, mae]
    assert [metric_direction(learn, n) for n in ('few_mae', 'valid_few_mae', 'my_err', 'my_score', 'mae', 'valid_loss', 'nope')] == \
           [True, True, True, False, None, None, None]
    learn.add_cbs([EarlyStoppingCallback(monitor='few_mae'), ReduceLROnPlateau(monitor='few_mae', comp=np.less),
                   EarlyStoppingCallback(monitor='my_score')])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        check_tracker_directions(learn)
        check_tracker_directions(learn)  # once per tracker class and name
    msgs = [str(x.message) for x in w if 'declares' in str(x.message)]
    assert len(msgs) == 1 and 'EarlyStoppingCallback monitors `few_mae` as higher is better' in msgs[0] and 'comp=np.less' in msgs[0], msgs
