"BatchSubsampler: tsai's semantics, reproducible draws, validation untouched, multi-input, and each kept row keeps its own weight with the per-sample loss weights in any callback order."
import math, sys
from pathlib import Path
import pytest, torch
import numpy as np
from torch import nn
from torch.utils.data import TensorDataset
from fastai.callback.core import Callback, CancelFitException
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import MSELossFlat
from fastai.optimizer import Adam
from fastai.torch_core import set_seed
from tsai_cbs.testing import synth_data, synth_learner, SynthModel
from tsai_cbs.lds import prepare_LDS_weights
from tsai_cbs.loss_weights import WeightedPerSampleLoss, LDSWeightedLoss
from tsai_cbs.batch_subsampler import BatchSubsampler
sys.path.insert(0, str(Path(__file__).parent))
from test_loss_weights import GradProbe, KINDS, _train_view, _learner, N_TR, BS

class Record(Callback):
    "Keep what the model receives (training and validation)"
    order = 90
    def before_fit(self): self.tr, self.va = [], []
    def after_pred(self):
        if not self.training: assert getattr(self.learn, 'kept_rows', None) is None  # no rows of the last training batch linger
        (self.tr if self.training else self.va).append((tuple(t.clone() for t in self.xb), tuple(t.clone() for t in self.yb)))

# -- composition with the per-sample weights ----------------------------------------------------------------------------

@pytest.mark.parametrize('weighting', ['instance', 'lds'])
@pytest.mark.parametrize('swap', [False, True])
@pytest.mark.parametrize('kind,kw', [('tensor', dict(shuffle=True)), ('datasets', dict(shuffle=True, num_workers=2))])
def test_kept_rows_carry_their_own_weight(weighting, swap, kind, kw):
    X, y = synth_data(N_TR + 32, 'regression', seed=1)
    Xtr, ytr = _train_view(kind, X, y)
    if weighting == 'instance':
        w = torch.rand(N_TR + 32, generator=torch.Generator().manual_seed(2)) + .1
        wtr = _train_view(kind, w, w)[0]
        wcb, w_items = WeightedPerSampleLoss(w), (wtr.double() / wtr.double().mean()).float()
    else:
        wcb, w_items = LDSWeightedLoss(ytr, n_bins=12), prepare_LDS_weights(ytr, n_bins=12, show_plot=False)
    sub = BatchSubsampler(sample_pct=(.5, 1.), step_pct=.5, seed=7)
    # any callback order: the list order, and the `order` attributes swapped
    if swap: sub.order, wcb.order = wcb.order + 1, wcb.order
    cbs = [sub, wcb] if swap else [wcb, sub]
    probe = GradProbe(MSELossFlat(), Xtr, ytr, w_items, by='y')  # rows identified by their target (the steps were resampled)
    learn = _learner(KINDS[kind](X, y, **kw), cbs=cbs + [probe])
    with learn.no_bar(), learn.no_logging(): learn.fit(2)
    assert probe.n_checked == 2 * N_TR // BS
    sizes = [len(i) for i in probe.batch_ids]
    assert min(sizes) >= 8 and max(sizes) <= 16 and len(set(sizes)) > 1  # a new fraction per batch
    assert any(len(set(i.tolist())) < len(i) for i in probe.batch_ids)  # drawn with replacement: repeated rows, each weighted
    assert not hasattr(learn, 'kept_rows')

def test_duplicated_rows_full_batch_weights():
    "sample_pct=1: as many rows as the batch, with repeats; the parameter gradient equals the weighted plain gradient"
    X, y = synth_data(N_TR + 32, 'regression', seed=1)
    sub = torch.zeros(N_TR); sub[::3] = 1
    probe = GradProbe(MSELossFlat(), X[:N_TR], y[:N_TR], sub / sub.mean(), by='y', subset_check=True)
    learn = _learner(KINDS['tensor'](X, y, shuffle=True), cbs=[WeightedPerSampleLoss(sub), BatchSubsampler(sample_pct=1., seed=0), probe])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert probe.n_checked == N_TR // BS and all(len(i) == BS for i in probe.batch_ids)
    assert sum(len(set(i.tolist())) < BS for i in probe.batch_ids) == N_TR // BS

# -- semantics -------------------------------------------------------------------------------------------------------

def _step_data(n=64, S=20):
    "Inputs and sequence targets whose values are their step index: what a batch holds tells which steps were drawn"
    X = torch.arange(S).float().expand(n, 3, S).clone() + torch.arange(n).view(n, 1, 1) * 1000
    y = torch.arange(S).float().expand(n, S).clone() + torch.arange(n).view(n, 1) * 1000
    return X, y

@pytest.mark.parametrize('same_seq_len,pct', [(True, .3), (True, .34), (True, .12), (True, 1.), (False, .3), (False, (.2, .6))])
def test_steps(same_seq_len, pct):
    S = 20
    X, y = _step_data(S=S)
    dls = DataLoaders(DataLoader(TensorDataset(X, y), bs=16, shuffle=True), DataLoader(TensorDataset(X, y), bs=16))
    learn = Learner(dls, SynthModel('sequence'), loss_func=MSELossFlat(), opt_func=Adam,
                    cbs=[BatchSubsampler(step_pct=pct, same_seq_len=same_seq_len, update_y=True, seed=3), rec := Record()])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    lens = set()
    for (xb,), (yb,) in rec.tr:
        steps = xb[0, 0] % 1000
        assert (xb % 1000 == steps).all() and (yb % 1000 == steps).all()  # same steps for every sample, channel and the target
        assert (xb[:, 0, 0] // 1000 == yb[:, 0] // 1000).all()  # rows unchanged
        assert (steps[1:] >= steps[:-1]).all()  # sorted
        k = len(steps.unique())
        lens.add(len(steps))
        if same_seq_len:
            assert len(steps) == S
            if not isinstance(pct, tuple): assert k <= round(S * pct)
        else: assert len(steps) <= round(S * (pct[1] if isinstance(pct, tuple) else pct))
    if same_seq_len: assert lens == {S}
    elif isinstance(pct, tuple): assert len(lens) > 1 and min(lens) >= round(S * .2)
    else: assert lens == {round(S * pct)}
    for (xb,), (yb,) in rec.va: assert xb.shape == (16, 3, S) and (xb[:, 0] % 1000 == torch.arange(S)).all()

def test_tiling_counts():
    "k drawn steps tiled to S: each drawn step is repeated ceil(S/k) times (the last ones possibly fewer)"
    S = 20
    X, y = _step_data(n=16, S=S)
    learn = synth_learner('regression', n_train=32, n_valid=32)
    cb = BatchSubsampler(step_pct=.25, seed=5); cb.learn = learn; cb.before_fit()
    for _ in range(20):
        learn.training, learn.xb, learn.yb = True, (X,), (y[:, 0],)
        cb.before_batch()
        steps = learn.xb[0][0, 0]
        assert len(steps) == S and (learn.yb[0] == y[:, 0]).all()
        # 5 draws (with replacement) tiled 4 times: every value appears a multiple of 4 times
        _, counts = steps.unique(return_counts=True)
        assert (counts % 4 == 0).all() and counts.sum() == S
    cb.keeper.restore()
    assert not hasattr(learn, 'kept_rows')

def test_validation_untouched_and_reproducible():
    runs = []
    for seed, global_seed in ((11, 0), (11, 1), (None, 5), (None, 5), (None, 6)):
        learn = synth_learner('regression', n_train=64, n_valid=32, cbs=[BatchSubsampler(sample_pct=.5, step_pct=(.5, 1.), seed=seed), rec := Record()])
        set_seed(global_seed)  # after building the Learner (which seeds its data and model): only the draws depend on it
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
        runs.append(rec)
        for (xb,), (yb,) in rec.va: assert xb.shape == (32, 3, 64) and yb.shape == (32,)
        assert all(xb.shape == (16, 3, 64) for (xb,), _ in rec.tr)
    same = lambda a, b: all(torch.equal(p[0][0], q[0][0]) for p, q in zip(a.tr, b.tr))
    assert same(runs[0], runs[1])  # a fixed seed fixes the draws, whatever the global RNG
    assert same(runs[2], runs[3])  # seed=None: fastai's set_seed makes runs reproducible
    assert not same(runs[3], runs[4]) and not same(runs[0], runs[2])

class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__(); self.seq, self.static = SynthModel('regression'), nn.Linear(2, 1)
    def forward(self, x, s): return self.seq(x) + self.static(s)[:, 0]

def test_multi_input():
    X, y = synth_data(64, 'regression', seed=0)
    s = torch.stack([torch.arange(64).float(), torch.ones(64)], 1)  # a static input holding the item's index
    ds = TensorDataset(X, s, y)
    dls = DataLoaders(DataLoader(ds, bs=16, shuffle=True), DataLoader(ds, bs=16))
    learn = Learner(dls, TwoInputs(), loss_func=MSELossFlat(), opt_func=Adam,
                    cbs=[BatchSubsampler(sample_pct=.75, step_pct=.5, seed=0), rec := Record()])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    for (xb, sb), (yb,) in rec.tr:
        ids = sb[:, 0].long()
        assert xb.shape == (12, 3, 64) and sb.shape == (12, 2) and (sb[:, 1] == 1).all()
        assert torch.equal(yb, y[ids])  # every input and the target got the same rows
        assert not torch.equal(xb, X[ids])  # steps resampled in the sequence input only
        assert all(set(xb[r, 0].tolist()) <= set(X[i, 0].tolist()) for r, i in enumerate(ids))

# -- errors, repr, restoration ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kw,err,match', [
    (dict(sample_pct=0.), ValueError, 'sample_pct'), (dict(sample_pct=1.01), ValueError, 'sample_pct'),
    (dict(step_pct=-.5), ValueError, 'step_pct'), (dict(sample_pct=(.9, .1)), ValueError, 'min <= max'),
    (dict(step_pct=(0., .5)), ValueError, 'step_pct'), (dict(sample_pct=(.1, .2, .3)), ValueError, 'pair'),
    (dict(sample_pct='half'), TypeError, 'sample_pct'), (dict(same_seq_len=1), TypeError, 'same_seq_len'),
    (dict(update_y=True), ValueError, 'needs `step_pct`'), (dict(sample_pct=.5, seed=-1), ValueError, 'seed'),
    (dict(sample_pct=.5, seed=1.5), TypeError, 'seed'),
])
def test_bad_arguments(kw, err, match):
    with pytest.raises(err, match=match): BatchSubsampler(**kw)

@pytest.mark.parametrize('pct', [torch.tensor(.5), np.float32(.5), [.5, .5], (torch.tensor(.5), np.float64(.5))])
def test_fraction_types(pct):
    "Fractions the checks accept (numpy and 0-d tensor numbers, a list range) are used as Python floats"
    cb = BatchSubsampler(sample_pct=pct, seed=0)
    assert cb.sample_pct in (.5, (.5, .5)) and all(type(p) is float for p in (cb.sample_pct if isinstance(cb.sample_pct, tuple) else (cb.sample_pct,)))
    learn = synth_learner('regression', n_train=64, n_valid=32, cbs=[cb, rec := Record()])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert len(rec.tr) == 2 and all(xb.shape == (16, 3, 64) for (xb,), _ in rec.tr)  # half of each batch of 32

def test_bad_shapes_fail_before_training():
    X2, y = torch.randn(64, 5), torch.randn(64)
    dls = DataLoaders(DataLoader(TensorDataset(X2, y), bs=16), DataLoader(TensorDataset(X2, y), bs=16))
    learn = Learner(dls, nn.Sequential(nn.Linear(5, 1), nn.Flatten(0)), loss_func=MSELossFlat(), cbs=BatchSubsampler(step_pct=.5))
    with pytest.raises(ValueError, match='`step_pct` needs inputs with a step dimension'): learn.fit(1)
    learn = synth_learner('regression', n_train=64, n_valid=32, cbs=BatchSubsampler(step_pct=.5, update_y=True))
    init = [p.clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match='`update_y` needs sequence targets'): learn.fit(1)
    assert all(torch.equal(a, b) for a, b in zip(init, learn.model.parameters()))  # no step was taken
    assert not hasattr(learn, 'kept_rows')

@pytest.mark.parametrize('exc', [RuntimeError('boom'), KeyboardInterrupt(), CancelFitException()])
def test_kept_rows_removed_however_fit_ends(exc):
    from test_loss_weights import Failing
    X, y = synth_data(N_TR + 32, 'regression', seed=1)
    crit = MSELossFlat()
    learn = Learner(KINDS['tensor'](X, y), model := Failing(exc, at=3), loss_func=crit,
                    cbs=[BatchSubsampler(sample_pct=.5, step_pct=.5), WeightedPerSampleLoss(torch.rand(N_TR) + .1)])
    with learn.no_bar(), learn.no_logging():
        if isinstance(exc, CancelFitException): learn.fit(1)  # fastai ends the fit quietly
        else:
            with pytest.raises(type(exc)): learn.fit(1)
    assert not hasattr(learn, 'kept_rows') and learn.loss_func is crit and 'get_idxs' not in learn.dls.train.__dict__
    # a following plain fit sees whole batches
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, (BatchSubsampler, WeightedPerSampleLoss))])
    model.at = 10**9
    learn.add_cb(rec := Record())
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert len(rec.tr) == N_TR // BS and all(torch.equal(xb, X[i * BS:(i + 1) * BS]) for i, ((xb,), _) in enumerate(rec.tr))

def test_one_subsampler_per_learner():
    learn = synth_learner('regression', n_train=64, n_valid=32, cbs=[BatchSubsampler(sample_pct=.5), BatchSubsampler(step_pct=.5)])
    with pytest.raises(ValueError, match='one `BatchSubsampler` per Learner'): learn.fit(1)
    assert not hasattr(learn, 'kept_rows')

def test_repr():
    assert repr(BatchSubsampler(sample_pct=(.5, 1.), step_pct=.25, seed=3)) == \
        'BatchSubsampler(sample_pct=(0.5, 1.0), step_pct=0.25, same_seq_len=True, update_y=False, seed=3)'

# -- no host reads per batch (a CPU stand-in for benchmarks/gpu_sync_check.py) --------------------------------------------

from host_reads import HostReads

class WatchHostReads(Callback):
    "Watch every training batch from the first `before_batch` hook to the last `after_loss` hook (as gpu_sync_check does)"
    order = -10**6
    def before_fit(self): self.seen = []
    def before_batch(self):
        if self.training: self.mode = HostReads(); self.mode.__enter__()
class StopWatching(Callback):
    order = 10**6
    def after_loss(self):
        mode = self.watch_host_reads.__dict__.pop('mode', None)
        if mode is not None: mode.__exit__(None, None, None); self.watch_host_reads.seen += mode.seen

class ItemInBeforeBatch(Callback):
    def before_batch(self): self.v = self.x.sum().item()

@pytest.mark.parametrize('config', ['control', 'bare', 'instance', 'lds', 'subsampler', 'instance+subsampler', 'lds+subsampler'])
def test_no_host_reads_per_batch(config):
    X, y = synth_data(N_TR + 32, 'regression', seed=1)
    sub = lambda: BatchSubsampler(sample_pct=(.5, 1.), step_pct=.5, seed=0)
    cbs = {'control': lambda: [ItemInBeforeBatch()], 'bare': lambda: [],
           'instance': lambda: [WeightedPerSampleLoss(torch.rand(N_TR) + .1)], 'lds': lambda: [LDSWeightedLoss(y[:N_TR])],
           'subsampler': lambda: [sub()], 'instance+subsampler': lambda: [WeightedPerSampleLoss(torch.rand(N_TR) + .1), sub()],
           'lds+subsampler': lambda: [sub(), LDSWeightedLoss(y[:N_TR])]}[config]()
    learn = _learner(KINDS['tensor'](X, y, shuffle=True), cbs=cbs + [WatchHostReads(), StopWatching()])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    seen = learn.watch_host_reads.seen
    if config == 'control': assert seen == ['item'] * (N_TR // BS)  # the watch does catch a read
    else: assert seen == [], sorted(set(seen))

def test_validate_and_get_preds_leave_the_global_rng_alone():
    "fastai runs `before_fit` in `validate`/`get_preds` too: no seed is drawn there (only a real `fit` draws one)"
    draws = []
    for cbs in ([], [BatchSubsampler(sample_pct=.5)]):
        learn = synth_learner('regression', n_train=64, n_valid=32, cbs=cbs)
        set_seed(3)
        with learn.no_bar(), learn.no_logging(): learn.validate(); learn.get_preds()
        draws.append(torch.rand(3))
        assert not hasattr(learn, 'kept_rows')
    assert torch.equal(*draws)
