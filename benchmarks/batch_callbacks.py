"""Benchmark: per-batch cost of `WeightedPerSampleLoss`, `LDSWeightedLoss` and `BatchSubsampler`, alone and together,
against a bare `fit` of the same Learner, measured in the same run.

    python benchmarks/batch_callbacks.py            # CPU, and the GPU too when CUDA is available
    python benchmarks/batch_callbacks.py --quick    # fewer rounds
    python benchmarks/batch_callbacks.py --cpu      # CPU only

What is timed: the training phase of one epoch (fastai's `before_train` to `after_train`, CUDA synchronized at both
ends), divided by its number of batches; so "per batch" includes everything a training step does (data loading,
forward, loss, backward, optimizer step, every callback's hooks, and the per-epoch work of the callbacks spread over
the epoch's batches). Validation is not timed. The configurations are run in turns, round after round, and each
one's median over the rounds is printed, as microseconds per batch and as its extra time as a fraction of the bare
step (negative values are noise), and the same for each configuration's fastest epoch (less sensitive to other
processes on a shared machine). A second table times the callbacks' own per-batch work in isolation (their
`before_batch` hooks and the weighted loss, minus the plain loss) on one batch, best of 9 loops of 100 calls.

So that every configuration does the same model work, `BatchSubsampler` runs with `sample_pct=1., step_pct=1.`: it
draws and gathers full-size random row and step indices each batch (all of its per-batch work) but the batch keeps
its shape. The data are served by a fastai `DataLoader` whose `create_batches` indexes the whole tensor with each
batch's indices at once (the epoch order still comes from `get_idxs`, which `WeightedPerSampleLoss` relies on), so
that Python per-item collation does not swamp the step.

CPU: the project's `SynthModel` (hidden 16) on (3, 64) sequences, batch 32, 64 batches per epoch, OMP_NUM_THREADS as
set (1 by default here). GPU: a 1-D CNN with about 3.0 M parameters on (3, 512) sequences, batch 256, 32 batches per
epoch, data on the GPU. The GPU target of the issue: each callback at most 2% of the bare step.
"""
import math, os, statistics, sys, time
os.environ.setdefault('OMP_NUM_THREADS', '1')
import warnings
warnings.filterwarnings('ignore', category=FutureWarning)
import torch
from torch import nn
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import MSELossFlat
from fastai.optimizer import Adam
from fastai.torch_core import set_seed
import fastai.callback.progress  # noqa: F401  (`no_bar`)
from fastcore.basics import chunked
from tsai_cbs.testing import SynthModel
from tsai_cbs.loss_weights import WeightedPerSampleLoss, LDSWeightedLoss
from tsai_cbs.batch_subsampler import BatchSubsampler


class TensorBatchDL(DataLoader):
    "A fastai `DataLoader` over `(X, y)` tensors that gathers each batch with one indexing op"
    def __init__(self, X, y, **kwargs):
        super().__init__(dataset=list(range(len(X))), **kwargs)
        self.X, self.y = X, y
    def create_batches(self, samps):
        for b in chunked(samps, self.bs, self.drop_last):
            i = torch.as_tensor(b, device=self.X.device)
            yield self.X[i], self.y[i]


class TrainTimer(Callback):
    "Wall time of each epoch's training phase, per batch"
    order = -100
    def __init__(self): self.per_batch = []
    def _sync(self):
        if torch.cuda.is_available(): torch.cuda.synchronize()
    def before_train(self): self._sync(); self.t0, self.n = time.perf_counter(), 0
    def after_batch(self):
        if self.training: self.n += 1
    def after_train(self):
        self._sync(); self.per_batch.append((time.perf_counter() - self.t0) / max(self.n, 1))


def cnn(n_vars=3, width=256, depth=6):
    "A 1-D CNN of about 3.0 M parameters (width 256, 6 conv layers, kernel 9)"
    layers, c = [], n_vars
    for _ in range(depth): layers += [nn.Conv1d(c, width, 9, padding=4), nn.BatchNorm1d(width), nn.ReLU()]; c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(width, 1), nn.Flatten(0))


def make_data(n, seq_len, device):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 3, seq_len, generator=g)
    y = torch.exp(X.mean(-1).sum(-1) * 4 + 0.1 * torch.randn(n, generator=g))
    return X.to(device), y.to(device)


def configs(y_train):
    w = torch.rand(len(y_train), generator=torch.Generator().manual_seed(1)) + .1
    sub = lambda: BatchSubsampler(sample_pct=1., step_pct=1., seed=0)
    return {
        'bare fit': lambda: [],
        'WeightedPerSampleLoss': lambda: [WeightedPerSampleLoss(w)],
        'LDSWeightedLoss': lambda: [LDSWeightedLoss(y_train)],
        'BatchSubsampler': lambda: [sub()],
        'Weighted + Subsampler': lambda: [WeightedPerSampleLoss(w), sub()],
        'LDS + Subsampler': lambda: [LDSWeightedLoss(y_train), sub()],
    }


def run(device, model_fn, n_train, bs, seq_len, rounds, epochs):
    X, y = make_data(n_train + bs, seq_len, device)
    dls = DataLoaders(TensorBatchDL(X[:n_train], y[:n_train], bs=bs, shuffle=True, drop_last=True, device=device),
                      TensorBatchDL(X[n_train:], y[n_train:], bs=bs, device=device), device=device)
    cfgs = configs(y[:n_train].cpu())
    set_seed(0)
    model = model_fn().to(device)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    times = {k: [] for k in cfgs}
    for r in range(rounds + 1):  # round 0 warms up (allocator, cudnn autotuning, lazy inits)
        for name, make in cfgs.items():
            model.load_state_dict(init)
            timer = TrainTimer()
            learn = Learner(dls, model, loss_func=MSELossFlat(), opt_func=Adam, lr=1e-4, cbs=make() + [timer])
            with learn.no_bar(), learn.no_logging(): learn.fit(epochs)
            if r: times[name] += timer.per_batch
    n_par = sum(p.numel() for p in model.parameters())
    print(f"\n{device.upper()}: {model_fn.__name__ if hasattr(model_fn, '__name__') else 'model'} with {n_par/1e6:.2f} M parameters, "
          f"batch {bs}, input (3, {seq_len}), {n_train // bs} batches per epoch, median of {rounds * epochs} epochs per configuration")
    bare, bare_min = statistics.median(times['bare fit']), min(times['bare fit'])
    print(f"{'configuration':<24}{'us / batch':>12}{'extra us':>10}{'extra / bare':>14}{'| best epoch: us':>17}{'extra / bare':>14}")
    for name, t in times.items():
        m, b = statistics.median(t), min(t)
        print(f"{name:<24}{m * 1e6:>12.1f}{(m - bare) * 1e6:>10.1f}{(m - bare) / bare:>14.2%}{b * 1e6:>17.1f}{(b - bare_min) / bare_min:>14.2%}")
    isolated(device, X, y, dls, model, cfgs, bs)
    return times


def isolated(device, X, y, dls, model, cfgs, bs, n=100, repeats=9):
    "Time of the callbacks' own per-batch work alone: their `before_batch` and the weighted loss, minus the plain loss"
    xb, yb = X[:bs], y[:bs]
    with torch.no_grad(): pred = model(xb)
    loss = MSELossFlat()
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    def clock(f):  # best of `repeats` loops of `n` calls: the least disturbed by other processes
        for _ in range(10): f()
        best = math.inf
        for _ in range(repeats):
            sync(); t0 = time.perf_counter()
            for _ in range(n): f()
            sync(); best = min(best, (time.perf_counter() - t0) / n)
        return best
    plain = clock(lambda: loss(pred, yb))
    print(f"isolated per-batch work, best of {repeats} x {n} calls (host time{', CUDA synchronized after each loop' if device == 'cuda' else ''}): "
          f"plain loss {plain * 1e6:.1f} us; extra over it:")
    for name, make in cfgs.items():
        if name == 'bare fit': continue
        cbs = sorted(make(), key=lambda c: c.order)
        learn = Learner(dls, model, loss_func=loss, cbs=cbs)
        learn.n_epoch, learn.epoch = 1, 0
        event = lambda e: [cb(e) for cb in cbs]  # only these callbacks' hooks
        event('before_fit')
        try:
            learn.training, learn.dl, learn.iter = True, dls.train, 0
            event('before_train'); next(iter(dls.train))  # the epoch's item order (WeightedPerSampleLoss)
            def step():
                learn.xb, learn.yb = (xb,), (yb,)
                event('before_batch')
                learn.loss_func(pred, *learn.yb)
            t = clock(step) - plain
            event('after_train')
        finally: event('after_fit')
        print(f"  {name:<24}{t * 1e6:>8.1f} us")


def main():
    quick, cpu_only = '--quick' in sys.argv, '--cpu' in sys.argv
    print(f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, torch threads {torch.get_num_threads()}")
    synth = lambda: SynthModel('regression', hidden=16)
    synth.__name__ = 'SynthModel(hidden=16)'
    run('cpu', synth, n_train=64 * 32, bs=32, seq_len=64, rounds=3 if quick else 10, epochs=1)
    if torch.cuda.is_available() and not cpu_only:
        cnn.__name__ = '1-D CNN'
        run('cuda', cnn, n_train=256 * 32, bs=256, seq_len=512, rounds=3 if quick else 10, epochs=1)
    elif not cpu_only: print("\nCUDA not available: GPU part skipped")


if __name__ == '__main__': main()
