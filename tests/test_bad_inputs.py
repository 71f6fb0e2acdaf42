"""Bad input across the public API: constructor and function arguments, and data met during `fit`.

Every case is a `ValueError`/`TypeError`/`OSError` whose message names the parameter (or the file), raised before anything
changes: for `fit` cases the model's parameters and buffers, the optimizer (no step), the loss function (identity and
reduction), the callbacks, the DataLoaders and the transforms are as they were, and the Learner has no attribute that plain
fastai's own `fit` would not have set. Where plain fastai without the callback accepts the situation (a training
DataLoader with no batch, an empty validation set), the callback gives exactly plain fastai's result instead."""
import math, warnings
import numpy as np
import pytest, torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from fastai.callback.core import Callback
from fastai.callback.tracker import EarlyStoppingCallback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner
from fastai.losses import MSELossFlat
from fastai.optimizer import Adam
from fastai.torch_core import set_seed
from fasttransform import Transform
from fastai.callback.schedule import SchedLin
from tsai_cbs.all import *
from tsai_cbs.testing import synth_learner
from tsai_cbs.fds import FDS, fds_kernel_window
from tsai_cbs.metrics import shot_regions, dir_metrics, dir_scores

N_LABELS = np.random.default_rng(0).normal(size=200)

class Mag(Transform):
    "A batch transform with a `magnitude` (inputs scaled by 1 + magnitude * noise)"
    def __init__(self, magnitude=.5): super().__init__(); self.magnitude = magnitude
    def encodes(self, x:torch.Tensor): return x * (1 + self.magnitude * 0.01) if x.ndim == 3 else x

# --- constructor and function arguments ---------------------------------------------------------------------------

def _mloss(): return MultiLoss({'seq': {'profile': profile_nll, 'counts': counts_mse}})

ARGS = [
    # BatchSubsampler
    ('BatchSubsampler sample_pct=0', lambda: BatchSubsampler(sample_pct=0), ValueError, 'sample_pct'),
    ('BatchSubsampler sample_pct=1.5', lambda: BatchSubsampler(sample_pct=1.5), ValueError, 'sample_pct'),
    ('BatchSubsampler sample_pct str', lambda: BatchSubsampler(sample_pct='half'), TypeError, 'sample_pct'),
    ('BatchSubsampler step_pct reversed range', lambda: BatchSubsampler(step_pct=(.8, .2)), ValueError, 'step_pct'),
    ('BatchSubsampler update_y without step_pct', lambda: BatchSubsampler(sample_pct=.5, update_y=True), ValueError, 'update_y'),
    ('BatchSubsampler seed=-1', lambda: BatchSubsampler(sample_pct=.5, seed=-1), ValueError, 'seed'),
    ('BatchSubsampler same_seq_len str', lambda: BatchSubsampler(step_pct=.5, same_seq_len='yes'), TypeError, 'same_seq_len'),
    # WeightedPerSampleLoss
    ('WeightedPerSampleLoss empty', lambda: WeightedPerSampleLoss([]), ValueError, 'instance_weights'),
    ('WeightedPerSampleLoss NaN weight', lambda: WeightedPerSampleLoss([1., math.nan, 2.]), ValueError, 'instance_weights'),
    ('WeightedPerSampleLoss inf weight', lambda: WeightedPerSampleLoss(torch.tensor([1., math.inf])), ValueError, 'instance_weights'),
    ('WeightedPerSampleLoss negative weight', lambda: WeightedPerSampleLoss(np.array([1., -1.])), ValueError, 'instance_weights'),
    ('WeightedPerSampleLoss all zero', lambda: WeightedPerSampleLoss([0., 0.]), ValueError, 'instance_weights'),
    ('WeightedPerSampleLoss str', lambda: WeightedPerSampleLoss('abc'), TypeError, 'instance_weights'),
    ('WeightedPerSampleLoss ragged', lambda: WeightedPerSampleLoss([[1., 2.], [3.]]), TypeError, 'instance_weights'),
    # LDSWeightedLoss / LDS functions
    ('LDSWeightedLoss no labels nor bins', lambda: LDSWeightedLoss(), ValueError, 'labels'),
    ('LDSWeightedLoss bins not LDSBins', lambda: LDSWeightedLoss(bins='table'), TypeError, 'bins'),
    ('LDSWeightedLoss unknown reweight', lambda: LDSWeightedLoss(N_LABELS, reweight='sqrt'), ValueError, 'reweight'),
    ('get_lds_kernel_window unknown kernel', lambda: get_lds_kernel_window('box'), ValueError, 'lds_kernel'),
    ('get_lds_kernel_window even lds_ks', lambda: get_lds_kernel_window(lds_ks=4), ValueError, 'lds_ks'),
    ('get_lds_kernel_window lds_sigma=0', lambda: get_lds_kernel_window(lds_sigma=0), ValueError, 'lds_sigma'),
    ('prepare_LDS_weights empty labels', lambda: prepare_LDS_weights([], show_plot=False), ValueError, 'labels'),
    ('prepare_LDS_weights NaN label', lambda: prepare_LDS_weights([1., math.nan, 2.], n_bins=3, show_plot=False), ValueError, 'labels'),
    ('prepare_LDS_weights n_bins=0', lambda: prepare_LDS_weights(N_LABELS, n_bins=0, show_plot=False), ValueError, 'n_bins'),
    ('prepare_LDS_weights reversed label_range', lambda: prepare_LDS_weights(N_LABELS, 10, label_range=(5, 1), show_plot=False), ValueError, 'label_range'),
    ('prepare_LDS_weights max_rel_weight=0', lambda: prepare_LDS_weights(N_LABELS, 10, max_rel_weight=0, show_plot=False), ValueError, 'max_rel_weight'),
    ('lds_bins 2-D labels', lambda: lds_bins(np.ones((10, 2)), n_bins=4), ValueError, 'labels'),
    # SaveModel
    ('SaveModel monitor int', lambda: SaveModel(monitor=3), TypeError, 'monitor'),
    ('SaveModel unknown mode', lambda: SaveModel(mode='best'), ValueError, 'mode'),
    ('SaveModel every_epoch=-1', lambda: SaveModel(every_epoch=-1), ValueError, 'every_epoch'),
    ('SaveModel every_epoch with at_end', lambda: SaveModel(every_epoch=2, at_end=True), ValueError, 'at_end'),
    ('SaveModel save_top_k=-2', lambda: SaveModel(save_top_k=-2), ValueError, 'save_top_k'),
    ('SaveModel unknown save_as', lambda: SaveModel(save_as='onnx'), ValueError, 'save_as'),
    ('SaveModel empty fname', lambda: SaveModel(fname=''), ValueError, 'fname'),
    ('SaveModel NaN min_delta', lambda: SaveModel(min_delta=math.nan), ValueError, 'min_delta'),
    # MultiLoss / MultiLossCallback
    ('MultiLoss no heads', lambda: MultiLoss({}), ValueError, 'terms'),
    ('MultiLoss term not callable', lambda: MultiLoss({'seq': {'profile': 3}}), TypeError, 'profile'),
    ('MultiLoss head not an identifier', lambda: MultiLoss({'my seq': {'profile': profile_nll}}), ValueError, 'my seq'),
    ('MultiLoss weights of unknown head', lambda: MultiLoss({'seq': {'profile': profile_nll}}, weights={'chip': {'profile': 1.}}), ValueError, 'weights'),
    ('MultiLoss negative weight', lambda: MultiLoss({'seq': {'profile': profile_nll}}, weights={'seq': {'profile': -1.}}), ValueError, 'weight of seq.profile'),
    ('MultiLoss preds of unknown head', lambda: MultiLoss({'seq': {'profile': profile_nll}}, preds={'chip': 0}), ValueError, 'preds'),
    ('MultiLossCallback train_mean str', lambda: MultiLossCallback(train_mean='yes'), TypeError, 'train_mean'),
    # AdaptiveCountsWeight / adaptive_callbacks / adaptive_lambda
    ('AdaptiveCountsWeight no targets', lambda: AdaptiveCountsWeight({}), ValueError, 'targets'),
    ('AdaptiveCountsWeight target 1', lambda: AdaptiveCountsWeight({'seq': 1.}), ValueError, 'targets'),
    ('AdaptiveCountsWeight aggression=2', lambda: AdaptiveCountsWeight({'seq': .3}, aggression=2), ValueError, 'aggression'),
    ('AdaptiveCountsWeight unknown init', lambda: AdaptiveCountsWeight({'seq': .3}, init='guess'), ValueError, 'init'),
    ('AdaptiveCountsWeight init of unknown head', lambda: AdaptiveCountsWeight({'seq': .3}, init={'chip': 1.}), ValueError, 'init'),
    ('AdaptiveCountsWeight n_batches=0', lambda: AdaptiveCountsWeight({'seq': .3}, n_batches=0), ValueError, 'n_batches'),
    ('adaptive_callbacks early_stop=0', lambda: adaptive_callbacks({'seq': .3}, early_stop=0), ValueError, 'early_stop'),
    ('adaptive_callbacks unknown checkpoint', lambda: adaptive_callbacks({'seq': .3}, checkpoint='keras'), ValueError, 'checkpoint'),
    ('adaptive_callbacks lr_factor=1', lambda: adaptive_callbacks({'seq': .3}, lr_factor=1), ValueError, 'lr_factor'),
    ('adaptive_lambda t=1', lambda: adaptive_lambda(1., 1., 1., 1., .3, 0), ValueError, 't'),
    ('adaptive_lambda lam0=0', lambda: adaptive_lambda(0., 1., 1., .3, .3, 0), ValueError, 'lam0'),
    # EpochLog / ShowGraph / plot_metrics / TransformScheduler / StopAfter
    ('EpochLog to int', lambda: EpochLog(to=3), TypeError, 'to'),
    ('EpochLog every_n_batches=-1', lambda: EpochLog(every_n_batches=-1), ValueError, 'every_n_batches'),
    ('EpochLog fmt not a number format', lambda: EpochLog(fmt='{:q}'), ValueError, 'fmt'),
    ('ShowGraph perc=2', lambda: ShowGraph(perc=2), ValueError, 'perc'),
    ('ShowGraph figsize with 0', lambda: ShowGraph(figsize=(0, 3)), ValueError, 'figsize'),
    ('ShowGraph unknown mode', lambda: ShowGraph(mode='inline'), ValueError, 'mode'),
    ('plot_metrics of a Learner', lambda: plot_metrics(synth_learner()), TypeError, 'recorder'),
    ('recorder_table of a str', lambda: recorder_table('recorder'), TypeError, 'recorder'),
    ('TransformScheduler schedule_func number', lambda: TransformScheduler(.5), TypeError, 'schedule_func'),
    ('TransformScheduler attr not a name', lambda: TransformScheduler(SchedLin(1., 2.), attr='a b'), ValueError, 'attr'),
    ('TransformScheduler empty fname', lambda: TransformScheduler(SchedLin(1., 2.), fname=' '), ValueError, 'fname'),
    ('StopAfter max_batches=0', lambda: StopAfter(max_batches=0), ValueError, 'max_batches'),
    ('StopAfter max_epochs=1.5', lambda: StopAfter(max_epochs=1.5), (ValueError, TypeError), 'max_epochs'),
    ('StopAfter nothing to stop on', lambda: StopAfter(), ValueError, 'max_batches'),
    # multi-head loss terms: shapes
    ('profile_nll logits and counts of other shapes', lambda: profile_nll(torch.randn(4, 10), torch.ones(4, 11)), ValueError, 'profile_nll.*shape'),
    ('counts_mse two values per sample', lambda: counts_mse(torch.randn(4, 2), torch.ones(4, 10)), ValueError, 'counts_mse.*per sample'),
    # FDS / DIR metrics
    ('FDS even ks', lambda: FDS(labels=N_LABELS, ks=4), ValueError, 'ks'),
    ('FDS momentum=2', lambda: FDS(labels=N_LABELS, momentum=2), ValueError, 'momentum'),
    ('FDS unknown kernel', lambda: FDS(labels=N_LABELS, kernel='box'), ValueError, 'kernel'),
    ('FDS unknown feature', lambda: FDS(labels=N_LABELS, feature='hidden'), ValueError, 'feature'),
    ('FDS start_smooth=-1', lambda: FDS(labels=N_LABELS, start_smooth=-1), ValueError, 'start_smooth'),
    ('fds_kernel_window sigma=0', lambda: fds_kernel_window(sigma=0), ValueError, 'sigma'),
    ('shot_regions few above many', lambda: shot_regions(N_LABELS, many_shot_thr=10, few_shot_thr=20), ValueError, 'few_shot_thr'),
    ('shot_regions NaN label', lambda: shot_regions([1., math.nan]), ValueError, 'labels'),
    ('dir_metrics unknown name', lambda: dir_metrics(N_LABELS, names=('mea',)), ValueError, 'names'),
    ('dir_metrics without labels or regions', lambda: dir_metrics(), ValueError, 'train_labels'),
    ('dir_scores preds and targets of other lengths', lambda: dir_scores(torch.randn(5), torch.randn(6), shot_regions(N_LABELS)), ValueError, 'preds'),
    # files
    ('load_checkpoint missing file', lambda: load_checkpoint('no/such/model.pth'), OSError, r'no/such/model\.pth'),
]

@pytest.mark.parametrize('make,exc,match', [pytest.param(*a[1:], id=a[0]) for a in ARGS])
def test_bad_argument(make, exc, match):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with pytest.raises(exc, match=match): make()

def test_truncated_checkpoint_names_the_file(in_tmp):
    learn = synth_learner(path=in_tmp)
    f = learn.save('m')
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match=r'm\.pth cannot be read, it is damaged'): load_checkpoint(f)

# --- data met during fit: an error before anything changes ---------------------------------------------------------

def _plain_fit_keys():
    "Attributes plain fastai's own `fit` sets on a Learner and its DataLoaders up to the first step (allowed after a failed fit)"
    class Stop(Callback):
        def before_step(self): raise ValueError('stop')
    learn = synth_learner()
    before, dl_before = set(learn.__dict__), [set(dl.__dict__) for dl in learn.dls.loaders]
    with pytest.raises(ValueError), learn.no_bar(), learn.no_logging(): learn.fit(1, cbs=Stop())
    return set(learn.__dict__) - before, set.union(*[set(dl.__dict__) - b for dl, b in zip(learn.dls.loaders, dl_before)])

class Snapshot:
    "What must be unchanged after a `fit` that raised on bad input"
    def __init__(self, learn, tfms=()):
        m = learn.model
        self.state = {k: v.detach().clone() for k, v in m.state_dict().items()}
        self.training, self.lf = m.training, learn.loss_func
        self.red = getattr(learn.loss_func, 'reduction', None)
        self.weights = learn.loss_func.weights if isinstance(learn.loss_func, MultiLoss) else None
        self.cbs = self._cbs(learn)
        self.keys = set(learn.__dict__)
        self.dl_keys = [set(dl.__dict__) for dl in learn.dls.loaders]
        self.dl_fns = [(dl.__dict__.get('get_idxs'), dl.__dict__.get('after_batch')) for dl in learn.dls.loaders]
        self.tfms = [(t, dict(t.__dict__)) for t in tfms]
    @staticmethod
    def _cbs(learn): return [c for c in learn.cbs if type(c).__name__ != 'ProgressCallback']  # `no_bar` puts a new one back
    def check(self, learn, allowed):
        m = learn.model
        st = m.state_dict()
        assert st.keys() == self.state.keys() and all(torch.equal(st[k], v) for k, v in self.state.items()), 'the model changed'
        assert learn.opt is None or not any('step' in learn.opt.state.get(p, {}) for p in m.parameters()), 'an optimizer step was taken'
        assert m.training == self.training
        assert learn.loss_func is self.lf and getattr(learn.loss_func, 'reduction', None) == self.red
        if self.weights is not None: assert learn.loss_func.weights == self.weights, 'loss weights (λ) changed'
        assert self._cbs(learn) == self.cbs
        extra = set(learn.__dict__) - self.keys - allowed[0]
        assert not extra, f'attributes left on the Learner: {extra}'
        assert [set(dl.__dict__) - allowed[1] for dl in learn.dls.loaders] == [k - allowed[1] for k in self.dl_keys]
        assert [(dl.__dict__.get('get_idxs'), dl.__dict__.get('after_batch')) for dl in learn.dls.loaders] == self.dl_fns
        for t, d in self.tfms: assert t.__dict__ == d, f'{type(t).__name__} changed'

@pytest.fixture(scope='module')
def allowed(): return _plain_fit_keys()

class Heads2(nn.Module):
    "Two heads' profiles stacked in ONE tensor (bs, L): the wrong output for a two-head MultiLoss"
    def __init__(self, L=32): super().__init__(); self.lin = nn.Linear(3 * 32, L)
    def forward(self, x): return self.lin(x.flatten(1))

def _ml_learner(cbs=(), model=None, heads=1, terms=None, bs=32, path='.'):
    set_seed(0)
    X = torch.randn(160, 3, 32)
    Ys = [torch.poisson(torch.exp(X[:, i] + 1)) for i in range(heads)]
    def ds(s):
        d = TensorDataset(X[s], *[y[s] for y in Ys]); d.n_inp = 1
        return d
    dls = DataLoaders(DataLoader(ds(slice(0, 128)), bs=bs, shuffle=True), DataLoader(ds(slice(128, None)), bs=bs))
    names = ['seq', 'chip'][:heads]
    terms = terms or {h: {'profile': profile_nll, 'counts': counts_mse} for h in names}
    class PC(nn.Module):
        def __init__(self):
            super().__init__(); self.body = nn.Conv1d(3, 8, 5, padding=2); self.prof, self.cnt = nn.Conv1d(8, heads, 1), nn.Linear(8, heads)
        def forward(self, x):
            h = torch.relu(self.body(x)); p, c = self.prof(h), self.cnt(h.mean(-1))
            outs = [(p[:, i], c[:, i]) for i in range(heads)]
            return outs[0] if heads == 1 else tuple(outs)
    return Learner(dls, model or PC(), loss_func=MultiLoss(terms), opt_func=Adam, lr=1e-2, cbs=list(cbs), path=path)

def _lds_learner(cbs, y_fill=None, **kw):
    learn = synth_learner(cbs=cbs, **kw)
    if y_fill is not None:
        ds = learn.dls.train.dataset
        ds.tensors[1][5] = y_fill  # one bad target among the training items
    return learn

class _ShortProfile(nn.Module):
    "A (profile, counts) head whose profile is 16 steps long, for targets of 32"
    def __init__(self): super().__init__(); self.lin = nn.Linear(3 * 32, 17)
    def forward(self, x): o = self.lin(x.flatten(1)); return o[:, :16], o[:, 16]

class _Flat(nn.Module):
    def __init__(self): super().__init__(); self.lin = nn.Linear(10, 1)
    def forward(self, x): return self.lin(x).squeeze(-1)

def _flat_learner(cbs):
    "Tabular-like 2-D inputs (bs, features): no step dimension"
    set_seed(0)
    X, y = torch.randn(96, 10), torch.randn(96)
    dls = DataLoaders(DataLoader(TensorDataset(X[:64], y[:64]), bs=16, shuffle=True), DataLoader(TensorDataset(X[64:], y[64:]), bs=16))
    return Learner(dls, _Flat(), loss_func=MSELossFlat(), cbs=cbs)

def _truncated(tmp):
    f = tmp/'cut.pth'
    torch.save({'model': {'w': torch.zeros(1000)}}, f)
    f.write_bytes(f.read_bytes()[:200])
    return f

def _file(tmp):
    p = tmp/'a_file'
    p.write_text('not a folder')
    return p

def _loss_no_reduction(pred, targ): return F.mse_loss(pred, targ)

class _IgnoresReduction(nn.Module):
    reduction = 'mean'
    def forward(self, pred, targ): return F.mse_loss(pred, targ)  # always reduced

FIT = [
    # (id, make(tmp) -> (learn, transforms to watch), exception, match)
    ('WeightedPerSampleLoss wrong number of weights', lambda t: (synth_learner(cbs=WeightedPerSampleLoss(torch.ones(300))), ()), ValueError, 'instance_weights'),
    ('WeightedPerSampleLoss zero on every training item', lambda t: (synth_learner(cbs=WeightedPerSampleLoss(torch.cat([torch.zeros(256), torch.ones(64)]))), ()), ValueError, 'instance_weights'),
    ('WeightedPerSampleLoss loss without reduction', lambda t: (synth_learner(loss_func=_loss_no_reduction, cbs=WeightedPerSampleLoss(torch.ones(256))), ()), ValueError, 'loss_func'),
    ("WeightedPerSampleLoss loss with reduction='none'", lambda t: (synth_learner(loss_func=MSELossFlat(reduction='none'), cbs=WeightedPerSampleLoss(torch.ones(256))), ()), ValueError, 'loss_func'),
    ('WeightedPerSampleLoss loss that ignores its reduction', lambda t: (synth_learner(loss_func=_IgnoresReduction(), cbs=WeightedPerSampleLoss(torch.ones(256))), ()), ValueError, 'loss_func'),
    ('two per-sample weighting callbacks', lambda t: (synth_learner(cbs=[WeightedPerSampleLoss(torch.ones(256)), LDSWeightedLoss(torch.randn(256))]), ()), ValueError, 'per-sample'),
    ('MultiLoss two heads, one (bs, L) tensor with L == bs', lambda t: (_ml_learner(model=Heads2(32), heads=2, terms={h: {'mse': lambda p, y: F.mse_loss(p, y.float())} for h in ('seq', 'chip')}), ()), TypeError, 'one tensor'),
    ('MultiLoss term returns a vector', lambda t: (_ml_learner(terms={'seq': {'bad': lambda p, y: (p[0] - y.float().mean(-1, keepdim=True)).mean(-1)}}), ()), ValueError, 'seq.bad'),
    ('MultiLoss profile logits shorter than the target counts', lambda t: (_ml_learner(model=_ShortProfile()), ()), ValueError, 'profile_nll'),
    ('MultiLossCallback without a MultiLoss', lambda t: (synth_learner(cbs=MultiLossCallback()), ()), TypeError, 'loss_func'),
    ('AdaptiveCountsWeight unknown head', lambda t: (_ml_learner([AdaptiveCountsWeight({'chip': .3})]), ()), ValueError, 'targets'),
    ('AdaptiveCountsWeight unknown term', lambda t: (_ml_learner([AdaptiveCountsWeight({'seq': .3}, term='count')]), ()), ValueError, 'term'),
    ("adaptive_callbacks(monitor='valid_los')", lambda t: (_ml_learner(adaptive_callbacks({'seq': .3}, monitor='valid_los', log_to=False), path=t), ()), ValueError, 'valid_los'),
    ('BatchSubsampler step_pct on 2-D inputs', lambda t: (_flat_learner(BatchSubsampler(step_pct=.5)), ()), ValueError, 'step_pct'),
    ('BatchSubsampler update_y on 1-D targets', lambda t: (synth_learner(cbs=BatchSubsampler(step_pct=.5, update_y=True)), ()), ValueError, 'update_y'),
    ('two BatchSubsamplers', lambda t: (synth_learner(cbs=[BatchSubsampler(sample_pct=.5), BatchSubsampler(sample_pct=.5)]), ()), ValueError, 'BatchSubsampler'),
    ("TransformScheduler attr='magnitud'", lambda t: (lambda m: (synth_learner(after_batch=m, cbs=TransformScheduler(SchedLin(1., 2.), attr='magnitud')), (m,)))(Mag()), ValueError, 'magnitud'),
    ('TransformScheduler NaN in the schedule', lambda t: (lambda m: (synth_learner(after_batch=m, cbs=TransformScheduler(lambda p: math.nan if p > .9 else 1.)), (m,)))(Mag()), ValueError, 'schedule_func'),
    ('TransformScheduler plot file under a file', lambda t: (lambda m: (synth_learner(after_batch=m, path=t, cbs=TransformScheduler(SchedLin(1., 2.), show_plot=True, fname=_file(t)/'s.png')), (m,)))(Mag()), OSError, 'a_file'),
    ("SaveModel monitor='valid_los'", lambda t: (synth_learner(path=t, cbs=SaveModel(monitor='valid_los')), ()), ValueError, 'valid_los'),
    ('SaveModel fname with an unknown field', lambda t: (synth_learner(path=t, cbs=SaveModel(fname='m_{accurracy}')), ()), ValueError, 'accurracy'),
    ('SaveModel folder under a file', lambda t: (synth_learner(path=_file(t), cbs=SaveModel()), ()), OSError, 'a_file'),
    ('SaveModel resume from a truncated file', lambda t: (synth_learner(path=t, cbs=SaveModel(resume=str(_truncated(t)))), ()), ValueError, 'cut.pth'),
    ('SaveModel resume from a missing file', lambda t: (synth_learner(path=t, cbs=SaveModel(resume=str(t/'gone.pth'))), ()), (OSError, ValueError), 'gone.pth'),
    ('ShowGraph figure under a file', lambda t: (synth_learner(path=t, cbs=ShowGraph(fname=_file(t)/'g.png', mode='file')), ()), OSError, 'a_file'),
    ('EarlyStopping next to AdaptiveCountsWeight monitors an unknown name', lambda t: (_ml_learner([AdaptiveCountsWeight({'seq': .3}), EarlyStoppingCallback(monitor='valid_seq_profil_loss')]), ()), ValueError, 'valid_seq_profil_loss'),
]

_DEFAULT_CBS = ('TrainEvalCallback', 'Recorder', 'CastToTensor', 'ProgressCallback')

@pytest.mark.parametrize('attach', ['Learner', 'fit'])
@pytest.mark.parametrize('make,exc,match', [pytest.param(*a[1:], id=a[0]) for a in FIT])
def test_bad_data_in_fit(in_tmp, allowed, make, exc, match, attach):
    "The same error and the same untouched Learner whether the callbacks are given to `Learner(cbs=)` or to `fit(cbs=)`"
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn, tfms = make(in_tmp)
        extra = [c for c in learn.cbs if type(c).__name__ not in _DEFAULT_CBS] if attach == 'fit' else []
        learn.remove_cbs(extra)
        snap = Snapshot(learn, tfms)
        with pytest.raises(exc, match=match):
            with learn.no_bar(), learn.no_logging(): learn.fit(2, cbs=extra)
    snap.check(learn, allowed)
    assert not [f for f in in_tmp.rglob('*.pth') if f.name != 'cut.pth'] and not list(in_tmp.rglob('*.png')), 'a file was written'

# --- where plain fastai accepts the situation: exactly plain fastai's result ------------------------------------

def _run(cbs, y5=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn = _lds_learner(cbs, y5, **kw)
        with learn.no_bar(), learn.no_logging(): learn.fit(2)
    return learn

def _same_as_plain(learn, plain):
    a, b = np.array(learn.recorder.values, dtype=float), np.array(plain.recorder.values, dtype=float)
    np.testing.assert_equal(a, b)
    for p, q in zip(learn.model.parameters(), plain.model.parameters()): np.testing.assert_equal(p.detach().numpy(), q.detach().numpy())

ZERO_BATCH = dict(n_train=8, bs=16, drop_last=True)  # `drop_last` with fewer training items than `bs`: no training batch
EMPTY_VALID = dict(n_valid=0)

PLAIN = [
    ('WeightedPerSampleLoss, no training batch', lambda: [WeightedPerSampleLoss(torch.ones(8))], ZERO_BATCH),
    ('LDSWeightedLoss, no training batch', lambda: [LDSWeightedLoss(torch.randn(8))], ZERO_BATCH),
    ('BatchSubsampler, no training batch', lambda: [BatchSubsampler(sample_pct=.5)], ZERO_BATCH),
    ('TransformScheduler, no training batch', lambda: [TransformScheduler(SchedLin(1., 2.))], dict(ZERO_BATCH, after_batch=Mag())),
    ('StopAfter, no training batch', lambda: [StopAfter(max_batches=3)], ZERO_BATCH),
    ('EpochLog, no training batch', lambda: [EpochLog()], ZERO_BATCH),
    ('SaveModel, no training batch', lambda: [SaveModel()], ZERO_BATCH),
    # a NaN target: plain fastai's loss is NaN (and so are the weights after the step); the LDS weight of a NaN target is NaN
    ('LDSWeightedLoss, NaN target met in training', lambda: [LDSWeightedLoss(torch.randn(256))], dict(y5=math.nan)),
    ('LDSWeightedLoss, inf target met in training', lambda: [LDSWeightedLoss(torch.randn(256))], dict(y5=math.inf)),
    ('LDSWeightedLoss, -inf target met in training', lambda: [LDSWeightedLoss(torch.randn(256))], dict(y5=-math.inf)),
    ('WeightedPerSampleLoss, empty validation set', lambda: [WeightedPerSampleLoss(torch.ones(256))], EMPTY_VALID),
    ('StopAfter, empty validation set', lambda: [StopAfter(max_epochs=5)], EMPTY_VALID),
    # a constant multiplier of 1: the training is plain fastai's, with a schedule in place
    ('TransformScheduler, empty validation set', lambda: [TransformScheduler(SchedLin(1., 1.))], dict(EMPTY_VALID, after_batch=Mag())),
]

@pytest.mark.parametrize('cbs,kw', [pytest.param(*a[1:], id=a[0]) for a in PLAIN])
def test_as_plain_fastai(in_tmp, cbs, kw):
    kw = dict(kw, path=in_tmp)
    plain = _run([], **{k: (Mag() if k == 'after_batch' else v) for k, v in kw.items()})
    learn = _run(cbs(), **kw)
    _same_as_plain(learn, plain)

def test_table_size():
    "The issue asks for at least 60 bad inputs across the API"
    assert len(ARGS) + 1 + len(FIT) + len(PLAIN) >= 60
