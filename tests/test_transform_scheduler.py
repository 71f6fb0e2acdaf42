"TransformScheduler on real Learners: exact per-batch values, validation unscheduled, values restored however fit ends."
import math, warnings
import numpy as np
import pytest, torch
import matplotlib.pyplot as plt
import fastai.callback.schedule  # Learner.lr_find
from fastai.callback.core import Callback
from fastai.callback.schedule import SchedLin, SchedCos, combine_scheds
from fastai.data.core import Datasets
from fasttransform import Transform, Pipeline
from tsai_cbs.testing import synth_learner, synth_data
from tsai_cbs.transform_scheduler import TransformScheduler
from tsai_cbs.stop_after import StopAfter

class BatchSpy(Transform):
    "Records its magnitude for every input batch it transforms"
    def __init__(self, magnitude): super().__init__(); self.magnitude,self.log = magnitude,[]
    def encodes(self, x:torch.Tensor):
        if x.ndim == 3: self.log.append(self.magnitude)
        return x

class ItemSpy:
    "A plain callable item transform recording its magnitude per item"
    def __init__(self, magnitude): self.magnitude,self.log = magnitude,[]
    def __call__(self, item):
        self.log.append(self.magnitude)
        return item

class Phase(Callback):
    "Records, for each batch, whether it trained"
    def before_fit(self): self.phases = []
    def before_batch(self): self.phases.append(self.training)

def _fit(learn, *args, **kwargs):
    with learn.no_bar(), learn.no_logging(): learn.fit(*args, **kwargs)

def _expected(m0, f, gs, T): return [m0 * f(g / (T - 1)) for g in gs]

def test_values_per_batch_train_and_valid(in_tmp):
    f = SchedLin(1., 3.)
    bspy, ispy = BatchSpy(.5), ItemSpy(2)
    # both hooks go to the training AND the validation DataLoader: shared transform objects
    learn = synth_learner(after_batch=bspy, after_item=ispy, cbs=[TransformScheduler(f), Phase()])
    _fit(learn, 2)
    T = 16
    log, phases = np.array(bspy.log), learn.phase.phases
    assert phases == ([True] * 8 + [False] * 2) * 2
    np.testing.assert_allclose(log[[i for i, p in enumerate(phases) if p]], _expected(.5, f, range(T), T))
    np.testing.assert_allclose(log[[i for i, p in enumerate(phases) if not p]], [.5] * 4)
    assert log[7] == pytest.approx(.5 * f(7 / 15)) and log[-3] == pytest.approx(.5 * 3)  # the last training batch: f(1.)
    # after_item: 32 items per training batch, all with that batch's value; 64 unscheduled validation items per epoch
    ilog = np.array(ispy.log)
    train_items = np.concatenate([ilog[:256], ilog[320:576]])
    np.testing.assert_allclose(train_items, np.repeat(_expected(2, f, range(T), T), 32))
    np.testing.assert_allclose(np.concatenate([ilog[256:320], ilog[576:]]), 2)
    assert bspy.magnitude == .5 and ispy.magnitude == 2 and type(ispy.magnitude) is int
    applied = learn.transform_scheduler.applied
    assert [p for p, _ in applied] == pytest.approx([g / 15 for g in range(T)])

def test_fastai_tfmd_dls_share_transforms(in_tmp):
    "fastai TfmdDLs give the validation DataLoader the same transform objects: validation still sees the initial value"
    X, y = synth_data(96)
    dsets = Datasets(range(96), tfms=[[lambda i: X[i]], [lambda i: y[i]]], splits=[list(range(64)), list(range(64, 96))])
    spy = BatchSpy(1.)
    dls = dsets.dataloaders(bs=16, after_batch=[spy, Transform(lambda x: x)])
    assert dls.valid.after_batch.fs[0] is spy
    spy.log.clear()  # TfmdDL runs one batch when it is created
    learn = synth_learner(cbs=[TransformScheduler(SchedCos(1., 0.)), Phase()])
    learn.dls = dls
    with pytest.warns(UserWarning, match='not scheduled'): _fit(learn, 2)
    log, phases = np.array(spy.log), learn.phase.phases
    np.testing.assert_allclose(log[np.array(phases)], _expected(1., SchedCos(1., 0.), range(8), 8))
    np.testing.assert_allclose(log[~np.array(phases)], 1.)
    assert spy.magnitude == 1.

def test_fresh_schedule_each_fit_and_start_epoch(in_tmp):
    f = combine_scheds([.5, .5], [SchedLin(0., 1.), SchedCos(1., .2)])
    spy = BatchSpy(1.)
    learn = synth_learner(after_batch=spy, cbs=[TransformScheduler(f), Phase()], n_valid=0)
    _fit(learn, 2)
    _fit(learn, 1)  # second fit: 8 batches, its own schedule from f(0) to f(1)
    np.testing.assert_allclose(spy.log[-8:], _expected(1., f, range(8), 8))
    spy.log.clear()
    _fit(learn, 4, start_epoch=2)  # a resumed run continues the schedule of the 32-batch fit
    np.testing.assert_allclose(spy.log, _expected(1., f, range(16, 32), 32))
    assert spy.magnitude == 1.

class Boom(Callback):
    def __init__(self, exc, at=(1, 3)): self.exc,self.at = exc,at
    def before_batch(self):
        if self.training and (self.epoch, self.iter) == self.at: raise self.exc

@pytest.mark.parametrize('exc', [RuntimeError('boom'), KeyboardInterrupt()])
def test_restored_after_exception_mid_epoch(in_tmp, exc):
    bspy, ispy = BatchSpy(.5), ItemSpy(.25)
    learn = synth_learner(after_batch=bspy, after_item=ispy, cbs=[TransformScheduler(SchedLin(1., 4.)), Boom(exc)])
    with pytest.raises(type(exc)): _fit(learn, 3)
    assert max(bspy.log) > .5 * 1.5  # the values really were changed mid-fit
    assert bspy.magnitude == .5 and ispy.magnitude == .25
    # the Learner is usable again and starts from the initial values
    bspy.log.clear(); learn.remove_cb(Boom)
    _fit(learn, 1)
    assert bspy.log[0] == .5 and bspy.magnitude == .5

def test_restored_after_cancel(in_tmp):
    spy = BatchSpy(.5)
    learn = synth_learner(after_batch=spy, cbs=[TransformScheduler(SchedLin(1., 2.)), StopAfter(max_batches=5)])
    _fit(learn, 3)
    assert len(learn.transform_scheduler.applied) == 5 and spy.magnitude == .5

def test_skipped_transforms_warn_once(in_tmp):
    spy = BatchSpy(1.)
    other, odd = Transform(lambda x: x), BatchSpy(1.)
    odd.magnitude = 'strong'  # not a number: skipped too
    learn = synth_learner(after_batch=Pipeline([spy, other, odd]), cbs=TransformScheduler(SchedLin(1., 2.)), n_valid=0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        _fit(learn, 1); _fit(learn, 1)
    msgs = [str(o.message) for o in w if 'TransformScheduler' in str(o.message)]
    assert len(msgs) == 1 and 'Transform (after_batch)' in msgs[0] and 'BatchSpy (after_batch)' in msgs[0]
    assert spy.log[-1] == pytest.approx(2.) and odd.magnitude == 'strong'
    # another attribute
    spy2 = BatchSpy(1.); spy2.p = .2
    learn = synth_learner(after_batch=spy2, cbs=TransformScheduler(SchedLin(1., 3.), attr='p'), n_valid=0)
    ps = []
    class P(Callback):
        def before_batch(self): ps.append(spy2.p)
    learn.add_cb(P())
    _fit(learn, 1)
    np.testing.assert_allclose(ps, _expected(.2, SchedLin(1., 3.), range(8), 8))
    assert spy2.p == .2 and spy2.log == [1.] * 8

def _snapshot(learn):
    # `no_bar()` puts a new ProgressCallback back: compare the others
    return [p.detach().clone() for p in learn.model.parameters()], learn.loss_func, _cbs(learn)

def _cbs(learn): return [c for c in learn.cbs if type(c).__name__ != 'ProgressCallback']

def _untouched(learn, snap):
    "No optimizer step, nothing of the Learner changed"
    params, lf, cbs = snap
    assert all(torch.equal(a, b) for a, b in zip(params, learn.model.parameters()))
    assert learn.opt is None or not any('step' in learn.opt.state.get(p, {}) for p in learn.model.parameters())
    assert learn.loss_func is lf and _cbs(learn) == cbs

def test_nothing_to_schedule_is_an_error(in_tmp):
    "Was a warning, and a fit with nothing scheduled"
    learn = synth_learner(cbs=TransformScheduler(SchedLin(1., 2.)))
    snap = _snapshot(learn)
    with pytest.raises(ValueError, match="no `after_batch` or `after_item` transforms: nothing to schedule"): _fit(learn, 1)
    _untouched(learn, snap)

def test_misspelt_attr_is_an_error_before_anything_changes(in_tmp):
    spy = BatchSpy(.5)
    learn = synth_learner(after_batch=Pipeline([spy, Transform(lambda x: x)]), cbs=TransformScheduler(SchedLin(1., 2.), attr='magnitud'))
    snap = _snapshot(learn)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        with pytest.raises(ValueError, match=r"attr='magnitud'.*BatchSpy \(after_batch\), Transform \(after_batch\)\. Did you mean attr='magnitude'"):
            _fit(learn, 1)
    assert not [o for o in w if 'TransformScheduler' in str(o.message)]  # the error says it all
    assert spy.log == [] and spy.magnitude == .5
    _untouched(learn, snap)

def test_zero_training_batches_as_plain_fastai(in_tmp):
    "`drop_last` with fewer items than `bs`: plain fastai trains nothing (train_loss NaN) and validates; so does this"
    def run(cbs):
        spy = BatchSpy(.5)
        learn = synth_learner(after_batch=spy, n_train=8, bs=16, drop_last=True, cbs=cbs)
        assert len(learn.dls.train) == 0
        _fit(learn, 2)
        return learn, spy
    plain, pspy = run([])
    learn, spy = run([TransformScheduler(SchedLin(1., 2.))])
    np.testing.assert_equal(np.array(learn.recorder.values, dtype=float), np.array(plain.recorder.values, dtype=float))
    assert np.isnan(learn.recorder.values[0][0])
    assert spy.log == pspy.log and spy.magnitude == .5 and learn.transform_scheduler.applied == []
    assert all(torch.equal(a, b) for a, b in zip(learn.model.parameters(), plain.model.parameters()))

@pytest.mark.parametrize('f,msg', [(lambda p: float('nan'), 'schedule_func(0.0) returned nan'),
                                   (lambda p: math.inf if p >= .5 else 1., 'schedule_func(0.5) returned inf'),
                                   (lambda p: 'big', "returned 'big'"), (lambda p: None, 'returned None'),
                                   (lambda p: torch.tensor([1., 2.]), 'schedule_func')])
def test_bad_schedule_fails_before_training(in_tmp, f, msg):
    spy = BatchSpy(.5)
    learn = synth_learner(after_batch=spy, cbs=TransformScheduler(f))
    with pytest.raises(ValueError, match=msg.replace('(', r'\(').replace(')', r'\)')): _fit(learn, 1)
    assert spy.log == [] and spy.magnitude == .5

def test_bad_value_anywhere_fails_before_training(in_tmp):
    spy = BatchSpy(.5)
    learn = synth_learner(after_batch=spy, cbs=TransformScheduler(lambda p: math.nan if .3 < p < .4 else 1 + p), n_valid=0)
    # not caught by the probe at 0, .25, .5, .75, 1; batch 5 of 16 (pct 1/3) would get NaN: refused before the first batch
    with pytest.raises(ValueError, match=r'schedule_func\(0.333'): _fit(learn, 2)
    assert spy.log == [] and spy.magnitude == .5
    # only the values a resumed fit uses are checked: batches 8-15 of 16 are all fine
    _fit(learn, 2, start_epoch=1)
    np.testing.assert_allclose(spy.log, [.5 * (1 + g / 15) for g in range(8, 16)])

def test_tensor_and_numpy_schedules(in_tmp):
    spy = BatchSpy(1.)
    learn = synth_learner(after_batch=spy, cbs=TransformScheduler(lambda p: torch.tensor(1 + p)), n_valid=0)
    _fit(learn, 1)
    np.testing.assert_allclose(spy.log, [1 + g / 7 for g in range(8)], rtol=1e-6)
    assert all(type(v) is float for v in spy.log)

def test_lr_find_and_get_preds_untouched(in_tmp):
    spy = BatchSpy(.5)
    learn = synth_learner(after_batch=spy, cbs=TransformScheduler(SchedLin(2., 3.)))
    with learn.no_bar(): learn.lr_find(num_it=10, show_plot=False)
    learn.get_preds(); learn.validate()
    assert set(spy.log) == {.5} and spy.magnitude == .5

def test_show_plot(in_tmp):
    spy = BatchSpy(1.)
    n0 = len(plt.get_fignums())
    learn = synth_learner(after_batch=spy, cbs=TransformScheduler(SchedCos(1., 0.), show_plot=True))
    for _ in range(3): _fit(learn, 2)
    assert len(plt.get_fignums()) == n0
    fig = learn.transform_scheduler.plot_schedule()
    y = fig.axes[0].lines[0].get_ydata()
    np.testing.assert_allclose(y, _expected(1., SchedCos(1., 0.), range(16), 16))
    plt.close(fig)

def test_bad_arguments():
    for kw, name, err in [(dict(schedule_func=.5), 'schedule_func', TypeError), (dict(schedule_func=abs, show_plot='no'), 'show_plot', TypeError),
                          (dict(schedule_func=abs, attr=3), 'attr', TypeError), (dict(schedule_func=abs, attr='a b'), 'attr', ValueError)]:
        with pytest.raises(err, match=name): TransformScheduler(**kw)

def test_item_tfms_in_workers_warn(in_tmp):
    learn = synth_learner(after_item=ItemSpy(1.), cbs=TransformScheduler(SchedLin(1., 2.)), n_train=64, n_valid=32, num_workers=1)
    with pytest.warns(UserWarning, match='worker processes'): _fit(learn, 1)
    learn = synth_learner(after_item=ItemSpy(1.), cbs=TransformScheduler(SchedLin(1., 2.), item_tfms=False), n_train=64, n_valid=32)
    with pytest.raises(ValueError, match='nothing to schedule'): _fit(learn, 1)

def test_no_worker_warning_without_workers(in_tmp):
    "fastai's `DataLoader.num_workers` is always 1; the worker processes are counted by its `fake_l`"
    learn = synth_learner(after_item=ItemSpy(1.), cbs=TransformScheduler(SchedLin(1., 2.)), n_train=64, n_valid=32, num_workers=0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        _fit(learn, 1)
    assert not [o for o in w if 'TransformScheduler' in str(o.message)]

def test_show_plot_in_scripts_writes_the_applied_schedule(in_tmp, capsys, monkeypatch):
    import tsai_cbs.transform_scheduler as ts_mod
    drawn, show = [], ts_mod.show_figure
    def spy_show(fig, live=None, path=None):
        drawn.append((fig.axes[0].lines[0].get_ydata().copy(), live, path))
        return show(fig, live=live, path=path)
    monkeypatch.setattr(ts_mod, 'show_figure', spy_show)
    n0 = len(plt.get_fignums())
    f = SchedCos(1., .2)
    learn = synth_learner(after_batch=BatchSpy(1.), cbs=[TransformScheduler(f, show_plot=True), StopAfter(max_batches=11)], path=in_tmp/'run')
    img = in_tmp/'run'/'transform_schedule.png'
    _fit(learn, 2)  # stopped after 11 of 16 batches: the plot shows the 11 values applied
    assert img.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    np.testing.assert_allclose(drawn[-1][0], _expected(1., f, range(11), 16))
    assert drawn[-1][1:] == (False, img)
    first = img.read_bytes()
    _fit(learn, 3)  # rewritten with the new fit's schedule
    np.testing.assert_allclose(drawn[-1][0], _expected(1., f, range(11), 24))
    assert img.read_bytes() != first
    out = capsys.readouterr().out
    assert out.count('TransformScheduler:') == 1 and str(img) in out  # said once
    assert len(plt.get_fignums()) == n0
    # a custom name (relative to learn.path) and an absolute one
    learn = synth_learner(after_batch=BatchSpy(1.), cbs=TransformScheduler(f, show_plot=True, fname='p/s.png'), path=in_tmp/'run2', n_valid=0)
    _fit(learn, 1)
    assert (in_tmp/'run2'/'p'/'s.png').exists()
    learn = synth_learner(after_batch=BatchSpy(1.), cbs=TransformScheduler(f, show_plot=True, fname=in_tmp/'abs.png'), n_valid=0)
    _fit(learn, 1)
    assert (in_tmp/'abs.png').exists() and not (in_tmp/'transform_schedule.png').exists()
    # show_plot=False draws nothing
    learn = synth_learner(after_batch=BatchSpy(1.), cbs=TransformScheduler(f), path=in_tmp/'run3', n_valid=0)
    _fit(learn, 1)
    assert not (in_tmp/'run3').exists()

def test_show_plot_in_notebook_displays(in_tmp, monkeypatch):
    import IPython.display
    import tsai_cbs.transform_scheduler as ts_mod
    shown = []
    monkeypatch.setattr(IPython.display, 'display', lambda fig: shown.append(fig.axes[0].lines[0].get_ydata().copy()))
    monkeypatch.setattr(ts_mod, 'live_display', lambda: True)
    f = SchedLin(2., 1.)
    learn = synth_learner(after_batch=BatchSpy(1.), cbs=TransformScheduler(f, show_plot=True), n_valid=0)
    _fit(learn, 1)
    assert len(shown) == 1 and not list(in_tmp.iterdir())  # inline only: no file
    np.testing.assert_allclose(shown[0], _expected(1., f, range(8), 8))
    learn = synth_learner(after_batch=BatchSpy(1.), cbs=TransformScheduler(f, show_plot=True, fname='also.png'), n_valid=0)
    _fit(learn, 1)
    assert len(shown) == 2 and (in_tmp/'also.png').exists()

def test_bad_fname():
    for fname, err in [(3, TypeError), ('', ValueError), (' ', ValueError)]:
        with pytest.raises(err, match='fname'): TransformScheduler(SchedLin(1., 2.), show_plot=True, fname=fname)
