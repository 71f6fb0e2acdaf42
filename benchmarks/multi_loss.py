"""Per-batch cost of `MultiLoss` + `MultiLossCallback` and of `AdaptiveCountsWeight`, against a plain loss computing the
same weighted sum with no callback, measured in the same run.

    OMP_NUM_THREADS=1 python benchmarks/multi_loss.py           # CPU, and CUDA too when present
    python benchmarks/multi_loss.py --rounds 3 --cpu            # fewer rounds, CPU only

A two-head profile + counts 1-D CNN (BPReveal-like) trains on synthetic Poisson counts. Timed: the training phase of
each epoch (before_train to after_train, CUDA synchronized at both ends) divided by its batches, so the callbacks'
per-epoch work is spread over the batches. Configurations run in turns, round after round; the median per-batch time
of each (order rotated every round) and its extra time relative to the plain loss are printed (negative: noise).

On CUDA a second check counts the synchronizing operations PyTorch reports (`torch.cuda.set_sync_debug_mode('warn')`)
during the training phase, per epoch, for each configuration: the callbacks must add no per-batch sync (their
per-epoch reads, a few, are expected).
"""
import argparse, os, statistics, sys, time, warnings
os.environ.setdefault('OMP_NUM_THREADS', '1')
warnings.filterwarnings('ignore', category=FutureWarning)
import torch
from torch import nn
from torch.utils.data import TensorDataset
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.optimizer import Adam
from fastai.torch_core import set_seed
import fastai.callback.progress  # noqa: F401  (`no_bar`)
from tsai_cbs.multi_loss import MultiLoss, MultiLossCallback, profile_nll, counts_mse
from tsai_cbs.adaptive_loss import AdaptiveCountsWeight


class Net(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(4, hidden, 11, padding=5), nn.ReLU(), nn.Conv1d(hidden, hidden, 3, padding=1), nn.ReLU())
        self.prof, self.cnt = nn.Conv1d(hidden, 2, 1), nn.Linear(hidden, 2)
    def forward(self, x):
        h = self.body(x)
        p, c = self.prof(h), self.cnt(h.mean(-1))
        return (p[:, 0], c[:, 0]), (p[:, 1], c[:, 1])


def plain_loss(pred, ya, yb):
    "The same weighted sum as the MultiLoss below, without term bookkeeping"
    (pa, pb) = pred
    return profile_nll(pa, ya) + 10. * counts_mse(pa, ya) + profile_nll(pb, yb) + 10. * counts_mse(pb, yb)


class TrainTimer(Callback):
    order = 200
    def __init__(self): self.per_batch, self.syncs = [], []
    def _sync(self):
        if self.dls.device.type == 'cuda': torch.cuda.synchronize()
    def before_train(self):
        self._sync(); self.t0 = time.perf_counter()
        if self.dls.device.type == 'cuda' and self.count_syncs:
            self._w = warnings.catch_warnings(record=True); self._rec = self._w.__enter__(); warnings.simplefilter('always')
            torch.cuda.set_sync_debug_mode('warn')
    def after_train(self):
        if self.dls.device.type == 'cuda' and self.count_syncs:
            torch.cuda.set_sync_debug_mode(0)
            self.syncs.append(sum('synchroniz' in str(w.message) for w in self._rec)); self._w.__exit__(None, None, None)
        self._sync(); self.per_batch.append((time.perf_counter() - self.t0) / self.n_iter)


def make(kind, device, hidden, n, L, bs, count_syncs=False):
    set_seed(0)
    X = nn.functional.one_hot(torch.randint(0, 4, (n, L)), 4).float().transpose(1, 2)
    Ya, Yb = torch.poisson(torch.full((n, L), 0.5)), torch.poisson(torch.full((n, L), 0.3))
    device = torch.device(device)
    X, Ya, Yb = X.to(device), Ya.to(device), Yb.to(device)
    ds = TensorDataset(X, Ya, Yb); ds.n_inp = 1
    dls = DataLoaders(DataLoader(ds, bs=bs, shuffle=True, device=device), DataLoader(ds, bs=bs, device=device), device=device)
    timer = TrainTimer(); timer.count_syncs = count_syncs
    if kind == 'plain': loss, cbs = plain_loss, [timer]
    else:
        loss = MultiLoss({h: {'profile': profile_nll, 'counts': counts_mse} for h in 'ab'}, weights={h: {'counts': 10.} for h in 'ab'})
        cbs = [timer, MultiLossCallback() if kind == 'multi' else AdaptiveCountsWeight({'a': 0.2, 'b': 0.3}, init=None)]
    learn = Learner(dls, Net(hidden), loss_func=loss, opt_func=Adam, lr=1e-3, cbs=cbs)
    return learn, timer


def bench(device, rounds, hidden, n, L, bs, epochs):
    kinds = ('plain', 'multi', 'adaptive')
    learners = {k: make(k, device, hidden, n, L, bs) for k in kinds}
    for r in range(rounds):
        for k in kinds[r % 3:] + kinds[:r % 3]:  # rotate the order: no configuration always runs last
            learn, _ = learners[k]
            with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
                warnings.simplefilter('ignore')
                learn.fit(epochs)
    base = statistics.median(learners['plain'][1].per_batch[1:])
    print(f"\n{device}: hidden {hidden}, {n} samples x {L} steps, batch {bs}; median over {rounds} rounds x {epochs} epochs (first epoch dropped)")
    for k in kinds:
        m = statistics.median(learners[k][1].per_batch[1:])
        print(f"  {k:9s} {m*1e6:9.1f} us/batch   extra vs plain {100*(m/base-1):+6.2f}%")
    if device == 'cuda':
        for k in kinds:
            learn, timer = make(k, device, hidden, n, L, bs, count_syncs=True)
            with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
                warnings.simplefilter('ignore'); learn.fit(2)
            print(f"  syncs reported in the training phase, per epoch ({n // bs} batches): {k:9s} {timer.syncs}")


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=5)
    ap.add_argument('--cpu', action='store_true')
    a = ap.parse_args()
    bench('cpu', a.rounds, hidden=16, n=2048, L=128, bs=64, epochs=2)
    if torch.cuda.is_available() and not a.cpu: bench('cuda', a.rounds, hidden=256, n=16384, L=1024, bs=256, epochs=2)
    elif not a.cpu: print('\nCUDA not available: GPU part skipped')
