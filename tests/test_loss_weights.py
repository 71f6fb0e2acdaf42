"Per-sample loss weights: the right weight on every row (gradient checks) with every kind of DataLoader, workers and DDP; any loss; restoration however fit ends."
import pytest, torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from fastai.callback.core import Callback, CancelFitException
from fastai.data.core import Datasets, DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import MSELossFlat, L1LossFlat, CrossEntropyLossFlat, BCEWithLogitsLossFlat
from fastai.optimizer import Adam
from fastai.torch_core import set_seed
from tsai_cbs.testing import synth_data, synth_learner, SynthModel, run_distributed
from tsai_cbs.lds import prepare_LDS_weights
from tsai_cbs.loss_weights import WeightedPerSampleLoss, LDSWeightedLoss

N_TR, N_VA, BS = 96, 32, 16

class GradProbe(Callback):
    """After each training backward: find the dataset item of every row (by matching its input, or its target, against the
    training set), and check that the gradient reaching each row's prediction is its item's weight times the gradient of the
    plain loss; when `subset_check`, also that the parameters' gradient is the plain loss gradient on the weighted rows only."""
    order = 100  # after every batch-changing callback: sees the rows the model really gets
    def __init__(self, crit, Xtr, ytr, w_items, by='x', subset_check=False, elementwise=False):
        self.crit, self.Xtr, self.ytr, self.w_items, self.by = crit, Xtr, ytr, w_items, by
        self.subset_check, self.elementwise = subset_check, elementwise
    def before_fit(self): self.n_checked, self.max_err, self.ids, self.batch_ids = 0, 0., [], []
    def after_pred(self):
        if self.training: self.learn.pred.retain_grad()
    def _ids(self):
        if self.by == 'x': a, b = self.x.flatten(1), self.Xtr.flatten(1)
        else: a, b = self.y.reshape(len(self.y), -1), self.ytr.reshape(len(self.ytr), -1)
        m = (a[:, None, :] == b[None]).all(-1)
        assert (m.sum(1) == 1).all(), 'each row must match exactly one training item'
        return m.float().argmax(1)
    def after_backward(self):
        if not self.training: return
        ids = self._ids(); self.ids.append(ids); self.batch_ids.append(ids); self.dl_type = type(self.dl).__name__
        w = self.w_items[ids] if not self.elementwise else self.w_items(self.y)
        p = self.pred.detach().clone().requires_grad_()
        g_plain, = torch.autograd.grad(self.crit(p, *self.yb), p)
        exp = (w.view(len(w), *[1] * (g_plain.ndim - 1)) if w.numel() == len(w) else w.view_as(g_plain)) * g_plain
        err = (self.pred.grad - exp).abs().max().item() / (exp.abs().max().item() + 1e-12)
        self.max_err = max(self.max_err, err)
        assert err < 1e-5, f'row gradients are not weight x plain gradient (rel. err {err})'
        if self.subset_check:
            params = [q for q in self.model.parameters() if q.requires_grad]
            keep = w > 0
            if keep.any():
                out = self.model(*self.xb)
                ref = torch.autograd.grad(self.crit(out[keep], *(t[keep] for t in self.yb)), params)
                # the documented reduction: mean over the whole batch of (normalized weight x loss)
                ref = [r * keep.sum() / len(keep) * w[keep][0] for r in ref]
            else: ref = [torch.zeros_like(q) for q in params]
            for q, r in zip(params, ref):
                assert torch.allclose(q.grad, r, rtol=1e-4, atol=1e-7), 'step gradient != plain gradient on the weighted rows'
        self.n_checked += 1

def _data(task='regression', n=N_TR + N_VA):
    X, y = synth_data(n, task, seed=1)
    return X, y

def _tensor_dls(X, y, **kw):
    tr, va = TensorDataset(X[:N_TR], y[:N_TR]), TensorDataset(X[N_TR:], y[N_TR:])
    set_seed(0)
    return DataLoaders(DataLoader(tr, bs=BS, **kw), DataLoader(va, bs=BS))

# non-contiguous splits: the training set is items 1, 3, 5, ... and the last items; weights of length train + valid index all items
SPLIT_TR = list(range(1, 2 * N_VA, 2)) + list(range(2 * N_VA, N_TR + N_VA))
SPLIT_VA = list(range(0, 2 * N_VA, 2))

class Get:
    "Item `i` of a tensor (a picklable transform)"
    def __init__(self, t): self.t = t
    def __call__(self, i): return self.t[i]

def _datasets_dls(X, y, **kw):
    dsets = Datasets(list(range(len(X))), tfms=[[Get(X)], [Get(y)]], splits=[SPLIT_TR, SPLIT_VA])
    set_seed(0)
    return dsets.dataloaders(bs=BS, **kw)

class GetPair:
    "Item `i` as an (input, target) tuple: a `TfmdLists` whose single transform gives both"
    def __init__(self, X, y): self.X, self.y = X, y
    def __call__(self, i): return self.X[i], self.y[i]

def _tfmdlists_dls(X, y, **kw):
    from fastai.data.core import TfmdLists
    tl = TfmdLists(list(range(len(X))), [GetPair(X, y)], splits=[SPLIT_TR, SPLIT_VA])
    set_seed(0)
    return tl.dataloaders(bs=BS, **kw)

def _from_dsets(X, y, **kw):
    set_seed(0)
    return DataLoaders.from_dsets(TensorDataset(X[:N_TR], y[:N_TR]), TensorDataset(X[N_TR:], y[N_TR:]), bs=BS, **kw)

KINDS = {'tensor': _tensor_dls, 'datasets': _datasets_dls, 'tfmdlists': _tfmdlists_dls, 'from_dsets': _from_dsets}

def _train_view(kind, X, y):
    "Training inputs/targets in the order of the training dataset's positions"
    if kind in ('datasets', 'tfmdlists'): return X[SPLIT_TR], y[SPLIT_TR]
    return X[:N_TR], y[:N_TR]

def _learner(dls, task='regression', loss_func=None, cbs=None, n_out=3):
    set_seed(0)
    return Learner(dls, SynthModel(task, n_out=n_out), loss_func=loss_func or MSELossFlat(), opt_func=Adam, lr=1e-3, cbs=cbs)

# -- the weight of each row, for every DataLoader kind ----------------------------------------------------------------------

@pytest.mark.parametrize('kind,kw', [
    ('tensor', dict(shuffle=True)), ('tensor', dict(shuffle=True, drop_last=True, num_workers=2)),
    ('datasets', dict(shuffle=True)), ('datasets', dict(shuffle=True, drop_last=True, num_workers=2)),
    ('tfmdlists', dict(shuffle=True)), ('from_dsets', dict()), ('from_dsets', dict(num_workers=2)),
])
def test_row_weights_every_dataloader(kind, kw):
    X, y = _data()
    Xtr, ytr = _train_view(kind, X, y)
    g = torch.Generator().manual_seed(3)
    # random weights: each row's gradient is its own item's weight times its unweighted gradient
    w_all = torch.rand(N_TR + N_VA, generator=g) + 0.1
    if kind in ('datasets', 'tfmdlists'):  # train + valid form: indexed by position in the full items
        w_train = w_all[SPLIT_TR]; cb = WeightedPerSampleLoss(w_all)
    else: w_train = w_all[:N_TR]; cb = WeightedPerSampleLoss(w_train)
    w_norm = (w_train.double() / w_train.double().mean()).float()
    crit = MSELossFlat()
    probe = GradProbe(crit, Xtr, ytr, w_norm)
    learn = _learner(KINDS[kind](X, y, **kw), loss_func=crit, cbs=[cb, probe])
    with learn.no_bar(), learn.no_logging(): learn.fit(2)
    n_b = N_TR // BS
    assert probe.n_checked == 2 * n_b
    ids = torch.cat(probe.ids)
    # every training item once per epoch (96 = 6 full batches: drop_last drops nothing here)
    assert sorted(ids.tolist()) == sorted(list(range(N_TR)) * 2)
    assert ids[:BS].tolist() != list(range(BS))  # shuffled
    # weights 1 on a chosen subset, 0 elsewhere: the step gradient is the plain gradient on just those rows
    sub = torch.zeros(N_TR); sub[torch.randperm(N_TR, generator=g)[:N_TR // 3]] = 1
    w = torch.zeros(N_TR + N_VA)
    if kind in ('datasets', 'tfmdlists'): w[torch.tensor(SPLIT_TR)] = sub
    else: w[:N_TR] = sub
    probe = GradProbe(crit, Xtr, ytr, sub / sub.mean(), subset_check=True)
    learn = _learner(KINDS[kind](X, y, **kw), loss_func=crit, cbs=[WeightedPerSampleLoss(w), probe])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert probe.n_checked == n_b
    assert learn.loss_func is crit and crit.reduction == 'mean'
    assert 'get_idxs' not in learn.dls.train.__dict__

def test_uneven_last_batch_and_drop_last():
    X, y = _data()
    w = torch.rand(N_TR, generator=torch.Generator().manual_seed(0)) + .5
    for drop_last, n_b in ((False, 7), (True, 6)):
        tr = TensorDataset(X[:N_TR], y[:N_TR])
        dls = DataLoaders(DataLoader(tr, bs=14, shuffle=True, drop_last=drop_last), DataLoader(TensorDataset(X[N_TR:], y[N_TR:]), bs=14))
        probe = GradProbe(MSELossFlat(), X[:N_TR], y[:N_TR], (w / w.mean()).float())
        learn = _learner(dls, loss_func=probe.crit, cbs=[WeightedPerSampleLoss(w), probe])
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
        assert probe.n_checked == n_b
        assert [len(i) for i in probe.batch_ids][-1] == (96 - 6 * 14 if not drop_last else 14)

def test_from_dsets_workers_drop_last():
    "`DataLoaders.from_dsets` (training set shuffled, last partial batch dropped by default) with worker processes"
    X, y = synth_data(132, 'regression', seed=1)
    n = 100  # 6 batches of 16, 4 items dropped each epoch
    w = torch.rand(n, generator=torch.Generator().manual_seed(6)) + .1
    set_seed(0)
    dls = DataLoaders.from_dsets(TensorDataset(X[:n], y[:n]), TensorDataset(X[n:], y[n:]), bs=BS, num_workers=2)
    assert dls.train.shuffle and dls.train.drop_last and dls.train.fake_l.num_workers == 2
    probe = GradProbe(MSELossFlat(), X[:n], y[:n], (w.double() / w.double().mean()).float())
    learn = _learner(dls, loss_func=probe.crit, cbs=[WeightedPerSampleLoss(w), probe])
    with learn.no_bar(), learn.no_logging(): learn.fit(2)
    assert probe.n_checked == 12 and all(len(i) == BS for i in probe.batch_ids)
    for e in (0, 1): assert len(set(torch.cat(probe.batch_ids[6 * e:6 * (e + 1)]).tolist())) == 96

def test_one_batch_mid_epoch_does_not_change_the_order():
    "A callback drawing `dls.train.one_batch()` during training (a new get_idxs call) does not disturb the weights"
    X, y = _data()
    class Peek(Callback):
        def after_batch(self):
            if self.training and self.iter in (0, 2): self.dls.train.one_batch()
    w = torch.rand(N_TR, generator=torch.Generator().manual_seed(4)) + .1
    probe = GradProbe(MSELossFlat(), X[:N_TR], y[:N_TR], (w.double() / w.double().mean()).float())
    learn = _learner(_tensor_dls(X, y, shuffle=True), loss_func=probe.crit, cbs=[WeightedPerSampleLoss(w), Peek(), probe])
    with learn.no_bar(), learn.no_logging(): learn.fit(2)
    assert probe.n_checked == 2 * N_TR // BS
    assert sorted(torch.cat(probe.ids).tolist()) == sorted(list(range(N_TR)) * 2)

def test_dataloader_picklable_during_epoch():
    "Worker processes started by 'spawn' or 'forkserver' get a pickled copy of the DataLoader: it pickles mid-epoch, as a plain one"
    import pickle
    X, y = _data()
    class PickleDL(Callback):
        def after_batch(self):
            if self.training and self.iter == 1: self.copy = pickle.loads(pickle.dumps(self.dl))
    learn = _learner(_tensor_dls(X, y, shuffle=True), cbs=[WeightedPerSampleLoss(torch.rand(N_TR) + .1), PickleDL()])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    dl = learn.pickle_dl.copy
    assert sorted(dl.get_idxs()) == list(range(N_TR)) and len(list(dl)) == N_TR // BS

def test_dataloader_new_mid_epoch_is_plain():
    "`dl.new()` during a training epoch (as `learn.get_preds(ds_idx=0)` does) gives a DataLoader with its own order, not the epoch's"
    X, y = _data()
    class NewDL(Callback):
        def after_batch(self):
            if self.training and self.iter == 1:
                dl = self.dls.train.new(shuffle=False)
                self.idxs, self.ys = list(dl.get_idxs()), torch.cat([b[1] for b in dl])
    probe = GradProbe(MSELossFlat(), X[:N_TR], y[:N_TR], torch.ones(N_TR))
    learn = _learner(_tensor_dls(X, y, shuffle=True), loss_func=probe.crit, cbs=[WeightedPerSampleLoss(torch.ones(N_TR)), NewDL(), probe])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert learn.new_dl.idxs == list(range(N_TR)) and torch.equal(learn.new_dl.ys, y[:N_TR])
    assert probe.n_checked == N_TR // BS

# -- losses -----------------------------------------------------------------------------------------------------------

def _mse_fn(pred, targ, reduction='mean'): return F.mse_loss(pred, targ, reduction=reduction)

@pytest.mark.parametrize('task,loss', [
    ('regression', MSELossFlat()), ('regression', L1LossFlat()), ('regression', nn.MSELoss()), ('regression', _mse_fn),
    ('regression', MSELossFlat(reduction='sum')),
    ('classification', CrossEntropyLossFlat()), ('classification', nn.CrossEntropyLoss()),
    ('multilabel', BCEWithLogitsLossFlat()), ('sequence', MSELossFlat()), ('sequence', nn.L1Loss()),
])
def test_any_per_sample_loss(task, loss):
    X, y = synth_data(N_TR + N_VA, 'classification' if task == 'multilabel' else task, seed=1)
    if task == 'multilabel': y = F.one_hot(y, 3).float()
    w = torch.rand(N_TR, generator=torch.Generator().manual_seed(1)) * 3
    probe = GradProbe(loss, X[:N_TR], y[:N_TR], (w.double() / w.double().mean()).float())
    red = getattr(loss, 'reduction', None)
    learn = _learner(_tensor_dls(X, y, shuffle=True), 'regression' if task == 'regression' else 'sequence' if task == 'sequence' else 'classification',
                     loss_func=loss, cbs=[WeightedPerSampleLoss(w), probe])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert probe.n_checked == N_TR // BS
    assert learn.loss_func is loss and getattr(loss, 'reduction', None) == red

def test_weights_one_is_plain_loss():
    "All weights equal: the training losses are the plain ones (the reduction is the plain mean)"
    X, y = _data()
    res = []
    for cbs in ([], [WeightedPerSampleLoss(torch.full((N_TR,), 3.))]):
        learn = _learner(_tensor_dls(X, y, shuffle=False), cbs=cbs)
        with learn.no_bar(), learn.no_logging(): learn.fit(2)
        res.append(learn.recorder.values)
    a, b = (torch.tensor([list(map(float, v)) for v in r]) for r in res)
    assert a.shape == (2, 2) and torch.allclose(a, b, rtol=1e-5, atol=0)

def test_loss_without_per_sample_values_fails_before_any_batch():
    X, y = _data()
    class Count(Callback):
        def before_fit(self): self.n = 0
        def before_batch(self): self.n += 1
    lf = lambda p, t: ((p - t) ** 2).mean()
    learn = _learner(_tensor_dls(X, y), loss_func=lf, cbs=[WeightedPerSampleLoss(torch.ones(N_TR)), Count()])
    with pytest.raises(ValueError, match='cannot give per-sample losses'): learn.fit(1)
    assert learn.count.n == 0 and learn.loss_func is lf
    learn = _learner(_tensor_dls(X, y), loss_func=MSELossFlat(reduction='none'), cbs=WeightedPerSampleLoss(torch.ones(N_TR)))
    with pytest.raises(ValueError, match="'mean' or 'sum'"): learn.fit(1)
    class Scalar(nn.Module):  # claims a reduction but ignores it
        reduction = 'mean'
        def forward(self, p, t): return ((p - t) ** 2).mean()
    learn = _learner(_tensor_dls(X, y), loss_func=(lf := Scalar()), cbs=WeightedPerSampleLoss(torch.ones(N_TR)))
    init = [p.clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match='`loss_func` gave values.*cannot be weighted per sample'): learn.fit(1)
    assert learn.loss_func is lf and lf.reduction == 'mean'  # found out at the first training batch, before any step
    assert all(torch.equal(a, b) for a, b in zip(init, learn.model.parameters()))

@pytest.mark.parametrize('w,err,match', [
    ([1., 2.], ValueError, 'expected 96'), (torch.ones(N_TR + 1), ValueError, 'expected 96'),
    ([-1.] + [1.] * (N_TR - 1), ValueError, '>= 0'), ([float('nan')] * N_TR, ValueError, 'finite'),
    ([float('inf')] * N_TR, ValueError, 'finite'), ([0.] * N_TR, ValueError, 'all zero'),
    ('weights', TypeError, 'torch tensor'), ({'a': 1}, TypeError, 'torch tensor'), (torch.ones(N_TR, 2), ValueError, 'shape'),
    (torch.ones(N_TR, dtype=torch.bool), TypeError, 'numbers'),
])
def test_bad_weights(w, err, match):
    X, y = _data()
    learn = _learner(_tensor_dls(X, y))
    crit = learn.loss_func
    with pytest.raises(err, match=match):
        learn.add_cb(WeightedPerSampleLoss(w)); learn.fit(1)
    assert learn.loss_func is crit

def test_all_zero_on_training_part():
    X, y = _data()
    w = torch.zeros(N_TR + N_VA); w[N_TR:] = 1  # only validation items weighted
    learn = _learner(_tensor_dls(X, y), cbs=WeightedPerSampleLoss(w))
    with pytest.raises(ValueError, match='all zero on the training set'): learn.fit(1)

# -- validation loss, restoration --------------------------------------------------------------------------------------

@pytest.mark.parametrize('weighting', ['instance', 'lds'])
def test_validation_loss_unweighted(weighting):
    X, y = _data()
    cb = WeightedPerSampleLoss(torch.rand(N_TR) * 5) if weighting == 'instance' else LDSWeightedLoss(y[:N_TR])
    learn = _learner(_tensor_dls(X, y, shuffle=True), cbs=cb)
    with learn.no_bar(), learn.no_logging(): learn.fit(2)
    weighted_valid = learn.recorder.values[-1][1]
    learn.remove_cb(cb)
    plain = Learner(learn.dls, learn.model, loss_func=MSELossFlat())
    with plain.no_bar(), plain.no_logging(): assert plain.validate()[0] == weighted_valid
    with learn.no_bar(), learn.no_logging(): assert learn.validate()[0] == weighted_valid

@pytest.mark.parametrize('weighting', ['instance', 'lds'])
def test_per_sample_validation_losses_during_fit(weighting):
    "`get_preds(with_loss=True)` from a callback during `fit` gives the plain per-sample losses (fastai sets the loss's reduction)"
    X, y = _data()
    class PerSample(Callback):
        order = 90
        def after_epoch(self): self.res = self.learn.get_preds(ds_idx=1, with_loss=True, inner=True)
    cb = WeightedPerSampleLoss(torch.rand(N_TR) + .1) if weighting == 'instance' else LDSWeightedLoss(y[:N_TR])
    crit = MSELossFlat()
    learn = _learner(_tensor_dls(X, y, shuffle=True), loss_func=crit, cbs=[cb, PerSample()])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    preds, targs, losses = learn.per_sample.res
    assert losses.shape == (N_VA,) and torch.allclose(losses, (preds - targs) ** 2)
    assert learn.loss_func is crit and crit.reduction == 'mean'

class Boom(Exception): pass

class Failing(nn.Module):
    "SynthModel that raises `exc` in its forward at the `at`-th training call"
    def __init__(self, exc, at=3):
        super().__init__(); self.m, self.exc, self.at, self.calls = SynthModel('regression'), exc, at, 0
    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.at: raise self.exc
        return self.m(x)

class CancelAt(Callback):
    def after_batch(self):
        if self.training and self.iter == 2: raise CancelFitException()

@pytest.mark.parametrize('how', ['normal', 'cancel', 'exception', 'keyboard'])
@pytest.mark.parametrize('weighting', ['instance', 'lds'])
def test_restored_however_fit_ends(how, weighting):
    X, y = _data()
    crit = MSELossFlat()
    model = Failing(Boom() if how == 'exception' else KeyboardInterrupt(), at=3 if how in ('exception', 'keyboard') else 10**9)
    dls = _tensor_dls(X, y, shuffle=False)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    cb = WeightedPerSampleLoss(torch.rand(N_TR) + .1) if weighting == 'instance' else LDSWeightedLoss(y[:N_TR])
    learn = Learner(dls, model, loss_func=crit, opt_func=Adam, lr=1e-3, cbs=[cb] + ([CancelAt()] if how == 'cancel' else []))
    with learn.no_bar(), learn.no_logging():
        if how == 'exception':
            with pytest.raises(Boom): learn.fit(2)
        elif how == 'keyboard':
            with pytest.raises(KeyboardInterrupt): learn.fit(2)
        else: learn.fit(2)
    assert learn.loss_func is crit and crit.reduction == 'mean'
    assert 'get_idxs' not in dls.train.__dict__ and 'get_idxs' not in dls.valid.__dict__
    # a following plain fit is unaffected: same losses as a fresh Learner from the same start
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, (WeightedPerSampleLoss, LDSWeightedLoss, CancelAt))])
    model.at = 10**9
    model.load_state_dict(init)
    set_seed(0)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, reset_opt=True)
    model2 = Failing(None, at=10**9); model2.load_state_dict(init)
    fresh = Learner(_tensor_dls(X, y, shuffle=False), model2, loss_func=MSELossFlat(), opt_func=Adam, lr=1e-3)
    set_seed(0)
    with fresh.no_bar(), fresh.no_logging(): fresh.fit(1)
    assert learn.recorder.values == fresh.recorder.values

def test_one_weighting_callback_per_learner():
    X, y = _data()
    learn = _learner(_tensor_dls(X, y), cbs=[WeightedPerSampleLoss(torch.ones(N_TR)), LDSWeightedLoss(y[:N_TR])])
    crit = learn.loss_func
    with pytest.raises(ValueError, match='one per-sample weighting callback'): learn.fit(1)
    assert learn.loss_func is crit

# -- LDS from the labels ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('kind,kw', [('tensor', dict(shuffle=True, num_workers=2)), ('datasets', dict(shuffle=True))])
def test_lds_weights_equal_prepare_LDS_weights(kind, kw):
    X, y = _data()
    Xtr, ytr = _train_view(kind, X, y)
    w = prepare_LDS_weights(ytr, n_bins=20, reweight='sqrt_inv', lds_ks=5, lds_sigma=2, show_plot=False)
    cb = LDSWeightedLoss(ytr, n_bins=20, reweight='sqrt_inv', lds_ks=5, lds_sigma=2)
    class Seen(Callback):
        order = 100
        def before_fit(self): self.pairs = []
        def after_backward(self):
            if self.training: self.pairs.append((probe._ids(), cb.batch_weights.clone()))
    probe = GradProbe(MSELossFlat(), Xtr, ytr, w)
    learn = _learner(KINDS[kind](X, y, **kw), cbs=[cb, probe, Seen()])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    ids = torch.cat([p[0] for p in learn.seen.pairs]); bw = torch.cat([p[1] for p in learn.seen.pairs])
    assert sorted(ids.tolist()) == list(range(N_TR))
    assert torch.equal(bw, w[ids])  # exactly the weight prepare_LDS_weights gives each training sample
    assert probe.n_checked == N_TR // BS

def test_lds_bins_argument_and_sequence_targets():
    from tsai_cbs.lds import lds_bins
    X, y = synth_data(N_TR + N_VA, 'sequence', seed=1)
    bins = lds_bins(y[:N_TR].reshape(-1), n_bins=30)
    lo = bins.lo
    probe = GradProbe(MSELossFlat(), X[:N_TR], y[:N_TR], lambda t: bins(t.reshape(-1)).view(t.shape), elementwise=True)
    learn = _learner(_tensor_dls(X, y, shuffle=True), 'sequence', cbs=[LDSWeightedLoss(bins=bins), probe])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert probe.n_checked == N_TR // BS and bins.lo == lo and bins.weights.device.type == 'cpu'
    with pytest.raises(ValueError, match='exactly one'): LDSWeightedLoss()
    with pytest.raises(ValueError, match='exactly one'): LDSWeightedLoss(y, bins=bins)
    with pytest.raises(ValueError, match='ready `bins`'): LDSWeightedLoss(bins=bins, n_bins=3)
    with pytest.raises(TypeError): LDSWeightedLoss(bins='x')

def test_lds_nan_and_inf_targets_give_a_nan_loss():
    "A NaN or ±inf training target gets a NaN weight (not an edge bin's), so the loss is NaN as the plain loss is with a NaN target"
    X, y = _data()
    bins = __import__('tsai_cbs.lds', fromlist=['lds_bins']).lds_bins(y[:N_TR], n_bins=12)
    L1, L2 = N_TR - 2 * BS, N_TR - BS  # the last two training batches (not shuffled) get the bad targets
    y_bad = y.clone(); y_bad[L2 + 3], y_bad[L2 + 5], y_bad[L1 + 2] = float('nan'), float('inf'), -float('inf')
    class Rec(Callback):
        order = 100
        def before_fit(self): self.rows = []
        def after_loss(self):
            if self.training: self.rows.append((self.learn.loss.detach().clone(), self.learn.loss_func.cb.batch_weights.clone(), self.y.clone()))
    learn = _learner(_tensor_dls(X, y_bad), cbs=[LDSWeightedLoss(bins=bins), Rec()])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    (l0, w0, y0), (l1, w1, y1), (l2, w2, y2) = learn.rec.rows[0], learn.rec.rows[-2], learn.rec.rows[-1]
    assert torch.isfinite(l0) and torch.isnan(l1) and torch.isnan(l2)
    assert torch.isfinite(w0).all() and torch.isnan(w1[2]) and torch.isnan(w2[[3, 5]]).all()
    assert torch.isfinite(w1).sum() == BS - 1 and torch.isfinite(w2).sum() == BS - 2
    ok1, ok2 = torch.isfinite(y1), torch.isfinite(y2)
    assert torch.equal(w0, bins(y0)) and torch.equal(w1[ok1], bins(y1[ok1])) and torch.equal(w2[ok2], bins(y2[ok2]))
    class Losses(Callback):
        def before_fit(self): self.seen = []
        def after_loss(self):
            if self.training: self.seen.append(self.learn.loss.detach().clone())
    plain = _learner(_tensor_dls(X, y_bad), cbs=[Losses()])
    with plain.no_bar(), plain.no_logging(): plain.fit(1)
    # fastai's plain loss: NaN with a NaN target as well (inf with only an inf target, where the weighted one is NaN)
    assert torch.isfinite(plain.losses.seen[0]) and torch.isinf(plain.losses.seen[-2]) and torch.isnan(plain.losses.seen[-1])

def test_lds_batch_lookup_equals_the_table_on_every_dtype():
    "The per-batch lookup (float32 fast path, or other dtypes through the table) gives each target the table's weight"
    X, y = _data()
    for table_labels in (y[:N_TR], y[:N_TR].double()):
        cb = LDSWeightedLoss(table_labels, n_bins=15)
        learn = _learner(_tensor_dls(X, y), cbs=[cb])
        cb.learn = learn; cb._setup_fit(torch.device('cpu'))
        for yb in (y[:BS], y[:BS].double(), y[:BS, None], y[:BS].half()):
            w = cb._batch_weights((yb,))
            assert w.shape == yb.shape and w.dtype == torch.float32
            assert torch.equal(w.reshape(-1), cb.bins.weights[cb.bins.bin_index(yb.reshape(-1))])

def test_repr():
    assert repr(WeightedPerSampleLoss([1., 2.])) == 'WeightedPerSampleLoss(2 weights)'
    assert repr(LDSWeightedLoss([1., 2., 3.], n_bins=3)).startswith('LDSWeightedLoss(LDSBins(n_bins=3')

# -- DDP: each rank's shard ---------------------------------------------------------------------------------------------------

DDP_SCRIPT = '''
import torch, torch.distributed as dist, sys
sys.path.insert(0, {tests!r})
from tsai_cbs.testing import synth_learner, synth_data, patch_distributed_dl_for_cpu
from tsai_cbs.loss_weights import WeightedPerSampleLoss, LDSWeightedLoss
from tsai_cbs.batch_subsampler import BatchSubsampler
from tsai_cbs.lds import prepare_LDS_weights
from fastai.losses import MSELossFlat
from test_loss_weights import GradProbe
patch_distributed_dl_for_cpu()
X, y = synth_data(200 + 64, 'regression', seed=0)
Xtr, ytr = X[:200], y[:200]
w = torch.rand(200, generator=torch.Generator().manual_seed(5)) + .1
out = []
wn = (w.double() / w.double().mean()).float()
for name, cbs, wn, by in (('instance', [WeightedPerSampleLoss(w)], wn, 'x'),
                          ('lds', [LDSWeightedLoss(ytr, n_bins=10)], prepare_LDS_weights(ytr, n_bins=10, show_plot=False), 'x'),
                          ('subsampled', [BatchSubsampler(sample_pct=1., step_pct=.5, seed=0), WeightedPerSampleLoss(w)], wn, 'y')):
    crit = MSELossFlat()
    probe = GradProbe(crit, Xtr, ytr, wn, by=by)
    learn = synth_learner('regression', n_train=200, n_valid=64, bs=16, cbs=cbs + [probe], loss_func=crit)
    with learn.distrib_ctx(cpu=True), learn.no_bar(), learn.no_logging(): learn.fit(1)
    ids = torch.cat(probe.ids).tolist()
    out.append(f"{{name}} {{probe.n_checked}} {{probe.max_err:.1e}} {{probe.dl_type}} {{learn.loss_func is crit}} " + ','.join(map(str, ids)))
r = dist.get_rank()
open(f'rank{{r}}.txt', 'w').write('\\n'.join(out))
'''

def test_ddp_each_rank_shard(in_tmp):
    from pathlib import Path
    for attempt in range(2):  # a port taken by another process between its choice and its use: run again
        res = run_distributed(DDP_SCRIPT.format(tests=str(Path(__file__).parent)), nproc=2, cwd=in_tmp)
        if res.returncode == 0 or 'address already in use' not in res.stderr.lower(): break
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [(in_tmp/f'rank{r}.txt').read_text().split('\n') for r in (0, 1)]
    for i, name in enumerate(('instance', 'lds', 'subsampled')):
        shards = []
        for r in (0, 1):
            cb_name, n_checked, err, dl_type, restored, ids = lines[r][i].split(' ')
            assert (cb_name, n_checked, dl_type, restored) == (name, '7', 'DistributedDL', 'True') and float(err) < 1e-5, lines[r][i][:200]
            shards.append([int(v) for v in ids.split(',')])
        # 200 items, 2 ranks: 100 each, 7 batches of 16 (the last one 4); the shards cover the training set
        assert [len(s) for s in shards] == [100, 100]
        if name == 'subsampled':  # rows drawn with replacement within each rank's own batches
            assert not set(shards[0]) & set(shards[1]) and len(set(shards[0])) < 100
        else: assert sorted(shards[0] + shards[1]) == list(range(200))
