"Tests of `tsai_cbs.adaptive_loss`: BPReveal's λ rule against an independent re-implementation on real runs, re-basing of real trackers, degenerate losses, errors, several fits and resumes, the bundle, the plot."
import math, warnings
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from fastai.callback.core import Callback
import fastai.callback.schedule  # Learner.lr_find
from fastai.callback.tracker import EarlyStoppingCallback, ReduceLROnPlateau, SaveModelCallback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.optimizer import Adam
from fastai.torch_core import set_seed

from tsai_cbs.adaptive_loss import AdaptiveCountsWeight, adaptive_callbacks, adaptive_lambda
from tsai_cbs.epoch_log import EpochLog
from tsai_cbs.multi_loss import MultiLoss, profile_nll, counts_mse


class ProfileCounts(nn.Module):
    def __init__(self, c=3, hidden=8, heads=1):
        super().__init__()
        self.heads = heads
        self.body = nn.Sequential(nn.Conv1d(c, hidden, 5, padding=2), nn.ReLU())
        self.prof, self.cnt = nn.Conv1d(hidden, heads, 1), nn.Linear(hidden, heads)
    def forward(self, x):
        h = self.body(x)
        p, c = self.prof(h), self.cnt(h.mean(-1))
        outs = [(p[:, i], c[:, i]) for i in range(self.heads)]
        return outs[0] if self.heads == 1 else tuple(outs)


def learner(cbs, heads=1, terms=None, seed=0, n=128, n_valid=32, path='.', lr=1e-2):
    set_seed(seed)
    X = torch.randn(n + n_valid, 3, 32)
    Ys = [torch.poisson(torch.exp(X[:, i] + 1)) for i in range(heads)]
    def ds(s):
        d = TensorDataset(X[s], *[y[s] for y in Ys]); d.n_inp = 1
        return d
    dls = DataLoaders(DataLoader(ds(slice(0, n)), bs=32, shuffle=True), DataLoader(ds(slice(n, None)), bs=32))
    names = ['seq', 'chip'][:heads]
    terms = terms or {h: {'profile': profile_nll, 'counts': counts_mse} for h in names}
    return Learner(dls, ProfileCounts(heads=heads), loss_func=MultiLoss(terms), opt_func=Adam, lr=lr, cbs=cbs, path=path)


def fit(learn, *a, quiet=False, **k):
    "Fit without bar and table; `quiet`: also without the clamp warnings a far-off initial λ gives"
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        if quiet: warnings.simplefilter('ignore')
        learn.fit(*a, **k)


def rows(learn):
    names = learn.recorder.metric_names[1:-1]
    return [dict(zip(names, v)) for v in learn.recorder.values]


def bpreveal_next(lam0, p, c, t, a, epoch):
    "BPReveal's on_epoch_end for one head, written out independently (c: raw counts loss, p: profile loss)"
    target_lam = t * p / (c * (1 - t))
    lam = target_lam if epoch <= 1 else lam0 * (1 - a) + target_lam * a
    thr = 2 if epoch > 1 else 10
    if max(lam, lam0) / min(lam, lam0) > thr: lam = lam0 * thr if lam > lam0 else lam0 / thr
    return lam


@pytest.mark.parametrize('init,aggr', [(0.01, 0.5), (50., 0.3), (None, 1.0)])
def test_rule_against_reference(in_tmp, init, aggr):
    "Every λ in the Recorder follows BPReveal's rule from the previous epoch's recorded losses (valid at epoch 0, train later), with clamps"
    acw = AdaptiveCountsWeight({'seq': 0.3}, aggression=aggr, init=init)
    learn = learner(acw)
    fit(learn, 6, quiet=True)
    rs = rows(learn)
    lam = [r['lambda_seq'] for r in rs]
    assert lam[0] == pytest.approx(1. if init is None else init)
    for e in range(5):
        s = 'valid' if e == 0 else 'train'
        p, c = rs[e][f'{s}_seq_profile_wloss'], rs[e][f'{s}_seq_counts_loss']
        assert lam[e + 1] == pytest.approx(bpreveal_next(lam[e], p, c, 0.3, aggr, e), rel=1e-6)
    final = bpreveal_next(lam[5], rs[5]['train_seq_profile_wloss'], rs[5]['train_seq_counts_loss'], 0.3, aggr, 5)
    assert learn.loss_func.weight('seq', 'counts') == pytest.approx(final, rel=1e-6)  # the last update is applied at the end
    df = acw.history_df()
    assert list(df['split']) == ['valid'] + ['train'] * 5 and list(df['epoch']) == list(range(6))
    if init == 0.01: assert df['clamp_seq'][0] == 10  # a far-off start is clamped to x10


def test_counts_fraction_approaches_target(in_tmp):
    acw = AdaptiveCountsWeight({'seq': 0.25}, aggression=0.5, init=0.05)
    learn = learner(acw)
    fit(learn, 8, quiet=True)
    frac = acw.history_df()['frac_seq']
    assert abs(frac.iloc[-1] - 0.25) < 0.03 and abs(frac.iloc[0] - 0.25) > 0.15


def test_rebase_real_trackers(in_tmp):
    "After every λ change, each total-loss tracker's best is its record epoch's loss under the new λ"
    acw = AdaptiveCountsWeight({'seq': 0.4}, aggression=1.0, init=0.02)
    es, lrp, sm = EarlyStoppingCallback(patience=100), ReduceLROnPlateau(patience=100), SaveModelCallback(fname='m')
    es_tr = EarlyStoppingCallback(monitor='train_loss', patience=100)
    other = EarlyStoppingCallback(monitor='valid_seq_profile_loss', patience=100)
    learn = learner([acw, es, lrp, sm, es_tr, other], path=in_tmp)
    fit(learn, 5, quiet=True)
    rs = rows(learn)
    lam_next = [r for r in acw.history_df()['next_lambda_seq']]
    for mon, tr in (('valid', es), ('train', es_tr)):
        best, rec = math.inf, None  # a tracker simulated by hand, re-based after each epoch
        for e, r in enumerate(rs):
            if r[f'{mon}_loss'] < best: best, rec = r[f'{mon}_loss'], e
            best = rs[rec][f'{mon}_seq_profile_wloss'] + lam_next[e] * rs[rec][f'{mon}_seq_counts_loss']
        assert tr.best == pytest.approx(best, rel=1e-6)
        assert acw.records.record_epoch(tr) == (0, rec)
    assert lrp.best == pytest.approx(es.best) and sm.best == pytest.approx(es.best)
    assert other.best == pytest.approx(min(r['valid_seq_profile_loss'] for r in rs))  # not a total loss: untouched
    assert {type(t).__name__ for t, _, _ in acw.rebased} == {'EarlyStoppingCallback', 'ReduceLROnPlateau', 'SaveModelCallback'}


def test_rebase_save_model(in_tmp):
    save_model = pytest.importorskip('tsai_cbs.save_model')
    acw, sm = AdaptiveCountsWeight({'seq': 0.4}, aggression=1.0, init=0.02), save_model.SaveModel(fname='m')
    learn = learner([acw, sm], path=in_tmp)
    fit(learn, 4, quiet=True)
    rs, lam = rows(learn), learn.loss_func.weight('seq', 'counts')
    rec = sm.best_epoch
    assert acw.records.record_epoch(sm) == (0, rec)
    assert sm.best == pytest.approx(rs[rec]['valid_seq_profile_wloss'] + lam * rs[rec]['valid_seq_counts_loss'], rel=1e-6)


class Poison(Callback):
    "Makes the counts term return `value` during training in epoch `epoch`"
    order = 0
    def __init__(self, state, epoch): self.state, self.ep = state, epoch
    def before_train(self): self.state['on'] = self.epoch == self.ep
    def before_validate(self): self.state['on'] = False


@pytest.mark.parametrize('value', [0., float('nan'), float('inf')])
def test_degenerate_losses_keep_lambda(in_tmp, value):
    state = {'on': False}
    def counts(p, y): return counts_mse(p, y) * 0 + value if state['on'] else counts_mse(p, y)
    acw = AdaptiveCountsWeight({'seq': 0.3}, init=2.)
    learn = learner([acw, Poison(state, 2)], terms={'seq': {'profile': profile_nll, 'counts': counts}}, lr=0 if value != 0 else 1e-2)
    with pytest.warns(UserWarning, match='keeping λ'):
        fit(learn, 3)
    df = acw.history_df()
    assert df['next_lambda_seq'][2] == df['lambda_seq'][2]
    assert all(math.isfinite(v) and v > 0 for v in df['next_lambda_seq'])


@pytest.mark.parametrize('kw,match', [
    (dict(targets={'seq': 0.}), 'counts_loss_frac_target'), (dict(targets={'seq': 1.}), 'counts_loss_frac_target'),
    (dict(targets={'seq': float('nan')}), 'counts_loss_frac_target'), (dict(targets={'seq': '0.2'}), 'counts_loss_frac_target'),
    (dict(targets={}), 'targets'), (dict(targets={'seq': .2}, aggression=-0.1), 'aggression'),
    (dict(targets={'seq': .2}, aggression=1.01), 'aggression'), (dict(targets={'seq': .2}, init='bpnet'), 'init'),
    (dict(targets={'seq': .2}, init=0.), 'init'), (dict(targets={'seq': .2}, init={'x': 1.}), "head 'x'"),
    (dict(targets={'seq': .2}, n_batches=0), 'n_batches')])
def test_init_errors(kw, match):
    with pytest.raises((ValueError, TypeError), match=match): AdaptiveCountsWeight(**kw)


@pytest.mark.parametrize('kw,terms,match', [
    (dict(targets={'chip': .2}), None, "head 'chip'"),
    (dict(targets={'seq': .2}, term='count'), None, "no term 'count'"),
    (dict(targets={'seq': .2}), {'seq': {'counts': counts_mse}}, 'only the counts term')])
def test_fit_errors_before_training(in_tmp, kw, terms, match):
    learn = learner(AdaptiveCountsWeight(**kw), terms=terms)
    w0 = [p.detach().clone() for p in learn.model.parameters()]
    lw0 = learn.loss_func.weights
    with pytest.raises(ValueError, match=match): fit(learn, 1)
    assert all(torch.equal(a, b) for a, b in zip(w0, learn.model.parameters())) and learn.loss_func.weights == lw0


def test_several_fits_and_resume(in_tmp):
    acw = AdaptiveCountsWeight({'seq': 0.3}, aggression=0.3, init=1.)
    learn = learner(acw)
    fit(learn, 2, quiet=True)
    lam_after = learn.loss_func.weight('seq', 'counts')
    fit(learn, 2, quiet=True)
    fit(learn, 5, start_epoch=3, quiet=True)
    df = acw.history_df()
    assert list(zip(df['fit'], df['epoch'])) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 3), (2, 4)]
    assert list(df['step']) == [0, 1, 2, 3, 4, 5] and list(df['split']) == ['valid'] + ['train'] * 5
    assert df['lambda_seq'][2] == lam_after  # the second fit continues from the λ reached, not from `init`
    rs = rows(learn)  # the resumed fit: damped rule (step >= 2) from the recorded losses
    lam = df['lambda_seq'][4]
    assert df['next_lambda_seq'][4] == pytest.approx(bpreveal_next(lam, rs[-2]['train_seq_profile_wloss'], rs[-2]['train_seq_counts_loss'], 0.3, 0.3, 4))
    assert sorted(acw.history) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 3), (2, 4)]


def test_estimate_and_two_heads(in_tmp):
    acw = AdaptiveCountsWeight({'seq': 0.2, 'chip': 0.5}, n_batches=1)
    learn = learner(acw, heads=2)
    est = None
    class Peek(Callback):
        order = 56
        def before_fit(self): nonlocal est; est = learn.loss_func.weights
    learn.add_cb(Peek())
    # the estimate, by hand: the untrained model's losses on the first validation batch
    x, y1, y2 = learn.dls.valid.one_batch()
    learn.model.eval()
    with torch.no_grad(): (ps, pc) = learn.model(x)
    learn.model.train()
    fit(learn, 2)
    for h, t, p, y in (('seq', 0.2, ps, y1), ('chip', 0.5, pc, y2)):
        exp = t * profile_nll(p, y).item() / (counts_mse(p, y).item() * (1 - t))
        assert est[h]['counts'] == pytest.approx(exp, rel=1e-5)
    names = learn.recorder.metric_names
    assert names[-3:] == ['lambda_seq', 'lambda_chip', 'time']
    df = acw.history_df()
    assert df['lambda_seq'][0] == pytest.approx(est['seq']['counts']) and df['lambda_chip'][0] == pytest.approx(est['chip']['counts'])


def test_lr_find_and_validate_leave_lambda(in_tmp):
    acw = AdaptiveCountsWeight({'seq': 0.3}, init=3.)
    learn = learner(acw)
    with learn.no_bar(), learn.no_logging(): learn.lr_find(num_it=5, show_plot=False)
    assert acw.lambda_history == [] and learn.loss_func.weight('seq', 'counts') == 1.  # not even initialised
    fit(learn, 1)
    lam = learn.loss_func.weight('seq', 'counts')
    learn.validate()
    assert learn.loss_func.weight('seq', 'counts') == lam and len(acw.lambda_history) == 1


def test_bundle(in_tmp, capsys):
    cbs = adaptive_callbacks({'seq': 0.3}, early_stop=2, plateau=1, output_prefix='bp')
    assert [type(c).__name__ for c in sorted(cbs, key=lambda c: c.order)] == \
        ['AdaptiveCountsWeight', 'SaveModel', 'ReduceLROnPlateau', 'EarlyStoppingCallback', 'EpochLog']
    es = cbs[3]
    assert (es.patience, cbs[2].patience, cbs[2].factor, cbs[1].fname) == (2, 1, 2., 'bp')
    learn = learner(cbs, path=in_tmp)
    with learn.no_bar(): learn.fit(3)  # logging on: EpochLog writes only then
    assert (in_tmp/'models'/'bp.pth').exists()
    err = capsys.readouterr().err.splitlines()
    lines = [l for l in err if l.startswith('epoch ')]
    assert len(lines) == len(learn.recorder.values) and 'lambda_seq' in lines[0]
    fa = adaptive_callbacks({'seq': 0.3}, checkpoint='fastai', log_to=False)
    assert [type(c).__name__ for c in fa] == ['AdaptiveCountsWeight', 'SaveModelCallback', 'ReduceLROnPlateau', 'EarlyStoppingCallback']
    for kw, m in [(dict(early_stop=0), 'early_stop'), (dict(plateau=1.5), 'plateau'), (dict(lr_factor=1), 'lr_factor'),
                  (dict(checkpoint='keras'), 'checkpoint'), (dict(output_prefix=3), 'output_prefix'),
                  (dict(output_prefix=' '), 'output_prefix'), (dict(output_prefix='', checkpoint='fastai'), 'output_prefix')]:
        with pytest.raises((ValueError, TypeError), match=m): adaptive_callbacks({'seq': 0.3}, **kw)


def test_plot(in_tmp):
    acw = AdaptiveCountsWeight({'seq': 0.3, 'chip': 0.6}, init=1.)
    learn = learner(acw, heads=2)
    fit(learn, 3, quiet=True)
    axs = acw.plot()
    assert len(axs[0].lines) == 2 and len(axs[1].lines) == 4  # λ per head; fraction + target line per head
    np.testing.assert_allclose(axs[0].lines[1].get_ydata(), acw.history_df()['lambda_chip'])
    axs[0].figure.savefig(in_tmp/'lam.png')
    assert (in_tmp/'lam.png').stat().st_size > 0


class Interrupt(Callback):
    "Raises `exc` in the second training batch of epoch `at`"
    order = 0
    def __init__(self, at, exc): self.at, self.exc = at, exc
    def after_batch(self):
        if self.training and self.epoch == self.at and self.iter == 1: raise self.exc


@pytest.mark.parametrize('exc', [KeyboardInterrupt, RuntimeError])
def test_interrupted_fit_then_refit(in_tmp, exc):
    acw, es = AdaptiveCountsWeight({'seq': 0.3}, init=1.), EarlyStoppingCallback(patience=100)
    stop = Interrupt(1, exc('stop'))
    learn = learner([acw, es, stop], path=in_tmp)
    with pytest.raises(exc): fit(learn, 3, quiet=True)
    h = acw.history_df()
    assert len(h) == 1 and learn.loss_func.weight('seq', 'counts') == h['next_lambda_seq'][0]  # applied before epoch 1
    assert acw._pending is None and not acw._in_fit and learn.loss_func.last is None
    learn.remove_cb(stop)
    fit(learn, 2, quiet=True)
    assert sorted(acw.history) == [(0, 0), (1, 0), (1, 1)] and list(acw.history_df()['step']) == [0, 1, 2]
    rec = acw.records.record_epoch(es)
    assert rec[0] == 1 and es.best == pytest.approx(acw.loss_at(rec, 'valid'), rel=1e-9)


def test_zero_lambda_error_before_training(in_tmp):
    "A starting λ of 0 cannot be adapted (the rule only scales λ): a clear error before training, not a crash after the first epoch"
    with pytest.raises(ValueError, match='lam0'): adaptive_lambda(0., 1., 1., 0.3, 0.3, 0)
    acw = AdaptiveCountsWeight({'seq': 0.3}, init=None)
    learn = learner(acw)
    learn.loss_func.set_weight('seq', 'counts', 0.)
    w0 = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match="counts weight λ of head 'seq'"): fit(learn, 2)
    assert all(torch.equal(a, b) for a, b in zip(w0, learn.model.parameters())) and acw.lambda_history == []
    assert learn.loss_func.weight('seq', 'counts') == 0.
    # `init` for one head only: the other keeps its weight, which must then be positive too
    acw = AdaptiveCountsWeight({'seq': 0.3, 'chip': 0.3}, init={'seq': 2.})
    learn = learner(acw, heads=2)
    learn.loss_func.set_weight('chip', 'counts', 0.)
    with pytest.raises(ValueError, match="head 'chip'"): fit(learn, 1)
    assert learn.loss_func.weights['seq']['counts'] == 1. and acw.lambda_history == []
    # set to 0 between two fits
    acw = AdaptiveCountsWeight({'seq': 0.3}, init=1.)
    learn = learner(acw)
    fit(learn, 1, quiet=True)
    learn.loss_func.set_weight('seq', 'counts', 0.)
    with pytest.raises(ValueError, match="counts weight λ of head 'seq'"): fit(learn, 1)
    assert len(acw.lambda_history) == 1


@pytest.mark.parametrize('kw,match', [(dict(t=1.), '`t`'), (dict(t=0.), '`t`'), (dict(aggression=1.5), 'aggression'), (dict(lam0=float('nan')), 'lam0')])
def test_adaptive_lambda_errors(kw, match):
    args = dict(lam0=1., p=1., c=1., t=0.3, aggression=0.3, epoch=2) | kw
    with pytest.raises(ValueError, match=match): adaptive_lambda(**args)
