"""Benchmark: cost of `ShowGraph`, `TransformScheduler` and `StopAfter` against a bare `fit` of the same Learner, measured in the same run.

    python benchmarks/graph_schedule_stop.py            # CPU, and the GPU too when CUDA is available
    python benchmarks/graph_schedule_stop.py --quick    # fewer rounds
    python benchmarks/graph_schedule_stop.py --cpu      # CPU only

What is timed: a whole `fit(3)` (training and validation, no progress bar, no logging), CUDA synchronized at the end.
Every configuration has the same batch transform with a `magnitude` (a random per-series scale), so
`TransformScheduler`'s figure is the cost of scheduling it (one Python float per batch), not of the augmentation.
`ShowGraph` runs in file mode (Agg): its cost is one host copy of the epoch's losses, one redraw and one PNG write per
epoch, plus the final metric figure. `StopAfter(max_batches=10**9)` never stops: its cost is its per-batch counter.
The configurations run in turns, round after round; each one's median over the rounds is printed as seconds and as
its extra time relative to the bare fit and per epoch (negative values are noise). ShowGraph's cost is per epoch (and
per fit), not per batch, so its relative figure shrinks as epochs get longer.

CPU: the project's `SynthModel` on (3, 64) sequences, batch 32, 64 training + 16 validation batches per epoch.
GPU: the same with hidden 256 on (3, 512) sequences, batch 256, data on the GPU.
"""
import contextlib, io, os, statistics, sys, tempfile, time
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')
import warnings
warnings.filterwarnings('ignore')
import torch
from fastai.callback.schedule import SchedCos
from tsai_cbs.testing import synth_learner
from tsai_cbs.show_graph import ShowGraph
from tsai_cbs.transform_scheduler import TransformScheduler
from tsai_cbs.stop_after import StopAfter

class MagScale:
    def __init__(self, magnitude=.3): self.magnitude = magnitude
    def __call__(self, b):
        x, y = b
        return x * (1 + self.magnitude * (2 * torch.rand(x.shape[0], 1, 1, device=x.device) - 1)), y

CONFIGS = {
    'bare': lambda: [],
    'TransformScheduler': lambda: [TransformScheduler(SchedCos(1., 0.))],
    'ShowGraph (file)': lambda: [ShowGraph(mode='file')],
    'StopAfter': lambda: [StopAfter(max_batches=10**9)],
    'all three': lambda: [TransformScheduler(SchedCos(1., 0.)), ShowGraph(mode='file'), StopAfter(max_batches=10**9)],
}

def run(device, rounds):
    gpu = device.type == 'cuda'
    kw = dict(n_train=2048 * (4 if gpu else 1), n_valid=512 * (4 if gpu else 1), bs=256 if gpu else 32, device=device,
              hidden=256 if gpu else 16)
    tmp = tempfile.mkdtemp()
    times = {k: [] for k in CONFIGS}
    for r in range(rounds + 1):
        for name, cbs in CONFIGS.items():
            learn = synth_learner(after_batch=MagScale(), cbs=cbs(), path=tmp, **kw)
            with learn.no_bar(), learn.no_logging(), contextlib.redirect_stdout(io.StringIO()):
                t = time.perf_counter()
                learn.fit(3, 1e-3)
                if gpu: torch.cuda.synchronize()
                if r: times[name].append(time.perf_counter() - t)  # round 0 warms up
    base = statistics.median(times['bare'])
    print(f"\n{device} ({rounds} rounds, median of fit(3)):")
    for name, ts in times.items():
        m = statistics.median(ts)
        extra = '' if name == 'bare' else f'{(m - base) / base:+7.1%} vs bare, {(m - base) / 3 * 1e3:+6.0f} ms per epoch'
        print(f"  {name:20s} {m:7.3f} s  {extra}")

def hooks(n=2000):
    "The callbacks' own work, timed in isolation (less sensitive to other processes than whole fits)"
    tmp = tempfile.mkdtemp()
    ts, sg, sa = TransformScheduler(SchedCos(1., 0.)), ShowGraph(mode='file'), StopAfter(max_batches=10**9)
    learn = synth_learner(after_batch=MagScale(), cbs=[ts, sg, sa], path=tmp)
    with learn.no_bar(), learn.no_logging(), contextlib.redirect_stdout(io.StringIO()): learn.fit(2)
    def per_call(f, k):
        t = time.perf_counter()
        for i in range(k): f(i)
        return (time.perf_counter() - t) / k
    ts.total, ts.g0 = n, 0
    t = time.perf_counter()
    ts.mults = [ts._mult(ts._pct(g)) for g in range(n)]  # what `before_train` does once per fit
    upfront_us = (time.perf_counter() - t) / n * 1e6
    set_us = per_call(lambda i: ts._set(i), n) * 1e6
    learn.training, learn.iter = True, 0
    count_us = per_call(lambda i: (setattr(sa, 'n_batches', 0), sa.after_batch()), n) * 1e6
    sg.drawing, sg.learn = True, learn
    sg.fig = None
    draw_ms = per_call(lambda i: sg._draw(), 10) * 1e3
    sg._close()
    from tsai_cbs.show_graph import plot_metrics
    import matplotlib.pyplot as plt
    def metrics(i):
        f = plot_metrics(learn.recorder); f.savefig(sg.metrics_path); plt.close(f)
    metrics_ms = per_call(metrics, 5) * 1e3
    print(f"\nhooks in isolation (CPU): TransformScheduler per batch {set_us:.1f} us (+ {upfront_us:.1f} us per batch "
          f"computing and checking the schedule when training starts); StopAfter per batch {count_us:.1f} us; "
          f"ShowGraph per epoch (redraw + PNG) {draw_ms:.0f} ms, at the end of fit (metric figure + PNG) {metrics_ms:.0f} ms")

if __name__ == '__main__':
    rounds = 3 if '--quick' in sys.argv else 7
    hooks()
    run(torch.device('cpu'), rounds)
    if torch.cuda.is_available() and '--cpu' not in sys.argv: run(torch.device('cuda'), rounds)
    elif '--cpu' not in sys.argv: print('\nCUDA not available: GPU part skipped')
