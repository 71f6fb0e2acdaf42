"""Cost of checkpointing every epoch with `SaveModel`, against no checkpointing, in one run.

    OMP_NUM_THREADS=1 python benchmarks/checkpoint.py            # CPU, and CUDA too when present
    python benchmarks/checkpoint.py --epochs 6 --rounds 3 --n-train 1024 --hidden 4096

A >= 20M-parameter MLP trains on synthetic data; every round fits it three times with identical settings:
no checkpoint, `SaveModel(every_epoch=1)` (synchronous writes) and `SaveModel(every_epoch=1, background=True)`
(state copied synchronously, written by a worker thread). The time of an epoch is measured from the end of one
epoch to the end of the next (after `SaveModel` has written, or queued, its file), so a write finishing during the
next epoch counts there. Prints median epoch times and their ratios to the no-checkpoint baseline.
"""
import argparse, statistics, tempfile, time
from pathlib import Path
import torch
from torch import nn
from fastai.callback.core import Callback
from tsai_cbs.save_model import SaveModel
from tsai_cbs.testing import synth_learner


class EpochTimes(Callback):
    order = 100  # after SaveModel (61): an epoch's time includes its checkpoint
    def before_fit(self): self.times, self.t = [], None
    def after_epoch(self):
        if self.dls.device.type == 'cuda': torch.cuda.synchronize()
        t = time.perf_counter()
        if self.t is not None: self.times.append(t - self.t)
        self.t = t


def big_model(hidden):
    return nn.Sequential(nn.Flatten(), nn.Linear(192, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1024), nn.ReLU(), nn.Linear(1024, 1), nn.Flatten(0))


def run(device, args):
    variants = {'none': lambda: [], 'every_epoch': lambda: [SaveModel(every_epoch=1)],
                'every_epoch+background': lambda: [SaveModel(every_epoch=1, background=True)]}
    times = {k: [] for k in variants}
    n_params = sum(p.numel() for p in big_model(args.hidden).parameters())
    print(f"\n== {device}: {n_params/1e6:.1f}M parameters ({n_params*4/2**20:.0f} MiB of float32 weights), "
          f"{args.n_train} samples/epoch, bs {args.bs}, {args.epochs} epochs x {args.rounds} rounds")
    for r in range(args.rounds):
        for name, cbs in variants.items():  # interleaved, so drifts in machine load hit every variant alike
            with tempfile.TemporaryDirectory() as tmp:
                learn = synth_learner(path=tmp, model=big_model(args.hidden), n_train=args.n_train, n_valid=args.bs,
                                      bs=args.bs, device=device, cbs=[EpochTimes()] + cbs(), lr=1e-4)
                with learn.no_bar(), learn.no_logging(): learn.fit(args.epochs + 1)  # the first epoch is warm-up
                times[name] += learn.epoch_times.times
                size = sum(f.stat().st_size for f in (Path(tmp)/'models').glob('*')) if (Path(tmp)/'models').exists() else 0
            print(f"round {r}: {name:24s} epochs {' '.join(f'{t:.3f}' for t in learn.epoch_times.times)} s"
                  + (f"  ({size/2**20:.0f} MiB written)" if size else ''))
    base = statistics.median(times['none'])
    print(f"median epoch: no checkpoint {base:.3f} s")
    for name in list(variants)[1:]:
        m = statistics.median(times[name])
        print(f"median epoch: {name:24s} {m:.3f} s   ratio {m/base:.3f}  (checkpoint cost {100*(m/base-1):+.1f}% of an epoch)")


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--epochs', type=int, default=4)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--n-train', type=int, default=768)
    ap.add_argument('--bs', type=int, default=64)
    ap.add_argument('--hidden', type=int, default=4096)
    ap.add_argument('--cpu-only', action='store_true')
    args = ap.parse_args()
    run('cpu', args)
    if torch.cuda.is_available() and not args.cpu_only:
        args.n_train *= 32  # the GPU is much faster: keep epochs long enough to measure
        run('cuda', args)
    else: print('\n(no CUDA device: GPU part skipped)')
