"""Benchmark: per-batch cost of `WeightedPerSampleLoss`, `LDSWeightedLoss` and `BatchSubsampler`, alone and together,
against a bare `fit` of the same Learner, measured in the same run.

    python benchmarks/batch_callbacks.py            # CPU, and the GPU too when CUDA is available
    python benchmarks/batch_callbacks.py --quick    # fewer rounds
    python benchmarks/batch_callbacks.py --cpu      # CPU only
    python benchmarks/batch_callbacks.py --json F   # also write the figures to F (benchmarks/run_all.py)

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

Where tsai is installed, one more configuration, "tsai LDS (index lookup)": tsai's own `WeightedPerSampleLoss` with the
`prepare_LDS_weights` weights of the training labels, which looks up each batch's weights by its item indices (the
DataLoader keeps them in `input_idxs`, as tsai's does); `LDSWeightedLoss` looks them up from the targets instead, and its
per-batch cost should be no more than tsai's (issue 14). The difference is printed epoch by epoch (same round).
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
from tsai_cbs.lds import prepare_LDS_weights


class TensorBatchDL(DataLoader):
    "A fastai `DataLoader` over `(X, y)` tensors that gathers each batch with one indexing op (and, like tsai's, keeps its `input_idxs`)"
    def __init__(self, X, y, **kwargs):
        super().__init__(dataset=list(range(len(X))), **kwargs)
        self.X, self.y = X, y
    def create_batches(self, samps):
        for b in chunked(samps, self.bs, self.drop_last):
            i = torch.as_tensor(b, device=self.X.device)
            self.input_idxs = i  # what tsai's WeightedPerSampleLoss reads (tsai's TSDataLoader sets it the same way)
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


class _SpanStart(Callback):
    "First at `before_batch`, first at `after_loss`"
    order = -1000
    def __init__(self, end): self.end, self.spans = end, []
    def before_batch(self):
        if self.training: self.t0 = time.perf_counter()
    def after_loss(self):
        if self.training: self.spans.append(self.end.t1 - self.t0 + time.perf_counter() - self.end.t2)


class _SpanEnd(Callback):
    "Last at `before_batch`, last at `after_pred`"
    order = 1000
    def before_batch(self):
        if self.training: self.t1 = time.perf_counter()
    def after_pred(self):
        if self.training: self.t2 = time.perf_counter()


def span_timers():
    "Host time, per training batch inside the loop, of the `before_batch` hooks plus the loss (after_pred to after_loss)"
    end = _SpanEnd()
    return [_SpanStart(end), end]


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


def _tsai_weighted():
    "tsai's own WeightedPerSampleLoss, where tsai is installed"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            from tsai.callback.core import WeightedPerSampleLoss as TsaiWeightedPerSampleLoss
        return TsaiWeightedPerSampleLoss
    except ImportError: return None


def configs(y_train):
    w = torch.rand(len(y_train), generator=torch.Generator().manual_seed(1)) + .1
    sub = lambda: BatchSubsampler(sample_pct=1., step_pct=1., seed=0)
    cfgs = {
        'bare fit': lambda: [],
        'WeightedPerSampleLoss': lambda: [WeightedPerSampleLoss(w)],
        'LDSWeightedLoss': lambda: [LDSWeightedLoss(y_train)],
        'BatchSubsampler': lambda: [sub()],
        'Weighted + Subsampler': lambda: [WeightedPerSampleLoss(w), sub()],
        'LDS + Subsampler': lambda: [LDSWeightedLoss(y_train), sub()],
    }
    tsai_cb = _tsai_weighted()
    if tsai_cb is not None:
        # tsai's way to LDS-weight a loss: prepare_LDS_weights once, then its WeightedPerSampleLoss indexes the weights
        # of each batch's items (`dls.train.input_idxs`) and multiplies its per-sample loss by them
        w_lds = prepare_LDS_weights(y_train, show_plot=False)
        cfgs['tsai LDS (index lookup)'] = lambda: [tsai_cb(w_lds.clone())]
    return cfgs


def run(device, model_fn, n_train, bs, seq_len, rounds, epochs):
    X, y = make_data(n_train + bs, seq_len, device)
    dls = DataLoaders(TensorBatchDL(X[:n_train], y[:n_train], bs=bs, shuffle=True, drop_last=True, device=device),
                      TensorBatchDL(X[n_train:], y[n_train:], bs=bs, device=device), device=device)
    cfgs = configs(y[:n_train].cpu())
    set_seed(0)
    model = model_fn().to(device)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    times, spans = {k: [] for k in cfgs}, {k: [] for k in cfgs}
    for r in range(rounds + 1):  # round 0 warms up (allocator, cudnn autotuning, lazy inits)
        for name, make in cfgs.items():
            model.load_state_dict(init)
            timer, st = TrainTimer(), span_timers()
            learn = Learner(dls, model, loss_func=MSELossFlat(), opt_func=Adam, lr=1e-4, cbs=make() + [timer] + st)
            with learn.no_bar(), learn.no_logging(): learn.fit(epochs)
            if r: times[name] += timer.per_batch; spans[name].append(statistics.median(st[0].spans))
    n_par = sum(p.numel() for p in model.parameters())
    print(f"\n{device.upper()}: {model_fn.__name__ if hasattr(model_fn, '__name__') else 'model'} with {n_par/1e6:.2f} M parameters, "
          f"batch {bs}, input (3, {seq_len}), {n_train // bs} batches per epoch, median of {rounds * epochs} epochs per configuration")
    bare, bare_min = statistics.median(times['bare fit']), min(times['bare fit'])
    print(f"{'configuration':<24}{'us / batch':>12}{'extra us':>10}{'extra / bare':>14}{'| best epoch: us':>17}{'extra / bare':>14}")
    for name, t in times.items():
        m, b = statistics.median(t), min(t)
        print(f"{name:<24}{m * 1e6:>12.1f}{(m - bare) * 1e6:>10.1f}{(m - bare) / bare:>14.2%}{b * 1e6:>17.1f}{(b - bare_min) / bare_min:>14.2%}")
    res = dict(times=times, spans=spans, bare_median=bare, bare_min=bare_min)
    # the whole step is dominated (and made noisy) by the model's forward, backward and optimizer step; the span of the
    # before_batch hooks plus the loss, timed inside the same loop, holds all of these callbacks' per-batch work
    sb = statistics.median(spans['bare fit'])
    print(f"in the loop, host time of the before_batch hooks + the loss per batch (median over epochs of each epoch's median): bare {sb * 1e6:.1f} us; extra:")
    for name, t in spans.items():
        if name != 'bare fit': print(f"  {name:<24}{(statistics.median(t) - sb) * 1e6:>8.1f} us  (epochs: {(min(t) - sb) * 1e6:.1f} to {(max(t) - sb) * 1e6:.1f})")
    if 'tsai LDS (index lookup)' in times:
        # the same epoch of every round, side by side (negative: ours is cheaper)
        d = [a - b for a, b in zip(spans['LDSWeightedLoss'], spans['tsai LDS (index lookup)'])]
        ds = [a - b for a, b in zip(times['LDSWeightedLoss'], times['tsai LDS (index lookup)'])]
        res['lds_minus_tsai_span'], res['lds_minus_tsai_step'] = d, ds
        print(f"LDSWeightedLoss - tsai's LDS index lookup, per batch, same epoch: hooks + loss median {statistics.median(d) * 1e6:+.1f} us "
              f"(range {min(d) * 1e6:+.1f} to {max(d) * 1e6:+.1f}); whole step median {statistics.median(ds) * 1e6:+.1f} us "
              f"(range {min(ds) * 1e6:+.1f} to {max(ds) * 1e6:+.1f}); target: <= 0")
    res['isolated'] = isolated(device, X, y, dls, model, cfgs, bs)
    return res


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
    out = {}
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
        out[name] = t
    return out


def main():
    quick, cpu_only = '--quick' in sys.argv, '--cpu' in sys.argv
    la = os.getloadavg()
    print(f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, torch threads {torch.get_num_threads()}, "
          f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}, {os.cpu_count()} cores")
    if _tsai_weighted() is None: print("tsai is not installed: no tsai configuration")
    synth = lambda: SynthModel('regression', hidden=16)
    synth.__name__ = 'SynthModel(hidden=16)'
    out = dict(cpu=run('cpu', synth, n_train=64 * 32, bs=32, seq_len=64, rounds=3 if quick else 10, epochs=1))
    if torch.cuda.is_available() and not cpu_only:
        cnn.__name__ = '1-D CNN'
        out['cuda'] = run('cuda', cnn, n_train=256 * 32, bs=256, seq_len=512, rounds=3 if quick else 10, epochs=1)
    elif not cpu_only: print("\nCUDA not available: GPU part skipped")
    if '--json' in sys.argv:
        import json
        json.dump(out, open(sys.argv[sys.argv.index('--json') + 1], 'w'))


if __name__ == '__main__': main()
