"""GPU check: the per-batch work of `WeightedPerSampleLoss`, `LDSWeightedLoss` and `BatchSubsampler` adds no host-device
synchronization.

    python benchmarks/gpu_sync_check.py      # needs CUDA; prints "skipped" and exits 0 without it

How: a real training loop on the GPU (data on the GPU, a small 1-D CNN), where `torch.cuda.set_sync_debug_mode('error')`
is switched on at the start of every batch's `before_batch` event and back off after its `after_loss` event (two
guard callbacks, the first and the last in callback order). Inside that window run: every callback's `before_batch`,
the model's forward, the (weighted) loss and every `after_loss`; so the hooks of the callbacks under test, and nothing
of fastai's that syncs on purpose (the `Recorder` reads the loss in `after_batch`, outside the window). Any synchronizing
CUDA call in the window raises a `RuntimeError`. A control run first checks that the guard does catch a sync: a
callback calling `.item()` in `before_batch` must fail; and a bare fit must pass (so a sync reported for a callback is
that callback's, not fastai's or the model's).

Configurations: each callback alone, then `WeightedPerSampleLoss` + `BatchSubsampler` and `LDSWeightedLoss` +
`BatchSubsampler` in both callback orders; `BatchSubsampler` with a random `sample_pct` range and `step_pct` < 1 (the
shape-changing path). Exit status 0 when every configuration trains 2 epochs with no sync in the window, 1 otherwise.

Without a GPU, `main('cpu')` runs the same loop as a dry run (nothing can sync there: the control reports FAIL), and
`tests/test_batch_subsampler.py::test_no_host_reads_per_batch` watches the same window on the CPU for the tensor ops
that would sync on a GPU (`.item()`, `.cpu()`, `.tolist()`, `bool(tensor)`, boolean masks, `nonzero`, ...).
"""
import sys, warnings
warnings.filterwarnings('ignore', category=FutureWarning)
import torch


def main(dev='cuda'):  # another device only to try the script's logic without a GPU (no sync is detected there)
    if dev == 'cuda' and not torch.cuda.is_available():
        print("CUDA not available: gpu_sync_check skipped (nothing was checked)")
        return 0
    from torch import nn
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.losses import MSELossFlat
    from fastai.optimizer import Adam
    import fastai.callback.progress  # noqa: F401
    sys.path.insert(0, __file__.rsplit('/', 1)[0])
    from batch_callbacks import TensorBatchDL, make_data
    from tsai_cbs.loss_weights import WeightedPerSampleLoss, LDSWeightedLoss
    from tsai_cbs.batch_subsampler import BatchSubsampler

    mode = torch.cuda.set_sync_debug_mode if dev == 'cuda' else (lambda m: None)
    class SyncOn(Callback):
        order = -10**6
        def before_batch(self): mode('error')
    class SyncOff(Callback):
        order = 10**6
        def after_loss(self): mode('default')
    class Syncs(Callback):
        "Control: a hook that syncs"
        def before_batch(self): self.v = self.x.sum().item()

    n, bs = 256 * 8, 256
    X, y = make_data(n + bs, 128, dev)
    dls = DataLoaders(TensorBatchDL(X[:n], y[:n], bs=bs, shuffle=True, device=dev),
                      TensorBatchDL(X[n:], y[n:], bs=bs, device=dev), device=dev)
    w = torch.rand(n) + .1
    ytr = y[:n].cpu()
    model = nn.Sequential(nn.Conv1d(3, 64, 9, padding=4), nn.ReLU(), nn.Conv1d(64, 64, 9, padding=4), nn.ReLU(),
                          nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(64, 1), nn.Flatten(0)).to(dev)
    sub = lambda order=None: _with_order(BatchSubsampler(sample_pct=(.5, 1.), step_pct=.5, seed=0), order)
    configs = {
        'control (.item() in before_batch)': lambda: [Syncs()],
        'bare fit (no callback under test)': lambda: [],  # the window itself (fastai's hooks, the model, the plain loss) is sync-free
        'WeightedPerSampleLoss': lambda: [WeightedPerSampleLoss(w)],
        'LDSWeightedLoss': lambda: [LDSWeightedLoss(ytr)],
        'BatchSubsampler': lambda: [sub()],
        'Weighted + Subsampler': lambda: [WeightedPerSampleLoss(w), sub()],
        'Subsampler (order 20) + Weighted': lambda: [sub(20), WeightedPerSampleLoss(w)],
        'LDS + Subsampler': lambda: [LDSWeightedLoss(ytr), sub()],
        'Subsampler (order 20) + LDS': lambda: [sub(20), LDSWeightedLoss(ytr)],
    }
    ok = True
    for name, make in configs.items():
        learn = Learner(dls, model, loss_func=MSELossFlat(), opt_func=Adam, lr=1e-4, cbs=make() + [SyncOn(), SyncOff()])
        err = None
        try:
            with learn.no_bar(), learn.no_logging(): learn.fit(2)
        except RuntimeError as e: err = e
        finally: mode('default')
        synced = err is not None and 'synchroniz' in str(err)
        if err is not None and not synced: raise err
        expected = name.startswith('control')
        good = synced == expected
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {name}: {'a sync was caught' if synced else 'no sync in the window'}"
              + ('' if good else f" (expected {'a sync' if expected else 'none'})") + (f"\n     {str(err).splitlines()[-1]}" if synced else ''))
    print('all configurations free of host-device syncs' if ok else 'SYNC CHECK FAILED')
    return 0 if ok else 1


def _with_order(cb, order):
    if order is not None: cb.order = order
    return cb


if __name__ == '__main__': sys.exit(main())
