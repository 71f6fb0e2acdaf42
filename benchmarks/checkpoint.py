"""Cost of checkpointing every epoch with `SaveModel`, against no checkpointing, in one run.

    OMP_NUM_THREADS=1 python benchmarks/checkpoint.py            # CPU, and CUDA too when present
    python benchmarks/checkpoint.py --epochs 6 --rounds 3 --n-train 1024 --hidden 4096

A >= 20M-parameter MLP trains on synthetic data; every round fits it three times with identical settings:
no checkpoint, `SaveModel(every_epoch=1)` (synchronous writes) and `SaveModel(every_epoch=1, background=True)`
(state copied synchronously, written by a worker thread). The time of an epoch is measured from the end of one
epoch to the end of the next (after `SaveModel` has written, or queued, its file), so a write finishing during the
next epoch counts there. Prints min and median epoch times, their ratios to the no-checkpoint baseline, and the time
the training loop is blocked inside `SaveModel.after_epoch` (the direct cost, robust to other load on the machine).
"""
import argparse, statistics, tempfile, time
from pathlib import Path
import torch
from torch import nn
from fastai.callback.core import Callback
from tsai_cbs.save_model import SaveModel
from tsai_cbs.testing import synth_learner


def _sync(learn):
    if learn.dls.device.type == 'cuda': torch.cuda.synchronize()

class EpochTimes(Callback):
    order = 100  # after SaveModel (61): an epoch's time includes its checkpoint
    def before_fit(self): self.times, self.t = [], None
    def after_epoch(self):
        _sync(self.learn)
        t = time.perf_counter()
        if self.t is not None: self.times.append(t - self.t)
        self.t = t

class Blocked(Callback):
    "Time the training loop waits in `SaveModel.after_epoch` (between orders 60.9 and 61.1)"
    order = 60.9
    def before_fit(self): self.times = []
    def after_epoch(self): _sync(self.learn); self.t0 = time.perf_counter()

class BlockedEnd(Callback):
    order = 61.1
    def after_epoch(self): _sync(self.learn); self.learn.blocked.times.append(time.perf_counter() - self.learn.blocked.t0)


def big_model(hidden):
    return nn.Sequential(nn.Flatten(), nn.Linear(192, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1024), nn.ReLU(), nn.Linear(1024, 1), nn.Flatten(0))


def run(device, args):
    variants = {'none': lambda: [], 'every_epoch': lambda: [SaveModel(every_epoch=1)],
                'every_epoch+background': lambda: [SaveModel(every_epoch=1, background=True)]}
    times, blocked = {k: [] for k in variants}, {k: [] for k in variants}
    n_params = sum(p.numel() for p in big_model(args.hidden).parameters())
    print(f"\n== {device}: {n_params/1e6:.1f}M parameters ({n_params*4/2**20:.0f} MiB of float32 weights), "
          f"{args.n_train} samples/epoch, bs {args.bs}, {args.epochs} epochs x {args.rounds} rounds")
    for r in range(args.rounds):
        for name, cbs in variants.items():  # interleaved, so drifts in machine load hit every variant alike
            with tempfile.TemporaryDirectory() as tmp:
                learn = synth_learner(path=tmp, model=big_model(args.hidden), n_train=args.n_train, n_valid=args.bs,
                                      bs=args.bs, device=device, cbs=[EpochTimes(), Blocked(), BlockedEnd()] + cbs(), lr=1e-4)
                with learn.no_bar(), learn.no_logging(): learn.fit(args.epochs + 1)  # the first epoch is warm-up
                times[name] += learn.epoch_times.times
                blocked[name] += learn.blocked.times[1:]
                size = sum(f.stat().st_size for f in (Path(tmp)/'models').glob('*')) if (Path(tmp)/'models').exists() else 0
            print(f"round {r}: {name:24s} epochs {' '.join(f'{t:.3f}' for t in learn.epoch_times.times)} s"
                  + (f"  ({size/2**20:.0f} MiB written)" if size else ''))
    # On a busy machine epoch times swing with other processes; the minimum is the least disturbed estimate, and
    # the time the loop waits inside SaveModel.after_epoch is measured directly.
    b_min, b_med = min(times['none']), statistics.median(times['none'])
    print(f"no checkpoint: epoch min {b_min:.3f} s, median {b_med:.3f} s")
    for name in list(variants)[1:]:
        mn, md, wait = min(times[name]), statistics.median(times[name]), statistics.median(blocked[name])
        print(f"{name:24s} epoch min {mn:.3f} s (ratio {mn/b_min:.3f}), median {md:.3f} s (ratio {md/b_med:.3f}); "
              f"loop blocked in SaveModel {wait:.3f} s/epoch = {100*wait/b_min:.1f}% of an epoch")


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--epochs', type=int, default=3)
    ap.add_argument('--rounds', type=int, default=4)
    ap.add_argument('--n-train', type=int, default=512)
    ap.add_argument('--bs', type=int, default=64)
    ap.add_argument('--hidden', type=int, default=4096)
    ap.add_argument('--cpu-only', action='store_true')
    args = ap.parse_args()
    run('cpu', args)
    if torch.cuda.is_available() and not args.cpu_only:
        args.n_train *= 32  # the GPU is much faster: keep epochs long enough to measure
        run('cuda', args)
    else: print('\n(no CUDA device: GPU part skipped)')
