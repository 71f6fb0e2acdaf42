"""Benchmark: per-batch cost of `FDS` (feature distribution smoothing) over a bare training step, for feature sizes
64 to 1024, measured in the same run.

    python benchmarks/fds.py            # CPU, and the GPU too when CUDA is available (GPU part < 1 min)
    python benchmarks/fds.py --quick    # fewer rounds
    python benchmarks/fds.py --cpu      # CPU only

What is timed (CPU: the training thread's CPU time, so that other processes on a shared machine disturb it far less
than wall time; CUDA: wall time): the training phase of one epoch (fastai's `before_train` to the end of every callback's `after_train`,
CUDA synchronized at both ends), divided by its number of batches: everything a training step does, FDS's hook on
every batch (bin the targets, add the features to the per-bin sums, calibrate them) and its end-of-epoch work
(statistics update and smoothing) spread over the epoch's batches (64 batches an epoch, still a short epoch: the end-of-epoch
work is also printed on its own). `FDS(start_smooth=0, lag=False)` after a warm-up
epoch, so every timed batch does the full work (sums and calibration). The bare fit and the FDS fit (same model
weights, same batches) run in turns, round after round; printed: the median per configuration and the extra time as a
fraction of the bare step, the median over rounds of each round's FDS epoch against the bare epoch of the same round
(paired: a machine whose speed drifts disturbs it less), and the same for the fastest epoch of each (negative values
are noise). Then FDS's own per-batch work (its hook: binning, sums, calibration) timed
two ways, each as a fraction of the bare step's median: inside the fit (median over extra epochs; caches as the model's
work leaves them), and alone on one batch, best of 9 loops of 100 calls (hot caches: the lower bound). The difference
between the whole-step extra and the hook in the fit is the cost of one more fastai callback (fastai calls every
callback at every event) and of the calibrated features in the backward pass; the "idle cb" column measures the first:
an FDS whose hook returns the features untouched, attached and hooked like the real one.

Models, batch 128, input (3, 64), labels with a long tail (LDS's Rice rule gives the bins), F the feature size entering
the head:
- `mlp`: Flatten, Linear(192, F), ReLU, Linear(F, F), ReLU, Linear(F, 1): the cheapest model with F features, so the
  hardest case for the ratio;
- `cnn`: the project's SynthModel body widened to 64 channels (two Conv1d(k=5) + ReLU, mean over steps), then
  Linear(64, F), ReLU, Linear(F, 1): a small but typical time-series regressor.
The target of issue 13: under 3% of the step on the CPU at F = 256, batch 128.

GPU part (CUDA only): the same models on the GPU, batch 128 and 512, F 64..1024, plus a check that FDS's per-batch
work makes no host-device sync (`torch.cuda.set_sync_debug_mode('error')` from the first `before_batch` to the last
`after_loss` of every training batch, with a control that does sync).
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
from tsai_cbs.fds import FDS

FEATURES = (64, 128, 256, 512, 1024)


class TensorBatchDL(DataLoader):
    "A fastai `DataLoader` over `(X, y)` tensors that gathers each batch with one indexing op"
    def __init__(self, X, y, **kwargs):
        super().__init__(dataset=list(range(len(X))), **kwargs)
        self.X, self.y = X, y
    def create_batches(self, samps):
        for b in chunked(samps, self.bs, self.drop_last):
            i = torch.as_tensor(b, device=self.X.device)
            yield self.X[i], self.y[i]


def _clock(device):
    """CPU: this thread's CPU time (the training runs in this one thread; time spent waiting while other processes use the
    cores is left out, so a shared machine disturbs it far less than wall time); CUDA: wall time"""
    return time.thread_time if device == 'cpu' else time.perf_counter


class TrainTimer(Callback):
    "Time of each epoch's training phase (until every callback's `after_train` has run), per batch"
    order = 10**6
    def __init__(self, device): self.per_batch, self.clock, self.cuda = [], _clock(device), device == 'cuda'
    def _sync(self):
        if self.cuda: torch.cuda.synchronize()
    def before_epoch(self): self._sync(); self.t0, self.n = self.clock(), 0
    def after_batch(self):
        if self.training: self.n += 1
    def after_train(self):
        self._sync(); self.per_batch.append((self.clock() - self.t0) / max(self.n, 1))


class Body(nn.Module):
    def __init__(self, width=64):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(3, width, 5, padding=2), nn.ReLU(), nn.Conv1d(width, width, 5, padding=2), nn.ReLU())
    def forward(self, x): return self.conv(x).mean(-1)


def model(kind, nf):
    body = [nn.Flatten(), nn.Linear(3 * 64, nf), nn.ReLU()] if kind == 'mlp' else [Body(64)]
    width = nf if kind == 'mlp' else 64
    return nn.Sequential(*body, nn.Linear(width, nf), nn.ReLU(), nn.Linear(nf, 1), nn.Flatten(0))


def make_data(n, device):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 3, 64, generator=g)
    y = torch.exp(X.mean(-1).sum(-1) * 4 + 0.1 * torch.randn(n, generator=g))  # long-tailed labels
    return X.to(device), y.to(device)


def clock(f, device, n=100, repeats=9):
    "Best of `repeats` loops of `n` calls (the least disturbed by other processes), per call"
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    clock = _clock(device)
    for _ in range(10): f()
    best = math.inf
    for _ in range(repeats):
        sync(); t0 = clock()
        for _ in range(n): f()
        sync(); best = min(best, (clock() - t0) / n)
    return best


def hook_alone(learn, fds, xb, yb, device):
    "FDS's per-batch work alone: its hook on one batch's features (binning, sums, calibration)"
    feats = {}
    h = fds._handle  # None after fit: hook the head input again for one forward to get real features
    head = [m for m in learn.model.modules() if isinstance(m, nn.Linear)][-1]
    hh = head.register_forward_pre_hook(lambda m, a: feats.__setitem__('x', a[0].detach()))
    with torch.no_grad(): learn.model(xb)
    hh.remove()
    learn.yb = (yb,)
    x = feats['x'].requires_grad_()
    return clock(lambda: fds._features(x), device)


def run(device, kind, bs, rounds, n_batches=64):
    n_train = bs * n_batches
    X, y = make_data(n_train + bs, device)
    dls = DataLoaders(TensorBatchDL(X[:n_train], y[:n_train], bs=bs, shuffle=True, drop_last=True, device=device),
                      TensorBatchDL(X[n_train:], y[n_train:], bs=bs, device=device), device=device)
    rows = []
    for nf in FEATURES:
        set_seed(0)
        m = model(kind, nf).to(device)
        init = {k: v.clone() for k, v in m.state_dict().items()}
        fds = FDS(labels=y[:n_train].cpu(), start_smooth=0, lag=False)
        in_fit, apply, clk = [], fds._features, _clock(device)
        def timed_apply(x):  # FDS's own per-batch work inside the real fit (caches as the model's work leaves them)
            if device == 'cuda': torch.cuda.synchronize()
            t0 = clk(); r = apply(x)
            if device == 'cuda': torch.cuda.synchronize()
            in_fit.append(clk() - t0)
            return r
        idle = FDS(labels=y[:n_train].cpu())
        idle._features = lambda x: x  # attached and hooked, doing nothing: the cost of one more fastai callback and its hook
        learners = {}
        for name, cbs in (('bare', []), ('idle', [idle]), ('fds', [fds])):
            learners[name] = (Learner(dls, m, loss_func=MSELossFlat(), opt_func=Adam, lr=1e-4, cbs=cbs), TrainTimer(device))
        times = {k: [] for k in learners}
        for r in range(rounds + 1):  # round 0 warms up, and gives FDS its first statistics
            for name, (learn, timer) in learners.items():
                m.load_state_dict(init)
                with learn.no_bar(), learn.no_logging(): learn.fit(1, cbs=timer)
                if r: times[name].append(timer.per_batch[-1])
        # the hook timed inside the fit, in extra epochs (the syncs it needs on CUDA must not slow the timed ones)
        fds._features = timed_apply
        ends, end_epoch = [], fds.stats.end_epoch
        def timed_end(*a):  # FDS's end-of-epoch work (fold the sums, smooth), once an epoch
            if device == 'cuda': torch.cuda.synchronize()
            t0 = clk(); end_epoch(*a)
            if device == 'cuda': torch.cuda.synchronize()
            ends.append(clk() - t0)
        fds.stats.end_epoch = timed_end
        for r in range(max(2, rounds // 2)):
            m.load_state_dict(init)
            with learn.no_bar(), learn.no_logging(): learners['fds'][0].fit(1)
        del fds._features, fds.stats.end_epoch
        assert fds.stats.calibrating
        med, paired = statistics.median, lambda k: statistics.median((a - b) / b for a, b in zip(times[k], times['bare']))
        learn = learners['fds'][0]
        learn.training = True
        alone = hook_alone(learn, fds, X[:bs], y[:bs], device)
        rows.append((nf, med(times['bare']), med(times['fds']), paired('fds'), (min(times['fds']) - min(times['bare'])) / min(times['bare']),
                     paired('idle'), med(in_fit), alone, med(ends)))
    print(f"\n{device.upper()} {kind}, batch {bs}, input (3, 64), {n_batches} batches per epoch, {fds.stats.n_bins} bins, "
          f"{rounds} rounds (an epoch of each configuration per round)")
    print(f"{'F':>6}{'bare us/batch':>15}{'FDS us/batch':>14}{'extra/bare':>12}{'paired':>9}{'best ep.':>10}"
          f"{'| idle cb paired':>17}{'| hook in fit us':>17}{'/bare':>8}{'| hook alone us':>16}{'/bare':>8}{'| epoch end us':>15}")
    for nf, bare, t, p, best, p_idle, hook, alone, end in rows:
        print(f"{nf:>6}{bare * 1e6:>15.1f}{t * 1e6:>14.1f}{(t - bare) / bare:>12.2%}{p:>9.2%}{best:>10.2%}{p_idle:>17.2%}"
              f"{hook * 1e6:>17.1f}{hook / bare:>8.2%}{alone * 1e6:>16.1f}{alone / bare:>8.2%}{end * 1e6:>15.0f}")
    return rows


def sync_check(dev='cuda'):  # 'cpu': a dry run of the script's logic (nothing can sync there: the control fails)
    "FDS's per-batch work makes no host-device sync (CUDA): a fit with sync debug mode 'error' in each batch's window"
    mode = torch.cuda.set_sync_debug_mode if dev == 'cuda' else (lambda m: None)
    class SyncOn(Callback):
        order = -10**6
        def before_batch(self):
            if self.training: mode('error')
    class SyncOff(Callback):
        order = 10**6
        def after_loss(self): mode('default')
        def after_cancel_batch(self): mode('default')
    class Syncs(Callback):
        def before_batch(self): self.v = self.x.sum().item()
    X, y = make_data(128 * 8 + 128, dev)
    dls = DataLoaders(TensorBatchDL(X[:1024], y[:1024], bs=128, shuffle=True, device=dev),
                      TensorBatchDL(X[1024:], y[1024:], bs=128, device=dev), device=dev)
    ok = True
    for name, cbs, expect_fail, fp16 in (('control (.item() in before_batch)', [Syncs()], True, False), ('bare fit', [], False, False),
                                   ('FDS (reference timing)', [FDS(labels=y[:1024].cpu())], False, False),
                                   ('FDS (lag=False, start_smooth=0)', [FDS(labels=y[:1024].cpu(), lag=False, start_smooth=0)], False, False),
                                   ('FDS, mixed precision (to_fp16)', [FDS(labels=y[:1024].cpu(), lag=False, start_smooth=0)], False, True)):
        if fp16 and dev != 'cuda': continue
        learn = Learner(dls, model('cnn', 256).to(dev), loss_func=MSELossFlat(), opt_func=Adam, cbs=cbs + [SyncOn(), SyncOff()])
        if fp16: learn.to_fp16()
        try:
            with learn.no_bar(), learn.no_logging(): learn.fit(3)  # epoch 2 calibrates with the reference timing
            err = None
        except RuntimeError as e: err = e
        finally: mode('default')
        good = (err is not None) == expect_fail
        if good and cbs and isinstance(cbs[0], FDS):
            good = cbs[0].stats.epoch == 3 and cbs[0].stats.calibrating and math.isfinite(learn.recorder.values[-1][0])
        ok &= good
        print(f"  {name:<36} {'sync caught' if err else 'no sync'}: {'ok' if good else 'FAIL'}")
    return ok


def main():
    quick, cpu_only = '--quick' in sys.argv, '--cpu' in sys.argv
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    print(f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, torch threads {torch.get_num_threads()}")
    for kind in ('mlp', 'cnn'): run('cpu', kind, 128, rounds=3 if quick else 7)
    if torch.cuda.is_available() and not cpu_only:
        for bs in (128, 512): run('cuda', 'cnn', bs, rounds=3 if quick else 5)
        run('cuda', 'mlp', 512, rounds=3 if quick else 5)
        print("\nCUDA sync check (set_sync_debug_mode('error') from before_batch to after_loss):")
        if not sync_check(): sys.exit(1)
    elif not cpu_only: print("\nCUDA not available: GPU part skipped")


if __name__ == '__main__': main()
