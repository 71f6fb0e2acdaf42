"""Exact resume after SIGKILL: a run killed after several epochs and in the middle of an epoch, resumed each time in a new
process by `SaveModel(resume=True)`, ends bit for bit like the run that was never killed, with every stateful callback
of the package and fastai's trackers attached.

Two configurations, because `LDSWeightedLoss` and `adaptive_callbacks` cannot be on one Learner: the adaptive λ needs
`learn.loss_func` to be a `MultiLoss` (`AdaptiveCountsWeight` refuses the per-sample weighting's stand-in loss), and a
`MultiLoss` returns one mean per term, never the per-sample values `LDSWeightedLoss` weights (it refuses
`reduction='none'`). So 'adaptive' has `adaptive_callbacks` (λ, checkpoint, LR plateau, early stopping, epoch log) with
`BatchSubsampler`, `TransformScheduler` and `StopAfter`; 'lds' has `LDSWeightedLoss` with the same three and fastai's
trackers.

Each process is an `os.fork` of pytest's process, which never trains: the killed process and the resumed one are
siblings, so nothing of the killed run reaches the next except its files. What a child does inherit (the imported
modules, the random generators as pytest left them) cannot make a resume that does nothing pass: the Learner is built
anew in the child, and a resumed child then re-initialises the weights and reseeds Python's, numpy's, torch's and the
DataLoaders' generators from its pid, so only the checkpoint brings the reference back; and the last process must have
trained only the epochs after the last kill. Forking spares ~20 interpreter starts with torch and fastai imports."""
import os, random, signal, sys, traceback, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from fasttransform import Transform
from fastai.callback.core import Callback
from fastai.callback.schedule import SchedCos
from fastai.callback.tracker import EarlyStoppingCallback, ReduceLROnPlateau, TrackerCallback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.optimizer import Adam
from fastai.torch_core import set_seed

from tsai_cbs.adaptive_loss import AdaptiveCountsWeight, adaptive_callbacks
from tsai_cbs.batch_subsampler import BatchSubsampler
from tsai_cbs.loss_weights import LDSWeightedLoss
from tsai_cbs.multi_loss import MultiLoss, profile_nll, counts_mse
from tsai_cbs.save_model import SaveModel, load_checkpoint
from tsai_cbs.stop_after import StopAfter
from tsai_cbs.testing import synth_learner
from tsai_cbs.transform_scheduler import TransformScheduler

pytestmark = pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs os.fork: each run is a new process')

N_EPOCH, STOP_AFTER = 10, 8
# where each process of the interrupted run is killed: after epochs 1, 3 and 5, and in epoch 4 after its third batch
# (the `iter` file has just been written by `every_n_batches`; the resume goes back to the end of epoch 3)
KILLS = [('epoch', 1), ('epoch', 3), ('batch', 4), ('epoch', 5)]


class Scale(Transform):
    "A training transform with a `magnitude` for `TransformScheduler` (deterministic: no random draws)"
    def __init__(self, magnitude=.2): super().__init__(); self.magnitude = magnitude
    def encodes(self, x: torch.Tensor): return x * (1 + self.magnitude) if x.ndim == 3 else x


class ProfileCounts(nn.Module):
    def __init__(self, c=3, hidden=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(c, hidden, 5, padding=2), nn.ReLU())
        self.prof, self.cnt = nn.Conv1d(hidden, 1, 1), nn.Linear(hidden, 1)
    def forward(self, x):
        h = self.body(x)
        return self.prof(h)[:, 0], self.cnt(h.mean(-1))[:, 0]


def _save_model(background):
    return SaveModel(resume=True, with_opt=True, every_n_batches=2, background=background)


def adaptive_learner(path, background):
    "BPReveal's set-up: a MultiLoss whose counts weight λ adapts, `adaptive_callbacks` (checkpoint, LR plateau, early stopping, epoch log)"
    set_seed(0)
    X = torch.randn(160, 3, 32)
    Y = torch.poisson(torch.exp(X[:, 0] + 1))
    def ds(s): d = TensorDataset(X[s], Y[s]); d.n_inp = 1; return d
    dls = DataLoaders(DataLoader(ds(slice(0, 128)), bs=32, shuffle=True, after_batch=Scale()), DataLoader(ds(slice(128, None)), bs=32))
    cbs = adaptive_callbacks({'seq': .2}, early_stop=4, plateau=1, log_to='tsai_cbs.test_resume')
    cbs = [_save_model(background) if isinstance(c, SaveModel) else c for c in cbs]  # the bundle's checkpoint, resumable
    cbs += [BatchSubsampler(sample_pct=(.6, .9), seed=7), TransformScheduler(SchedCos(1., 0.)), StopAfter(max_epochs=STOP_AFTER)]
    return Learner(dls, ProfileCounts(), loss_func=MultiLoss({'seq': {'profile': profile_nll, 'counts': counts_mse}}),
                   opt_func=Adam, lr=5e-2, cbs=cbs, path=path)


def lds_learner(path, background):
    "A regression with LDS-weighted loss, subsampled batches, a scheduled transform and fastai's trackers"
    learn = synth_learner(path=path, n_train=128, n_valid=32, bs=32, lr=3e-3, after_batch=Scale())
    y = learn.dls.train.dataset.tensors[1]
    for cb in [LDSWeightedLoss(labels=y, n_bins=8), BatchSubsampler(sample_pct=.75, seed=3), TransformScheduler(SchedCos(1., .1)),
               ReduceLROnPlateau(patience=1, factor=2.), EarlyStoppingCallback(patience=6), _save_model(background),
               StopAfter(max_epochs=STOP_AFTER)]:
        learn.add_cb(cb)
    return learn


BUILD = dict(adaptive=adaptive_learner, lds=lds_learner)


class Kill(Callback):
    "SIGKILL this process once the checkpoints of the moment are on disk"
    order = 20_000  # after every callback, SaveModel's `last` writer included
    def __init__(self, where, at): self.where, self.at = where, at
    def _die(self):
        self.learn.save_model.writer.join()  # background writes finished: the kill point is exact
        os.kill(os.getpid(), signal.SIGKILL)
    def after_epoch(self):
        if self.where == 'epoch' and self.epoch == self.at: self._die()
    def after_batch(self):
        if self.where == 'batch' and self.training and self.epoch == self.at and self.iter == 2: self._die()


class Grab(Callback):
    "The weights when training ends, before the best ones are loaded"
    order = 0
    def after_fit(self): self.w = {k: v.clone() for k, v in self.model.state_dict().items()}


def _result(learn, grab, epoch_lr, tracker_log):
    acw = next((c for c in learn.cbs if isinstance(c, AdaptiveCountsWeight)), None)
    return dict(final=grab.w, best={k: v.clone() for k, v in learn.model.state_dict().items()},
                values=[[float('nan') if v is None else float(v) for v in r] for r in learn.recorder.values],
                lrs=[float(v) for v in learn.recorder.lrs], epoch_lrs=epoch_lr.lrs,
                losses=[float(v) for v in learn.recorder.losses], stopped_at=learn.epoch,
                lam=None if acw is None else acw.lambda_history,
                stop_after=(learn.stop_after.n_batches, learn.stop_after.n_epochs, learn.stop_after.stopped),
                best_epoch=learn.save_model.best_epoch, best_value=learn.save_model.best,
                trackers=tracker_log.rows, schedule=[list(a) for a in learn.transform_scheduler.applied], files=sorted(p.name for p in (Path(learn.path)/'models').iterdir()))


class TrackerLog(Callback):
    "Every tracker's `best` and `wait` after each epoch (they are re-based when λ changes); a user's callback with the state protocol"
    order = 64  # after fastai's trackers (60-63)
    def before_fit(self): self.rows = []
    def after_epoch(self):
        self.rows.append([(type(c).__name__, float(c.best), getattr(c, 'wait', None)) for c in self.learn.cbs if isinstance(c, TrackerCallback)])
    def state_dict(self): return dict(rows=[list(r) for r in self.rows])
    def load_state_dict(self, state): self.rows = [[tuple(t) for t in r] for r in state['rows']]


class EpochLR(Callback):
    "The learning rate each epoch starts with (the LR plateau changes it between epochs); a user's callback with the state protocol"
    order = 1
    def before_fit(self): self.lrs = []
    def before_epoch(self): self.lrs.append(self.opt.hypers[-1]['lr'])
    def state_dict(self): return dict(lrs=list(self.lrs))
    def load_state_dict(self, state): self.lrs = list(state['lrs'])


def _perturb(learn, seed):
    "Another session's state: new random weights, other random and shuffling states; a real resume restores them all"
    random.seed(seed); np.random.seed(seed % 2**32); torch.manual_seed(seed)
    for m in learn.model.modules():
        if hasattr(m, 'reset_parameters'): m.reset_parameters()
    for dl in learn.dls.loaders: dl.rng = random.Random(seed)


class EpochCount(Callback):
    "The epochs this process trained (a resume skips the done ones without events); holds no state to resume"
    def before_fit(self): self.n = 0
    def before_epoch(self): self.n += 1


def _child(config, path, background, kill, out, resumed):
    "One process of a run: build the Learner afresh, fit (resuming if there is a checkpoint), die at `kill` or save the result"
    code = 1
    try:
        torch.set_num_threads(1)
        warnings.filterwarnings('error', message='.*(not restored|start afresh).*')  # every callback's state must match
        learn = BUILD[config](path, background)
        if resumed: _perturb(learn, os.getpid())
        grab, epoch_lr, tracker_log, count = Grab(), EpochLR(), TrackerLog(), EpochCount()
        cbs = [grab, epoch_lr, tracker_log, count] + ([Kill(*kill)] if kill else [])
        with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='.*(clamped|resuming a run).*')
            learn.fit(N_EPOCH, cbs=cbs)
        torch.save(dict(_result(learn, grab, epoch_lr, tracker_log), trained=count.n), out)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(code)


def _run(config, path, background=False, kill=None, out=None, resumed=False):
    pid = os.fork()
    if pid == 0: _child(config, path, background, kill, out, resumed)
    _, status = os.waitpid(pid, 0)
    return status


_refs = {}

def _reference(config, tmp_path_factory):
    "The uninterrupted run, computed once per configuration"
    if config not in _refs:
        d = tmp_path_factory.mktemp(f'ref_{config}')
        status = _run(config, d/'run', out=d/'result.pt')
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, 'the reference run failed (its traceback is above)'
        _refs[config] = torch.load(d/'result.pt', weights_only=False)
    return _refs[config]


def _same(a, b):
    "Equal bit for bit (NaN equals NaN), through nested containers and tensors"
    if isinstance(a, torch.Tensor): return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict): return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b: return True
    return type(a) is type(b) and a == b


@pytest.mark.parametrize('background', [False, True])
@pytest.mark.parametrize('config', ['adaptive', 'lds'])
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, tmp_path_factory, config, background):
    ref = _reference(config, tmp_path_factory)
    n = len(ref['values'])
    # the set-up exercises what it claims: the run outlives the kill points, the LR plateau lowered the rate,
    # the run was stopped before its n_epoch (early stopping or StopAfter), λ moved
    assert n > KILLS[-1][1] + 1 and n < N_EPOCH, n
    assert len(set(ref['epoch_lrs'])) > 1, ref['epoch_lrs']
    if ref['lam'] is not None: assert len({r['lambda_seq'] for r in ref['lam']}) > 2
    assert ref['trained'] == n
    run = tmp_path/'run'
    for i, kill in enumerate(KILLS):
        status = _run(config, run, background, kill, resumed=i > 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f'the run was not killed at {kill}: status {status}'
        meta = load_checkpoint(run/'models'/'model_last.pth')['tsai_cbs']
        assert meta['epoch'] == (kill[1] if kill[0] == 'epoch' else kill[1] - 1)  # the mid-epoch kill resumes from the epoch before
    status = _run(config, run, background, out=tmp_path/'result.pt', resumed=True)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, 'the last resumed run failed (its traceback is above)'
    res = torch.load(tmp_path/'result.pt', weights_only=False)
    assert res['trained'] == n - KILLS[-1][1] - 1, res['trained']  # it resumed after the last kill, not from the start
    for k in ('final', 'best', 'values', 'lrs', 'epoch_lrs', 'losses', 'stopped_at', 'lam', 'stop_after', 'best_epoch', 'best_value', 'trackers', 'schedule'):
        assert _same(res[k], ref[k]), k
    # the resume file of the finished run is gone (delete_last defaults to True with resume): a re-run trains again
    assert res['files'] == ref['files'] and 'model_last.pth' not in res['files'], res['files']
