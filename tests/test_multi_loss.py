"Tests of `tsai_cbs.multi_loss`: terms against references, loss == sum of weighted terms (train and valid, fp16/bf16), routing, no per-batch syncs, history keys, errors."
import math
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from fastai.callback.core import Callback, CancelBatchException
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.optimizer import Adam
from fastai.torch_core import set_seed

from tsai_cbs.multi_loss import MultiLoss, MultiLossCallback, profile_nll, counts_mse
from tsai_cbs.testing import synth_learner


class TwoHeads(nn.Module):
    "Two profile+counts heads on a shared 1-D conv body"
    def __init__(self, c=3, hidden=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(c, hidden, 5, padding=2), nn.ReLU())
        self.prof, self.cnt = nn.Conv1d(hidden, 2, 1), nn.Linear(hidden, 2)
    def forward(self, x):
        h = self.body(x)
        p, c = self.prof(h), self.cnt(h.mean(-1))
        return (p[:, 0], c[:, 0]), (p[:, 1], c[:, 1])


def two_head_learner(cbs, n=96, n_valid=40, bs=16, seed=0, weights=None):
    set_seed(seed)
    X = torch.randn(n + n_valid, 3, 32)
    Y1, Y2 = torch.poisson(torch.exp(X[:, 0])), torch.poisson(torch.exp(X[:, 1] + 0.5))
    def ds(s):
        d = TensorDataset(X[s], Y1[s], Y2[s])
        d.n_inp = 1  # one input, two targets (fastai reads `n_inp` through the DataLoaders)
        return d
    dls = DataLoaders(DataLoader(ds(slice(0, n)), bs=bs, shuffle=True), DataLoader(ds(slice(n, None)), bs=bs))
    loss = MultiLoss({'a': {'profile': profile_nll, 'counts': counts_mse}, 'b': {'profile': profile_nll, 'counts': counts_mse}},
                     weights=weights or {'a': {'counts': 3.}, 'b': {'profile': 0.5, 'counts': 7.}})
    return Learner(dls, TwoHeads(), loss_func=loss, opt_func=Adam, lr=1e-2, cbs=cbs)


def rows(learn):
    names = learn.recorder.metric_names[1:-1]
    return [dict(zip(names, v)) for v in learn.recorder.values]


class BatchLosses(Callback):
    "Independent record of every training batch's loss and size"
    order = 100
    def before_fit(self): self.epochs = []
    def before_epoch(self): self.epochs.append([])
    def after_batch(self):
        if self.training: self.epochs[-1].append((self.loss.item(), self.yb[0].shape[0]))


def test_terms_against_references():
    g = torch.Generator().manual_seed(1)
    logits, lc = torch.randn(5, 12, generator=g), torch.randn(5, generator=g)
    y = torch.poisson(torch.full((5, 12), 2.), generator=g)
    ref = -sum(torch.distributions.Multinomial(int(c.sum()), logits=l).log_prob(c) for l, c in zip(logits, y)) / 5
    assert profile_nll((logits, lc), y).item() == pytest.approx(ref.item(), rel=1e-5)
    assert counts_mse((logits, lc[:, None]), y).item() == pytest.approx(((lc - torch.log1p(y.sum(1)))**2).mean().item(), rel=1e-6)
    assert profile_nll(logits, torch.zeros_like(y)).item() == 0  # no reads: probability 1
    assert profile_nll(logits, y) >= 0


def test_sum_of_weighted_terms_two_heads(in_tmp):
    bl = BatchLosses()
    learn = two_head_learner([MultiLossCallback(), bl])
    with learn.no_bar(), learn.no_logging(): learn.fit(3)
    names = learn.recorder.metric_names
    cols = [f'{s}_{h}_{k}_{r}' for s in ('train', 'valid') for h in 'ab' for k in ('profile', 'counts') for r in ('loss', 'wloss')]
    assert list(names) == ['epoch', 'train_loss', 'valid_loss', *cols, 'time']
    w = {('a', 'profile'): 1., ('a', 'counts'): 3., ('b', 'profile'): .5, ('b', 'counts'): 7.}
    for r, batches in zip(rows(learn), bl.epochs):
        for s in ('train', 'valid'):
            tot = sum(r[f'{s}_{h}_{k}_wloss'] for h, k in w)
            assert r[f'{s}_loss'] == pytest.approx(tot, rel=1e-6)
            for (h, k), wt in w.items(): assert r[f'{s}_{h}_{k}_wloss'] == pytest.approx(wt * r[f'{s}_{h}_{k}_loss'], rel=1e-6)
        # train_loss is the epoch mean of the batch losses (size-weighted), not fastai's smoothed value
        mean = sum(l * n for l, n in batches) / sum(n for _, n in batches)
        assert r['train_loss'] == pytest.approx(mean, rel=1e-6)


def test_valid_terms_recomputed_by_hand(in_tmp):
    learn = two_head_learner(MultiLossCallback())
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    r = rows(learn)[-1]
    learn.model.eval()
    tot, n = {}, 0
    with torch.no_grad():
        for x, y1, y2 in learn.dls.valid:
            (pa, pb) = learn.model(x)
            for h, p, y in (('a', pa, y1), ('b', pb, y2)):
                for k, f in (('profile', profile_nll), ('counts', counts_mse)): tot[(h, k)] = tot.get((h, k), 0) + f(p, y).item() * len(x)
            n += len(x)
    for (h, k), v in tot.items(): assert r[f'valid_{h}_{k}_loss'] == pytest.approx(v / n, rel=1e-5)


def test_default_train_loss_is_smoothed_without_train_mean(in_tmp):
    bl = BatchLosses()
    learn = two_head_learner([MultiLossCallback(train_mean=False), bl])
    with learn.no_bar(), learn.no_logging(): learn.fit(2)
    r = rows(learn)[-1]
    tot = sum(r[f'train_{h}_{k}_wloss'] for h in 'ab' for k in ('profile', 'counts'))
    assert r['train_loss'] != pytest.approx(tot, rel=1e-4)  # fastai's smoothed loss is kept


def test_fp16_cpu(in_tmp):
    "`to_fp16()` runs on the CPU (fastai turns autocast off there) and the sums hold"
    learn = two_head_learner(MultiLossCallback()).to_fp16()
    with pytest.warns(UserWarning), learn.no_bar(), learn.no_logging(): learn.fit(1)
    for r in rows(learn):
        for s in ('train', 'valid'):
            assert r[f'{s}_loss'] == pytest.approx(sum(r[f'{s}_{h}_{k}_wloss'] for h in 'ab' for k in ('profile', 'counts')), rel=1e-6)


class CPUAutocast(Callback):
    "bf16 autocast on the CPU around the forward pass and the loss, as MixedPrecision does on CUDA"
    order = 10
    def before_batch(self): self.ac = torch.autocast('cpu', dtype=torch.bfloat16); self.ac.__enter__()
    def after_pred(self): self.dtype = self.pred[0][0].dtype
    def after_loss(self): self.ac.__exit__(None, None, None)


def test_bf16_autocast_cpu(in_tmp):
    ac = CPUAutocast()
    learn = two_head_learner([MultiLossCallback(), ac])
    with learn.no_bar(), learn.no_logging(): learn.fit(2)
    assert ac.dtype == torch.bfloat16  # the terms really saw half-precision predictions
    for r in rows(learn):
        for s in ('train', 'valid'):
            assert r[f'{s}_loss'] == pytest.approx(sum(r[f'{s}_{h}_{k}_wloss'] for h in 'ab' for k in ('profile', 'counts')), rel=1e-6)
            assert all(math.isfinite(r[f'{s}_{h}_{k}_loss']) for h in 'ab' for k in ('profile', 'counts'))


def _count_syncs(monkeypatch, n_train):
    calls = {'n': 0}
    for name in ('item', 'tolist', '__float__'):
        orig = getattr(torch.Tensor, name)
        def wrapped(self, *a, _orig=orig, **k):
            calls['n'] += 1
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, wrapped)
    learn = synth_learner(loss_func=MultiLoss({'r': {'mse': lambda p, y: ((p - y)**2).mean(), 'l1': lambda p, y: (p - y).abs().mean()}}),
                          cbs=MultiLossCallback(), n_train=n_train, n_valid=32)
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    monkeypatch.undo()
    return calls['n']


def test_no_per_batch_sync(monkeypatch, in_tmp):
    "Host reads of tensors do not grow with the number of batches"
    assert _count_syncs(monkeypatch, 64) == _count_syncs(monkeypatch, 256)


def test_routing_and_errors(in_tmp):
    p = (torch.randn(4, 6), torch.randn(4))
    y = torch.poisson(torch.ones(4, 6))
    one = MultiLoss({'s': {'profile': profile_nll, 'counts': counts_mse}})
    assert one(p, y).item() == pytest.approx((profile_nll(p, y) + counts_mse(p, y)).item())
    dict_out = MultiLoss({'x': {'c': counts_mse}, 'z': {'c': counts_mse}})
    q = {'z': torch.zeros(4), 'x': torch.ones(4)}
    assert dict_out(q, y, y * 0).item() == pytest.approx((counts_mse(q['x'], y) + counts_mse(q['z'], y * 0)).item())
    routed = MultiLoss({'x': {'c': counts_mse}}, preds={'x': 1}, targets={'x': 0})
    assert routed((None, torch.ones(4)), y, None).item() == pytest.approx(counts_mse(torch.ones(4), y).item())
    with pytest.raises(ValueError, match='scalar'): MultiLoss({'x': {'c': lambda p, y: p}})(torch.ones(3), y)
    with pytest.raises(ValueError, match="unknown head 'q'"): MultiLoss({'x': {'c': counts_mse}}, weights={'q': {'c': 1}})
    with pytest.raises(ValueError, match="unknown term 'd'"): MultiLoss({'x': {'c': counts_mse}}, weights={'x': {'d': 1}})
    with pytest.raises(TypeError, match='callable'): MultiLoss({'x': {'c': 3}})
    with pytest.raises(ValueError, match='no terms'): MultiLoss({'x': {}})
    with pytest.raises(ValueError, match='finite'): MultiLoss({'x': {'c': counts_mse}}, weights={'x': {'c': float('nan')}})
    with pytest.raises(TypeError, match='train_mean'): MultiLossCallback(train_mean=1)
    with pytest.raises(ValueError, match='with_loss'): one(p, y, reduction='none')
    learn = synth_learner(cbs=MultiLossCallback())
    w0 = [q.detach().clone() for q in learn.model.parameters()]
    with pytest.raises(TypeError, match='MultiLoss'): learn.fit(1)
    assert all(torch.equal(a, b) for a, b in zip(w0, learn.model.parameters()))
    learn = two_head_learner([MultiLossCallback(), MultiLossCallback()])
    with pytest.raises(ValueError, match='more than one'): learn.fit(1)


def test_history_keys_fits_and_resume(in_tmp):
    mlcb = MultiLossCallback()
    learn = two_head_learner(mlcb)
    with learn.no_bar(), learn.no_logging():
        learn.fit(2)
        learn.fit(4, start_epoch=2)
        learn.fit(1)
    assert sorted(mlcb.history) == [(0, 0), (0, 1), (1, 2), (1, 3), (2, 0)]
    h = mlcb.history[(1, 3)]
    assert set(h) == {'train', 'valid', 'weights'} and h['weights'][('b', 'counts')] == 7.
    r = rows(learn)[-1]
    assert mlcb.loss_at((2, 0), 'valid') == pytest.approx(r['valid_loss'], rel=1e-6)
    assert mlcb.loss_at((2, 0), 'train') == pytest.approx(r['train_loss'], rel=1e-6)
    assert mlcb.loss_at((5, 0)) is None
    # validate(): the term columns are there, nothing is added to the history
    res = learn.validate()
    assert len(res) == 1 + 16 and sorted(mlcb.history)[-1] == (2, 0)


class SkipOddValid(Callback):
    "Cancels every other validation batch before its loss is computed"
    order = 1
    def before_validate(self): self.i = 0
    def before_batch(self):
        if not self.training:
            self.i += 1
            if self.i % 2 == 0: raise CancelBatchException


def test_cancelled_batches_add_nothing(in_tmp):
    learn = two_head_learner([MultiLossCallback(), SkipOddValid()])
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    r = rows(learn)[-1]
    learn.model.eval()
    tot, n = 0., 0
    with torch.no_grad():
        for i, (x, y1, y2) in enumerate(learn.dls.valid):
            if i % 2: continue  # the cancelled ones
            (pa, pb) = learn.model(x)
            tot += profile_nll(pa, y1).item() * len(x); n += len(x)
    assert r['valid_a_profile_loss'] == pytest.approx(tot / n, rel=1e-5)
    assert learn.loss_func.last is None


def test_progress_table_csv_and_plot_loss(in_tmp, capsys):
    "The epoch-mean train_loss and the term columns reach fastai's progress table and CSVLogger; plot_loss still draws the smoothed batch losses"
    import pandas as pd
    from fastai.callback.progress import CSVLogger
    bl = BatchLosses()
    learn = two_head_learner([MultiLossCallback(), CSVLogger(fname='hist.csv'), bl])
    learn.path = in_tmp
    learn.fit(2)  # with fastai's progress bar and table
    names = learn.recorder.metric_names
    df = pd.read_csv(in_tmp/'hist.csv')
    assert list(df.columns) == list(names)
    for r, (_, row) in zip(rows(learn), df.iterrows()):
        for n, v in r.items(): assert row[n] == pytest.approx(v, rel=1e-6)
    out = capsys.readouterr().out
    assert 'valid_b_counts_wloss' in out and f"{rows(learn)[-1]['train_loss']:.6f}" in out
    assert learn.final_record[0] == rows(learn)[-1]['train_loss']
    ax = learn.recorder.plot_loss(skip_start=0)
    (tx, ty), (vx, vy) = [(l.get_xdata(), l.get_ydata()) for l in ax.lines]
    assert list(ty) == pytest.approx([float(l) for l in learn.recorder.losses]) and len(ty) == sum(len(e) for e in bl.epochs)
    assert list(vy) == pytest.approx([r['valid_loss'] for r in rows(learn)])


def test_ddp_means_over_all_ranks(in_tmp):
    "Under DDP the term columns are means over every rank's samples: valid_loss (fastai's, gathered) is their weighted sum and train_loss is the same on every rank"
    from tsai_cbs.testing import run_distributed
    res = run_distributed('''
        import json, torch.distributed as dist
        from tsai_cbs.testing import synth_learner, patch_distributed_dl_for_cpu
        from tsai_cbs.multi_loss import MultiLoss, MultiLossCallback
        patch_distributed_dl_for_cpu()
        terms = {'r': {'mse': lambda p, y: ((p - y)**2).mean(), 'l1': lambda p, y: (p - y).abs().mean()}}
        learn = synth_learner('regression', loss_func=MultiLoss(terms, weights={'r': {'l1': 3.}}), cbs=MultiLossCallback(), n_train=128, n_valid=64)
        with learn.distrib_ctx(cpu=True), learn.no_bar(), learn.no_logging(): learn.fit(2)
        names = learn.recorder.metric_names[1:-1]
        open(f'rank{dist.get_rank()}.json', 'w').write(json.dumps([dict(zip(names, map(float, v))) for v in learn.recorder.values]))
    ''', nproc=2, cwd=in_tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    import json
    r0, r1 = [json.loads((in_tmp/f'rank{r}.json').read_text()) for r in (0, 1)]
    assert len(r0) == 2 and r0 == r1
    for row in r0:
        for s in ('train', 'valid'):
            assert row[f'{s}_loss'] == pytest.approx(row[f'{s}_r_mse_wloss'] + row[f'{s}_r_l1_wloss'], rel=1e-5)
            assert row[f'{s}_r_l1_wloss'] == pytest.approx(3 * row[f'{s}_r_l1_loss'], rel=1e-6)
