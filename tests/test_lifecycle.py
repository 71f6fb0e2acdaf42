"""Exit-path matrix: every public callback, attached to the Learner or passed to `fit`, under every way a `fit` ends.

For each cell the Learner must be left as a control Learner without the callback is left by the same exit path (loss
function identity and reduction, callback list, model mode, transform attributes, optimizer hyper-parameters, DataLoader
attributes and order, Learner attributes), no cleanup may fail, and a following `fit` must give what the same `fit`
gives on a fresh identical Learner (same losses, same weights, and the callback doing its job: checkpoints, lines,
graphs, λ...). Tiny seeded Learners (3 training batches of 16, one validation batch) keep it quick.
"""
import logging, math, random, warnings
import numpy as np
import pytest, torch
from torch import nn
from torch.utils.data import TensorDataset
import fastai.callback.schedule  # Learner.lr_find
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.tracker import EarlyStoppingCallback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.optimizer import Adam
from fastai.torch_core import set_seed
from fasttransform import Transform, Pipeline

from tsai_cbs.testing import synth_learner, synth_data
from tsai_cbs.core import is_training_fit, warn0, reset_once
from tsai_cbs.save_model import SaveModel
from tsai_cbs.loss_weights import WeightedPerSampleLoss, LDSWeightedLoss
from tsai_cbs.batch_subsampler import BatchSubsampler
from tsai_cbs.multi_loss import MultiLoss, MultiLossCallback, profile_nll, counts_mse
from tsai_cbs.adaptive_loss import AdaptiveCountsWeight, adaptive_callbacks
from tsai_cbs.epoch_log import EpochLog
from tsai_cbs.show_graph import ShowGraph
from tsai_cbs.transform_scheduler import TransformScheduler
from tsai_cbs.stop_after import StopAfter
from tsai_cbs.trackers import TrackerRecords
from tsai_cbs.fds import FDS

N, NV, BS, EPOCHS = 48, 16, 16, 2


class Magnitude(Transform):
    "A batch transform with a `magnitude` TransformScheduler can schedule (adds noise of that size to training inputs)"
    order = 10
    def __init__(self, magnitude=.1): super().__init__(); self.magnitude = magnitude
    def encodes(self, x: torch.Tensor): return x + self.magnitude if x.ndim == 3 else x


class ProfileCounts(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(3, 4, 5, padding=2), nn.ReLU())
        self.prof, self.cnt = nn.Conv1d(4, 1, 1), nn.Linear(4, 1)
    def forward(self, x):
        h = self.body(x)
        return self.prof(h)[:, 0], self.cnt(h.mean(-1))[:, 0]


def _bare(learn):
    "No progress bar: `no_bar()` puts a new ProgressCallback back, which would change the callback list on every fit"
    if hasattr(learn, 'progress'): learn.remove_cb(learn.progress)
    return learn

def _plain(cbs, path, **kw): return _bare(synth_learner('regression', cbs=cbs, path=path, n_train=N, n_valid=NV, bs=BS, hidden=4, **kw))

def _multi(cbs, path):
    set_seed(0)
    X = torch.randn(N + NV, 3, 16)
    Y = torch.poisson(torch.exp(X[:, 0] + 1))
    dls = DataLoaders(DataLoader(TensorDataset(X[:N], Y[:N]), bs=BS, shuffle=True), DataLoader(TensorDataset(X[N:], Y[N:]), bs=BS))
    set_seed(0)
    loss = MultiLoss({'seq': {'profile': profile_nll, 'counts': counts_mse}}, weights={'seq': {'counts': 2.}})
    return _bare(Learner(dls, ProfileCounts(), loss_func=loss, opt_func=Adam, lr=1e-2, cbs=cbs, path=path))

def _train_y(): return synth_data(N + NV, 'regression', seed=0)[1][:N]


class CancelAfterBatches(Callback):
    "Plain fastai: what `StopAfter(max_batches=n)` does by design (the control Learner for it)"
    def __init__(self, n): self.n = n
    def before_fit(self): self.count = 0
    def after_batch(self):
        if not self.training or hasattr(self.learn, 'lr_finder'): return
        self.count += 1
        if self.count == self.n and self.iter < self.n_iter - 1: raise CancelFitException()

# name -> (make the callback, make a Learner with `cbs`, what the callback did: a comparable summary[, control's callbacks])
def _obs_save(cb, learn): return (cb.best_epoch, sorted(p.name for p in (learn.path/learn.model_dir).glob('*.pth') if not p.name.startswith('_')))
def _obs_log(cb, learn): return cb.lines
def _obs_graph(cb, learn): return (len(cb.ys), len(cb.vy), (learn.path/'show_graph.png').exists())
def _obs_multi(cb, learn): return [v for k, v in sorted(cb.history.items())][-EPOCHS:]
def _obs_adapt(cb, learn): return ([{k: v for k, v in r.items() if k != 'fit'} for r in cb.lambda_history][-EPOCHS:], learn.loss_func.weights)
def _obs_sched(cb, learn): return [round(v, 6) for _, v in cb.applied]
def _obs_stop(cb, learn): return (cb.stopped, cb.n_batches, cb.n_epochs)
def _obs_none(cb, learn): return None
def _obs_bundle(cbs, learn):
    "adaptive_callbacks: λ per epoch, the checkpoint, and what the LR-plateau and early-stopping trackers saw"
    acw, sm, lrp, es = cbs[:4]
    return (_obs_adapt(acw, learn), sm.best_epoch, (lrp.best, lrp.wait), (es.best, es.wait), cbs[4].lines)

def _cbs(cb): return list(cb) if isinstance(cb, (list, tuple)) else [cb]
def _obs_records(cb, learn): return [(type(t).__name__, k[1] if k else None) for t, _, k in cb._entries]  # tracker, epoch of its best

CALLBACKS = {
    'SaveModel': (lambda: SaveModel(fname='m'), _plain, _obs_save),
    'WeightedPerSampleLoss': (lambda: WeightedPerSampleLoss(np.linspace(1, 3, N)), _plain, _obs_none),
    'LDSWeightedLoss': (lambda: LDSWeightedLoss(_train_y(), n_bins=20), _plain, _obs_none),
    'BatchSubsampler': (lambda: BatchSubsampler(sample_pct=.5, step_pct=.5, seed=1), _plain, _obs_none),
    'MultiLossCallback': (lambda: MultiLossCallback(), _multi, _obs_multi),
    'AdaptiveCountsWeight': (lambda: AdaptiveCountsWeight({'seq': .2}, init=None), _multi, _obs_adapt),
    'EpochLog': (lambda: EpochLog(), _plain, _obs_log),  # to stderr: it stands in for fastai's printed rows during fit
    'ShowGraph': (lambda: ShowGraph(mode='file', figsize=(2, 2), plot_metrics=False), _plain, _obs_graph),
    'TransformScheduler': (lambda: TransformScheduler(lambda p: 1 - p / 2),
                           lambda cbs, path: _plain(cbs, path, after_batch=Magnitude(.1)), _obs_sched),
    'StopAfter': (lambda: StopAfter(max_batches=4), _plain, _obs_stop, lambda: [CancelAfterBatches(4)]),
    # a bundle: AdaptiveCountsWeight, SaveModel, fastai's ReduceLROnPlateau and EarlyStoppingCallback, EpochLog
    'adaptive_callbacks': (lambda: adaptive_callbacks({'seq': .2}, early_stop=3, plateau=1, output_prefix='bp', init=None), _multi, _obs_bundle),
    'TrackerRecords': (lambda: TrackerRecords(), lambda cbs, path: _plain(list(cbs or []) + [EarlyStoppingCallback(patience=5)], path),
                       _obs_records),
    'FDS': (lambda: FDS(), _plain, _obs_none),
}


class Killer(Callback):
    "Ends the fit in one of the ways a fit ends: at the 2nd training batch of the first epoch (or of lr_find)"
    order = 0
    def __init__(self, how, in_lr_find=False): self.how, self.in_lr_find = how, in_lr_find
    def after_loss(self):
        if not self.training or self.iter != 1 or self.epoch != 0: return
        if self.in_lr_find != hasattr(self.learn, 'lr_finder'): return
        if self.how == 'cancel': raise CancelFitException()
        if self.how == 'error': raise RuntimeError('boom')
        if self.how == 'interrupt': raise KeyboardInterrupt()

PATHS = ('normal', 'cancel', 'error', 'interrupt', 'lr_find')
ATTACH = ('learner', 'fit')


def _fit(learn, cbs=None, n=EPOCHS, **kw):
    learn.fit(n, cbs=cbs, **kw)  # logging on (pytest captures it): EpochLog writes only then

def _exit_path(learn, path, cb, attach):
    "Run the fit that ends by `path`; `cb` is None for the control Learner"
    extra = [] if cb is None or attach == 'learner' else _cbs(cb)
    if path == 'lr_find':
        # fastai's lr_find takes no `cbs`: a callback given to `fit` is there the same way (added, removed in a `finally`)
        with learn.added_cbs(extra + [Killer('interrupt', in_lr_find=True)]):
            with pytest.raises(KeyboardInterrupt): learn.lr_find(num_it=6, show_plot=False)
        return
    killer = [] if path == 'normal' else [Killer(path)]
    if path in ('normal', 'cancel'): _fit(learn, extra + killer)
    elif path == 'error':
        with pytest.raises(RuntimeError, match='boom'): _fit(learn, extra + killer)
    else:
        with pytest.raises(KeyboardInterrupt): _fit(learn, extra + killer)


def _simple(v): return isinstance(v, (int, float, str, bool, type(None)))
_MISSING = object()
def _same(a, b): return a == b if _simple(a) and _simple(b) else a is b

def _tfm_attrs(dl):
    fs = []
    for name in ('after_item', 'before_batch', 'after_batch'):
        p = getattr(dl, name, None)
        for f in getattr(p, 'fs', []): fs.append({k: v for k, v in vars(f).items() if _simple(v)})
    return fs

def _dl_state(dl):
    "Attribute identities / values of a DataLoader and the order it would iterate next (without using up its RNG)"
    st = dl.rng.getstate()
    order = list(dl.get_idxs())
    dl.rng.setstate(st)
    # `it`: fastai's live iterator, left set by an epoch that did not run to its end (StopAfter ends one early by design)
    # the objects themselves, compared with `is` (an `id` of a freed object can come back for a new one)
    return {k: v for k, v in vars(dl).items() if k != 'it'}, order, _tfm_attrs(dl)

def _state(learn):
    "What must be the same as on the control Learner (values), or the same object as before the fit (identities)"
    lf = learn.loss_func
    return dict(
        loss_func=lf, reduction=getattr(lf, 'reduction', None), inner_reduction=getattr(getattr(lf, 'func', None), 'reduction', None),
        cbs=list(learn.cbs), keys=set(vars(learn)), logger=learn.logger,
        dls=[_dl_state(dl) for dl in learn.dls.loaders])

def _relative(before, after):
    "What changed between two `_state`s of one Learner, in terms that can be compared across Learners"
    out = dict(same_loss=before['loss_func'] is after['loss_func'], reduction=after['reduction'], inner_reduction=after['inner_reduction'],
               same_cbs=len(before['cbs']) == len(after['cbs']) and all(a is b for a, b in zip(before['cbs'], after['cbs'])), new_keys=after['keys'] - before['keys'], lost_keys=before['keys'] - after['keys'],
               logger_same=before['logger'] == after['logger'])
    dls = []
    for (a0, o0, t0), (a1, o1, t1) in zip(before['dls'], after['dls']):
        dls.append(dict(changed={k for k in a0.keys() | a1.keys() if not _same(a0.get(k, _MISSING), a1.get(k, _MISSING))},
                        order=o1, tfms=t1, tfms_same=t0 == t1))
    out['dls'] = dls
    return out

def _values(learn):
    return dict(modes=[m.training for m in learn.model.modules()],
                hypers=None if learn.opt is None else [{k: round(float(v), 10) for k, v in h.items()} for h in learn.opt.hypers])

def _params(learn): return torch.cat([p.detach().flatten() for p in learn.model.parameters()])

def _reset_for_next_fit(learn, init):
    "Same starting point for the following fit as a fresh Learner: initial weights, fresh optimizer, seeded RNGs"
    learn.model.load_state_dict(init)
    learn.opt = None
    for dl in learn.dls.loaders: dl.rng.seed(0)
    set_seed(0)

def _cleanup_warnings(ws): return [str(w.message) for w in ws if 'cleanup' in str(w.message)]


@pytest.fixture(scope='module')
def fresh_results(tmp_path_factory):
    "What the following fit gives on a fresh identical Learner, per callback and attachment (computed once)"
    cache = {}
    def get(name, attach):
        if (name, attach) not in cache:
            make_cb, make_learn, obs = CALLBACKS[name][:3]
            path = tmp_path_factory.mktemp(f'fresh_{name}_{attach}')
            cb = make_cb()
            learn = make_learn(_cbs(cb) if attach == 'learner' else None, path)
            _reset_for_next_fit(learn, {k: v.clone() for k, v in learn.model.state_dict().items()})
            _fit(learn, None if attach == 'learner' else _cbs(cb))
            cache[name, attach] = (np.array(learn.recorder.values, dtype=float), _params(learn), obs(cb, learn))
        return cache[name, attach]
    return get


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('attach', ATTACH)
@pytest.mark.parametrize('name', list(CALLBACKS))
def test_exit_path_matrix(name, attach, path, tmp_path, fresh_results):
    make_cb, make_learn, obs = CALLBACKS[name][:3]
    ctl_cbs = CALLBACKS[name][3]() if len(CALLBACKS[name]) > 3 else None
    # the control: the same Learner without the callback (or with plain fastai doing what it does by design), same exit path
    ctl = make_learn(ctl_cbs, tmp_path/'control')
    c0 = _state(ctl)
    _exit_path(ctl, path, None, attach)
    ctl_rel, ctl_val = _relative(c0, _state(ctl)), _values(ctl)

    cb = make_cb()
    learn = make_learn(_cbs(cb) if attach == 'learner' else None, tmp_path/'learn')
    init = {k: v.clone() for k, v in learn.model.state_dict().items()}
    s0 = _state(learn)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        _exit_path(learn, path, cb, attach)
    assert _cleanup_warnings(ws) == []
    rel, val = _relative(s0, _state(learn)), _values(learn)
    assert rel == ctl_rel
    assert val == ctl_val
    assert rel['same_loss'] and rel['same_cbs'] and rel['logger_same']
    assert not is_training_fit(learn)
    if isinstance(learn.loss_func, MultiLoss): assert learn.loss_func.last is None  # no batch tensor kept after fit

    # the following fit, from the same start as a fresh identical Learner
    _reset_for_next_fit(learn, init)
    if isinstance(learn.loss_func, MultiLoss): learn.loss_func.set_weight('seq', 'counts', 2.)  # λ carried over by design
    for c in _cbs(cb):
        if hasattr(c, 'lines'): c.lines = 0
        if isinstance(c, AdaptiveCountsWeight): c.n_updates = 0  # so is its update count (the damping step)
        if type(c).__name__ == 'FDS': c.reset()  # FDS keeps its feature statistics across fits by design (`reset` is documented)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        _fit(learn, None if attach == 'learner' else _cbs(cb))
    assert _cleanup_warnings(ws) == []
    vals, params, o = fresh_results(name, attach)
    np.testing.assert_allclose(np.array(learn.recorder.values, dtype=float), vals, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(_params(learn), params, rtol=1e-5, atol=1e-6)
    assert obs(cb, learn) == o
    if attach == 'fit': assert not any(c in learn.cbs for c in _cbs(cb))


# ---- the defects of issue 10 this file pins down, one test each ----

class RaiseAfterEpoch(Callback):
    order = 90
    def after_epoch(self):
        if self.epoch == 0: raise RuntimeError('after epoch')

@pytest.mark.parametrize('attach', ATTACH)
def test_adaptive_lambda_of_the_epoch_that_raised_is_kept(attach, tmp_path):
    cb = AdaptiveCountsWeight({'seq': .2}, init=None)
    learn = _multi([cb] if attach == 'learner' else None, tmp_path)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        with pytest.raises(RuntimeError, match='after epoch'): _fit(learn, [RaiseAfterEpoch()] + ([cb] if attach == 'fit' else []))
    assert _cleanup_warnings(ws) == []
    assert learn.loss_func.weight('seq', 'counts') == pytest.approx(cb.lambda_history[-1]['next_lambda_seq'])
    assert cb.lambda_history[-1]['next_lambda_seq'] != 2.
    assert learn.loss_func.last is None


@pytest.mark.parametrize('attach', ATTACH)
def test_show_graph_draws_the_epoch_early_stopping_ended(attach, tmp_path):
    cb = ShowGraph(mode='file', figsize=(2, 2), plot_metrics=False)
    # patience 0 with a huge min_delta: stops after the 2nd epoch, in `after_epoch`, before ShowGraph (order 65) sees it
    es = EarlyStoppingCallback(min_delta=1e9, patience=0)
    learn = _plain([cb, es] if attach == 'learner' else [es], tmp_path)
    _fit(learn, None if attach == 'learner' else [cb], n=5)
    n_epochs = len(learn.recorder.values)
    assert n_epochs < 5
    assert len(cb.vy) == n_epochs and len(cb.ys) == len(learn.recorder.losses)


def _emitted(capsys, learn, cb, logging_on):
    with learn.no_bar():
        if logging_on: learn.fit(1, cbs=cb)
        else:
            with learn.no_logging(): learn.fit(1, cbs=cb)
    return capsys.readouterr()

def test_epoch_log_respects_no_logging(tmp_path, capsys):
    learn = _plain(None, tmp_path)
    cb = EpochLog()
    out = _emitted(capsys, learn, cb, logging_on=False)
    assert cb.lines == 0 and 'epoch 1/1' not in out.err


def test_epoch_log_no_double_print(tmp_path, capsys):
    "Progress bar off, logging on: each epoch once on the console (EpochLog's line in place of fastai's bare list)"
    learn = _plain(None, tmp_path)
    out = _emitted(capsys, learn, None, logging_on=True)
    assert out.out.count("[0, ") == 1  # without EpochLog: fastai's list
    cb = EpochLog()
    out = _emitted(capsys, learn, cb, logging_on=True)
    assert out.out == '' and out.err.count('epoch 1/1 | train_loss') == 1 and cb.lines == 1
    assert learn.logger is print
    # to a logger, fastai's list stays where it was
    cb2 = EpochLog(to=logging.getLogger('tsai_cbs.test_lifecycle.double'))
    out = _emitted(capsys, learn, cb2, logging_on=True)
    assert cb2.lines == 1 and out.out.count("[0, ") == 1


def test_warnings_on_rank0_only(monkeypatch):
    monkeypatch.setenv('RANK', '1')
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        warn0('not on rank 1')
    assert ws == []
    monkeypatch.setenv('RANK', '0')
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        assert warn0('rank 0 says it', once='test_lifecycle.once') and not warn0('again', once='test_lifecycle.once')
    assert [str(w.message) for w in ws] == ['rank 0 says it']


def test_callback_warnings_on_rank0_only(monkeypatch):
    "A callback's warning (here AdaptiveCountsWeight's rule on degenerate losses) is given on rank 0 only"
    from tsai_cbs.adaptive_loss import adaptive_lambda
    for rank, n in (('1', 0), ('0', 1)):
        monkeypatch.setenv('RANK', rank)
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter('always')
            assert adaptive_lambda(1., float('nan'), 1., .5, .3, 0)[0] == 1.
        assert len([w for w in ws if 'adaptive counts weight' in str(w.message)]) == n


def test_is_training_fit_in_nested_validate(tmp_path):
    "A `validate` called by a callback during a fit (its `before_fit` too) is not a training fit; the fit is again after it"
    seen = []
    class Nested(Callback):
        order = 90
        def before_fit(self): seen.append(('before_fit', is_training_fit(self.learn)))
        def after_epoch(self):
            if len(seen) == 1:  # once: the nested validate sends after_epoch too
                seen.append(None)
                self.learn.validate()
                seen.append(('back', is_training_fit(self.learn)))
    learn = _plain([Nested()], tmp_path)
    _fit(learn, n=1)
    assert seen == [('before_fit', True), None, ('before_fit', False), ('back', True)]
    assert not is_training_fit(learn)


def weird(inp, targ):
    "A metric whose name says nothing of its direction (SaveModel's mode='auto' warns)"
    return (inp - targ).abs().mean()

# callback's warnings met in a fit -> (a Learner and the callbacks for that fit, the words of the warnings)
RANK_WARNINGS = {
    'SaveModel': (lambda path: _plain([SaveModel(monitor='weird')], path, metrics=weird), ["mode='auto' cannot tell"]),
    'TransformScheduler': (lambda path: _plain([TransformScheduler(lambda p: 1 - p / 2)], path,
                                               after_batch=Pipeline([Magnitude(.1), Transform(lambda x: x)])), ['not scheduled']),
}

@pytest.mark.parametrize('name', sorted(RANK_WARNINGS))
def test_callback_fit_warnings_on_rank0_only(name, tmp_path, monkeypatch):
    "The warnings a callback gives during a fit are given on rank 0 only: the same fit is silent with RANK=1"
    make, words = RANK_WARNINGS[name]
    # rank 0 first, in one folder: as in DDP, rank 1 loads the checkpoint rank 0 writes and writes nothing itself
    for rank, n in (('0', 1), ('1', 0)):
        monkeypatch.setenv('RANK', rank)
        reset_once()  # each rank is a process of its own: its once-only messages are its own
        learn = make(tmp_path)
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter('always')
            _fit(learn, n=1)
        msgs = [str(w.message) for w in ws if name in str(w.message)]
        assert len(msgs) == n and all(any(k in m for k in words) for m in msgs), (rank, msgs)


@pytest.mark.parametrize('how', ['interrupt', 'error'])
def test_fastai_trackers_on_again_after_interrupted_lr_find(how, tmp_path):
    "fastai's trackers set `run = False` in lr_find and only `after_fit` puts it back: the guarded fit does it after an exception"
    es = EarlyStoppingCallback(patience=5)
    learn = _plain([es], tmp_path)
    with learn.added_cbs(Killer(how, in_lr_find=True)):
        with pytest.raises(KeyboardInterrupt if how == 'interrupt' else RuntimeError): learn.lr_find(num_it=6, show_plot=False)
    assert es.run
    _fit(learn, n=1)
    assert math.isfinite(es.best) and es.best == pytest.approx(learn.recorder.values[-1][1])
