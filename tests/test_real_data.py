"""The callbacks together on real data a user would have: sktime's GunPoint (UCR, shipped inside its wheel).

One Learner with batch subsampling, per-sample loss weights, a scheduled augmentation, best-model checkpoints,
the live graph (headless: an image file) and a stop criterion, all at once, then a check that the Learner is left
as the docs promise."""
import numpy as np
import pytest, torch
from torch.utils.data import TensorDataset
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.callback.schedule import SchedCos
from fastai.torch_core import set_seed
from fasttransform import Transform
from tsai_cbs.all import *
from torch import nn

sktime_datasets = pytest.importorskip('sktime.datasets')

class Jitter(Transform):
    "Gaussian noise of std `magnitude` on the input batch (training augmentation)"
    order = 90
    def __init__(self, magnitude=.1): super().__init__(); self.magnitude, self.seen = magnitude, []
    def encodes(self, x:torch.Tensor):
        if x.ndim != 3: return x
        self.seen.append(self.magnitude)
        return x + torch.randn_like(x) * self.magnitude

def _gunpoint(split):
    X, y = sktime_datasets.load_gunpoint(split=split, return_type='numpy3D')
    X = (X - X.mean(-1, keepdims=True)) / X.std(-1, keepdims=True)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y.astype(int) - 1)

def test_gunpoint_all_callbacks_together(in_tmp):
    Xtr, ytr = _gunpoint('train'); Xva, yva = _gunpoint('test')
    assert Xtr.shape == (50, 1, 150) and set(ytr.tolist()) == {0, 1}
    set_seed(0)
    jitter = Jitter(.1)
    train = DataLoader(TensorDataset(Xtr, ytr), bs=10, shuffle=True, after_batch=jitter)
    valid = DataLoader(TensorDataset(Xva, yva), bs=50)
    # class-balanced weights (inverse class frequency), as a user would pass them
    freq = torch.bincount(ytr).float()
    weights = (1 / freq)[ytr]
    loss_func = CrossEntropyLossFlat()
    # GunPoint is told apart by shape, so the head keeps coarse positions (8 pooled segments)
    model = nn.Sequential(nn.Conv1d(1, 16, 7, padding=3), nn.ReLU(), nn.Conv1d(16, 16, 7, padding=3), nn.ReLU(),
                          nn.AdaptiveAvgPool1d(8), nn.Flatten(), nn.Linear(128, 2))
    cbs = [BatchSubsampler(sample_pct=.8, step_pct=.9, seed=1), WeightedPerSampleLoss(weights),
           TransformScheduler(SchedCos(1., 0.)), SaveModel(monitor='accuracy', fname='gp_{epoch:02d}_{accuracy:.3f}', save_top_k=2),
           ShowGraph(), StopAfter(max_epochs=20)]
    learn = Learner(DataLoaders(train, valid), model, loss_func=loss_func, metrics=accuracy, lr=1e-2, cbs=cbs, path=in_tmp)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(25)

    vals = learn.recorder.values
    assert len(vals) == 20                                   # StopAfter ended fit_one_cycle(25) after 20 epochs
    acc = [v[2] for v in vals]
    assert max(acc) > .75, acc                               # a real model learned the real task (chance: .51)
    sm = learn.save_model
    assert sm.best == pytest.approx(max(acc)) and acc[sm.best_epoch] == pytest.approx(max(acc))
    kept = sorted(p.name for p in (in_tmp/'models').glob('gp_*.pth'))
    assert len(kept) == 2 and sm.best_path.name in kept and f'gp_{sm.best_epoch:02d}_{sm.best:.3f}.pth' == sm.best_path.name
    # the best weights were reloaded at the end: validation reproduces the best accuracy
    assert float(learn.validate()[1]) == pytest.approx(max(acc), abs=1e-6)
    assert (in_tmp/'show_graph.png').stat().st_size > 0
    # the Learner is as the docs promise: same loss object and reduction, augmentation back at its initial magnitude
    assert learn.loss_func is loss_func and loss_func.reduction == 'mean'
    assert jitter.magnitude == .1 and getattr(learn, 'kept_rows', None) is None
    # the schedule spans the planned 25 epochs x 5 batches; StopAfter ended it at batch 100 of 125
    seen, f = jitter.seen, SchedCos(1., 0.)
    assert len(seen) == 100 and seen == pytest.approx([.1 * f(g / 124) for g in range(100)])
