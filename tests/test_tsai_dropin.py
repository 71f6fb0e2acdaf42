"""tsai users switching `from tsai.callback.core import *` to `from tsai_cbs.all import *`: tsai's documented usage works.

The datasets replicate tsai's (a training subset whose `.splits` is the flat list of its items' positions among all items,
as `TSDatasets.subset(0)`), so tsai's code is not needed; the comparisons with tsai's own callback run where tsai imports."""
import json
from pathlib import Path
import numpy as np
import pytest, torch
from torch import nn
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import MSELossFlat
from fastai.torch_core import set_seed
from tsai_cbs.all import *

N, N_VA, BS = 100, 20, 16

class TsaiSubset(torch.utils.data.Dataset):
    "The shape of tsai's `TSDatasets.subset(i)`: `splits` is the flat list of this subset's positions among all items"
    def __init__(self, X, y, splits, split_idx): self.X, self.y, self.splits, self.split_idx = X, y, list(splits), split_idx
    def __len__(self): return len(self.splits)
    def __getitem__(self, i): j = self.splits[i]; return self.X[j], self.y[j]

class Flat(nn.Module):
    def __init__(self): super().__init__(); self.lin = nn.Linear(16, 1)
    def forward(self, x): return self.lin(x.reshape(len(x), -1)).squeeze(-1)

class Rows(Callback):
    "Each training batch's item ids (the target encodes the item's position among all items) and the weights applied"
    order = 100
    def before_fit(self): self.ids, self.w, self.losses = [], [], []
    def after_loss(self):
        if not self.training: return
        self.losses.append(self.learn.loss.item())
        wcb = next((c for c in self.learn.cbs if isinstance(c, WeightedPerSampleLoss)), None)
        if wcb is None: return
        self.ids.append(self.y.long()); self.w.append(wcb.batch_weights.clone())

def _data(valid_first=True):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, 2, 8, generator=g)
    y = torch.arange(N).float()  # the target is the item's position: each row says which item it is
    va, tr = (list(range(N_VA)), list(range(N_VA, N))) if valid_first else (list(range(N - N_VA, N)), list(range(N - N_VA)))
    return X, y, tr, va

def _learner(w, valid_first=True, shuffle=True, cbs=(), weighting=WeightedPerSampleLoss):
    X, y, tr, va = _data(valid_first)
    dls = DataLoaders(DataLoader(TsaiSubset(X, y, tr, 0), bs=BS, shuffle=shuffle), DataLoader(TsaiSubset(X, y, va, 1), bs=BS))
    set_seed(0)
    return Learner(dls, Flat(), loss_func=MSELossFlat(), cbs=[weighting(w), *cbs])

def test_weights_for_the_entire_dataset_on_tsai_like_splits():
    "tsai's docstring: 'You can pass weights for the entire dataset or just for the training set' (was a TypeError)"
    w = torch.rand(N, generator=torch.Generator().manual_seed(1)) + .1  # one weight per item, by position among all items
    rows = Rows()
    learn = _learner(w, cbs=[rows])
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 0)
    _, _, tr, _ = _data()
    ids, applied = torch.cat(rows.ids), torch.cat(rows.w)
    assert len(ids) == 2 * len(tr) and set(ids.tolist()) == set(tr)
    # each row has its own item's weight, normalized to mean 1 over the training items
    assert torch.allclose(applied, (w[ids] / w[tr].mean()).float(), rtol=1e-6)

def test_weights_for_the_training_set_on_tsai_like_splits():
    "The other documented form: one weight per training item, in the order of the training subset"
    w = torch.rand(N - N_VA, generator=torch.Generator().manual_seed(2)) + .1
    rows = Rows()
    learn = _learner(w, cbs=[rows])
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0)
    _, _, tr, _ = _data()
    ids, applied = torch.cat(rows.ids), torch.cat(rows.w)
    pos_in_train = torch.tensor([tr.index(i) for i in ids.tolist()])
    assert torch.allclose(applied, (w[pos_in_train] / w.mean()).float(), rtol=1e-6)

def test_weights_beyond_the_split_are_an_error():
    X, y, tr, va = _data()
    tr_bad = tr[:-1] + [N + 5]  # a split that names an item the weights do not have
    dls = DataLoaders(DataLoader(TsaiSubset(torch.cat([X, X[:6]]), torch.cat([y, y[:6]]), tr_bad, 0), bs=BS),
                      DataLoader(TsaiSubset(X, y, va, 1), bs=BS))
    learn = Learner(dls, Flat(), loss_func=MSELossFlat(), cbs=WeightedPerSampleLoss(torch.ones(N)))
    p0, lf = [p.detach().clone() for p in learn.model.parameters()], learn.loss_func
    with pytest.raises(ValueError, match='instance_weights'):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert all(torch.equal(a, b) for a, b in zip(p0, learn.model.parameters()))
    assert learn.loss_func is lf
    assert learn.opt is None or not any('step' in learn.opt.state.get(p, {}) for p in learn.model.parameters())  # no Adam step

def test_showgraphcallback2_is_tsais_alias(in_tmp):
    "`ShowGraphCallback2` is in tsai's `__all__`: the same callback as `ShowGraph`"
    assert ShowGraphCallback2 is ShowGraph
    learn = _learner(torch.ones(N), cbs=[ShowGraphCallback2()])
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-3)
    assert len(learn.recorder.values) == 2

# --- the scale of the training loss against tsai's: the numbers the loss_weights page gives ---------------------

def _assert_documented_scale(losses, valid_first):
    "`losses(which, w)`: (per-batch training losses, `Rows`) of an lr-0 fit, unshuffled, weighted by 'ours' or 'tsai' (80 training, 20 validation items)"
    n_tr = N - N_VA
    # weights for the entire dataset: tsai's training loss is ours x mean(train weights) / mean(all weights)
    w = torch.cat([torch.full((N_VA,), 1.), torch.full((n_tr,), 2.)]) if valid_first else \
        torch.cat([torch.full((n_tr,), 2.), torch.full((N_VA,), 1.)])
    (ours, rows), (theirs, _) = losses('ours', w), losses('tsai', w)
    assert np.allclose(theirs / ours, 2 / 1.8, rtol=1e-5)  # 1.111...
    assert np.allclose(torch.cat(rows.w).numpy(), 1.)  # ours: equal training weights are the plain loss
    # weights for the training set only: tsai pads zeros for the validation items and normalizes over all 100 -> x1.25 ...
    w = torch.ones(n_tr)
    ratio = losses('tsai', w)[0] / losses('ours', w)[0]
    if not valid_first: assert np.allclose(ratio, N / n_tr, rtol=1e-5)  # 1.25 on every batch
    else:
        # ... but it looks the weights up by position among ALL items: with the validation items first, the last 20
        # training items (positions 80-99) get weight 0 in tsai. Batches (unshuffled) 0-3 hold positions 20-83.
        assert np.allclose(ratio[:3], N / n_tr, rtol=1e-5)
        assert ratio[-1] < 1  # the last batch is mostly items tsai silently weights 0


class TsaiRule(Callback):
    """tsai's `WeightedPerSampleLoss` (1.0.x, tsai/callback/core.py) restated from its code: weights given for the training
    items only are padded with zeros for the validation items; all are normalized once, `w / w.sum() * len(w)`, and looked
    up by each item's position among ALL items; a training batch's loss is `mean(w * l)`, the validation loss the plain one"""
    def __init__(self, instance_weights): self.w0 = torch.as_tensor(instance_weights, dtype=torch.float32)
    def before_fit(self):
        n_tr, n_va = len(self.dls.train.dataset), len(self.dls.valid.dataset)
        w = torch.cat([self.w0, torch.zeros(n_va)]) if len(self.w0) == n_tr else self.w0
        assert len(w) == n_tr + n_va
        self.w = w / w.sum() * len(w)
        self.crit, self.per_item = self.learn.loss_func, MSELossFlat(reduction='none')
        self.learn.loss_func = self._loss
    def _loss(self, pred, targ):
        if not self.training: return self.crit(pred, targ)
        return (self.per_item(pred, targ) * self.w[targ.long()]).mean()  # the target is the item's position among all items
    def after_fit(self): self.learn.loss_func = self.crit

def _restated_losses(which, w, valid_first):
    rows = Rows()
    learn = _learner(w, valid_first, shuffle=False, cbs=[rows], weighting=TsaiRule if which == 'tsai' else WeightedPerSampleLoss)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0)  # lr 0: every batch sees the same model in both runs
    return np.array(rows.losses), rows

@pytest.mark.parametrize('valid_first', [True, False])
def test_scale_against_tsais_rule(valid_first):
    "The page's numbers (tsai / tsai_cbs: 1.111 and 1.25) from real fits of our callback and of tsai's rule; no tsai needed"
    nb = json.loads((Path(__file__).parents[1]/'nbs'/'03_loss_weights.ipynb').read_text())
    page = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    assert '2 / 1.8 = 1.111' in page and '100 / 80 = 1.25' in page  # what this test checks is what the page says
    _assert_documented_scale(lambda which, w: _restated_losses(which, w, valid_first), valid_first)

def test_tsais_rule_restated_by_hand():
    "The restated rule on one batch, by hand: padded with zeros, normalized over all 100 items, looked up by position, averaged"
    w = torch.arange(1., N - N_VA + 1)  # one weight per training item
    learn = _learner(w, weighting=TsaiRule)
    rule, crit = learn.tsai_rule, learn.loss_func
    rule.before_fit()
    s = w.sum()  # the padded zeros add nothing; the length is all 100 items
    pred, targ = torch.tensor([1., 2., 4.]), torch.tensor([0., 5., 99.])  # targets: positions 0, 5 and 99 (a zero pad)
    learn.training = True
    expect = ((1 - 0) ** 2 * (1 / s * N) + (2 - 5) ** 2 * (6 / s * N) + 0.) / 3
    assert torch.allclose(rule._loss(pred, targ), expect)
    learn.training = False
    assert torch.allclose(rule._loss(pred, targ), ((pred - targ) ** 2).mean())  # validation: the plain loss
    rule.after_fit()
    assert learn.loss_func is crit


# --- the same weights under tsai's own callback: what a migrating user sees -----------------------------------

def _tsai():
    pytest.importorskip('tsai')
    try:
        from tsai.data.core import get_ts_dls
        from tsai.callback.core import WeightedPerSampleLoss as TsaiWeighted
    except Exception as e: pytest.skip(f'tsai does not import here: {e!r}')
    return get_ts_dls, TsaiWeighted

def _raw_losses(cb_type, w, get_ts_dls, valid_first=True):
    X, y, tr, va = _data(valid_first)
    set_seed(0)
    dls = get_ts_dls(X.numpy(), y.numpy(), splits=(tr, va), bs=BS, shuffle_train=False)
    rows = Rows()
    set_seed(0)
    learn = Learner(dls, Flat(), loss_func=MSELossFlat(), cbs=[cb_type(w), rows])
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0)  # lr 0: every batch sees the same model in both runs
    return np.array(rows.losses), rows

@pytest.mark.parametrize('valid_first', [True, False])
def test_scale_against_tsai(valid_first):
    "The numbers the loss_weights page gives for a migrating user, against tsai's own callback where tsai imports"
    get_ts_dls, TsaiWeighted = _tsai()
    cb_types = {'ours': WeightedPerSampleLoss, 'tsai': TsaiWeighted}
    _assert_documented_scale(lambda which, w: _raw_losses(cb_types[which], w, get_ts_dls, valid_first), valid_first)

def test_tsai_lds_usage_cells_then_weighted_loss(in_tmp):
    "tsai's page: `prepare_LDS_weights` cells as written (one weight per item of the whole dataset), then `WeightedPerSampleLoss`"
    import matplotlib; matplotlib.use('Agg')
    np.random.seed(0)
    labels = np.concatenate([np.random.normal(-20, 1, 10), np.random.normal(0, 2, 100), np.random.normal(12, 2, 300)], -1)
    labels[(-1<labels) & (labels<1)] = 0   # This is done to create some 'gaps' for demo purposes
    labels[(10<labels) & (labels<12)] = 0  # This is done to create some 'gaps' for demo purposes
    for n_bins, reweight, lds_kernel, lds_ks, lds_sigma in [(50, 'inv', 'gaussian', 5, 2), (50, 'sqrt_inv', 'gaussian', 5, 2),
                                                            (None, 'sqrt_inv', 'triang', 9, 1)]:
        label_range = None
        weights_per_sample = prepare_LDS_weights(labels, n_bins, label_range=label_range, reweight=reweight,
                                                 lds_kernel=lds_kernel, lds_ks=lds_ks, lds_sigma=lds_sigma, show_plot=True)
        assert weights_per_sample.shape == (len(labels),) and torch.isfinite(weights_per_sample).all()
    # the weights of all 410 items, on a tsai-shaped split (validation items spread over the dataset); the target is the
    # item's position, so each row says which item it is
    n = len(labels)
    va = list(range(0, n, 5)); tr = [i for i in range(n) if i % 5]
    X, y = torch.randn(n, 2, 8, generator=torch.Generator().manual_seed(0)), torch.arange(n).float()
    dls = DataLoaders(DataLoader(TsaiSubset(X, y, tr, 0), bs=32, shuffle=True), DataLoader(TsaiSubset(X, y, va, 1), bs=32))
    rows = Rows()
    learn = Learner(dls, Flat(), loss_func=MSELossFlat(), cbs=[WeightedPerSampleLoss(weights_per_sample), rows])
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0)
    ids, applied = torch.cat(rows.ids), torch.cat(rows.w)
    assert sorted(ids.tolist()) == tr
    w = weights_per_sample.double()
    torch.testing.assert_close(applied.double(), w[ids] / w[tr].mean(), rtol=1e-5, atol=0)
