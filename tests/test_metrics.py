"DIR metrics: the paper's numpy computation, fastai's Learner(metrics=...), trackers by name, and DDP (values over all samples)."
import json
import numpy as np
import pytest, torch
from fastai.learner import Learner
from tsai_cbs.metrics import *
from tsai_cbs.lds import lds_bins
from tsai_cbs.save_model import SaveModel
from tsai_cbs.testing import synth_learner, synth_dls, SynthModel, run_distributed

def _np_dir(preds, labels, train_labels, lo, hi, n_bins, many, few):
    "The DIR paper's evaluation (per-bin sums over test labels, regions from training counts), written out in numpy"
    def bin_of(y): return np.clip(np.floor((y - lo) / (hi - lo) * n_bins), 0, n_bins - 1).astype(int)
    tb, b = bin_of(train_labels), bin_of(labels)
    cnt = np.bincount(tb, minlength=n_bins)
    region = np.where(cnt > many, 'many', np.where(cnt < few, 'few', 'medium'))[b]
    e = np.abs(preds - labels)
    out = dict(mae=e.mean(), mse=(e ** 2).mean(), gm=float(np.exp(np.mean(np.log(e)))))
    for r in ('many', 'medium', 'few'):
        m = region == r
        out[f'{r}_mae'] = e[m].mean() if m.any() else np.nan
        out[f'{r}_mse'] = (e[m] ** 2).mean() if m.any() else np.nan
        out[f'{r}_gm'] = float(np.exp(np.mean(np.log(e[m])))) if m.any() else np.nan
    present = np.unique(b)
    out['balanced_mae'] = np.mean([e[b == k].mean() for k in present])
    out['balanced_mse'] = np.mean([(e[b == k] ** 2).mean() for k in present])
    return out

@pytest.mark.parametrize('seed', range(4))
def test_scores_match_numpy(seed):
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.gamma(2., 3., 3000), rng.uniform(0, 60, 20)])  # skewed, with a thin tail
    lo, hi = train.min(), train.max()
    test = rng.uniform(lo, hi, 500)
    preds = test + rng.normal(0, 2, 500)
    n_bins, many, few = 30, 150, 15
    regions = shot_regions(train, many_shot_thr=many, few_shot_thr=few, n_bins=n_bins)
    assert regions.rule == 'given' and all(v > 0 for v in regions.n_bins.values())
    bins = lds_bins(train, n_bins=n_bins)
    # our bin rule equals the plain one on these labels (none sits exactly on an edge)
    ref_bins = np.clip(np.floor((test - lo) / (hi - lo) * n_bins), 0, n_bins - 1)
    assert (bins.bin_index(torch.tensor(test)).numpy() == ref_bins).all()
    got = dir_scores(torch.tensor(preds, dtype=torch.float32), torch.tensor(test, dtype=torch.float32), regions)
    ref = _np_dir(preds.astype(np.float32).astype(float), test.astype(np.float32).astype(float), train, lo, hi, n_bins, many, few)
    assert set(got) == set(DIR_METRIC_NAMES)
    for k in DIR_METRIC_NAMES: assert got[k] == pytest.approx(ref[k], rel=1e-6, nan_ok=True), k

def test_small_data_rule_and_empty_region():
    train = np.repeat(np.arange(10.), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])  # integer labels: one bin each
    r = shot_regions(train)
    assert r.rule == 'small data' and r.bins.n_bins == 10
    # terciles of the counts 1..10: 4 and 7; > 7 many, < 4 few
    assert r.region.tolist() == [2, 2, 2, 1, 1, 1, 1, 0, 0, 0] and (r.many_thr, r.few_thr) == (7, 4)
    assert shot_regions(train, small_data=False).region.tolist() == [2] * 10
    # no test label in the many-shot region: its scores are NaN, the others are numbers
    s = dir_scores(torch.tensor([0.5, 1.5, 4.]), torch.tensor([0., 1., 5.]), r)
    assert np.isnan(s['many_mae']) and np.isnan(s['many_gm']) and s['few_mae'] == pytest.approx(.5)
    assert s['medium_mae'] == pytest.approx(1.) and s['balanced_mae'] == pytest.approx((.5 + .5 + 1) / 3)
    # an exact prediction makes the geometric mean 0, as scipy.stats.gmean
    assert dir_scores(torch.tensor([1., 2.]), torch.tensor([1., 3.]), r)['gm'] == 0.

def test_bad_inputs():
    y = np.arange(100.)
    with pytest.raises(ValueError, match='few_shot_thr'): shot_regions(y, many_shot_thr=5, few_shot_thr=10)
    with pytest.raises(TypeError, match='many_shot_thr'): shot_regions(y, many_shot_thr='100')
    with pytest.raises(TypeError, match='small_data'): shot_regions(y, small_data=1)
    with pytest.raises(ValueError, match='name'): DIRMetric('few', shot_regions(y))
    with pytest.raises(TypeError, match='regions'): DIRMetric('few_mae', 'regions')
    with pytest.raises(ValueError, match='names'): dir_metrics(y, names=['mae', 'MAE'])
    with pytest.raises(ValueError, match='names'): dir_metrics(y, names=[])
    with pytest.raises(ValueError, match='duplicates'): dir_metrics(y, names=['mae', 'mae'])
    with pytest.raises(ValueError, match='exactly one'): dir_metrics(y, regions=shot_regions(y))
    with pytest.raises(ValueError, match='preds'): dir_scores(torch.zeros(2), torch.zeros(3), shot_regions(y))

def test_learner_metrics_and_tracker(in_tmp):
    # 61 validation samples in batches of 16: the last batch is short
    dls = synth_dls(n_train=200, n_valid=61, bs=16)
    train_y = dls.train_ds.tensors[1]
    mets = dir_metrics(train_y, names='all')
    sm = SaveModel(monitor='few_mae', mode='min')
    learn = Learner(dls, SynthModel(), loss_func=torch.nn.MSELoss(), metrics=mets, path=in_tmp, cbs=sm)
    with learn.no_bar(), learn.no_logging(): learn.fit(3, 1e-2)
    names = learn.recorder.metric_names
    assert names[3:-1] == list(DIR_METRIC_NAMES)
    few = [row[names[1:].index('few_mae')] for row in learn.recorder.values]
    assert sm.best == min(few) and not np.isnan(sm.best)
    preds, targs = learn.get_preds()
    assert len(preds) == 61
    ref = dir_scores(preds, targs, shot_regions(train_y))
    got = learn.validate()[1:]
    for n, v in zip(DIR_METRIC_NAMES, got): assert v == pytest.approx(ref[n], rel=1e-5), n
    assert all(m.lower_is_better for m in mets)

def test_one_pass_shared(in_tmp):
    "The metrics of one set store each batch once and compute the scores once per validation"
    learn = synth_learner('regression', path=in_tmp)
    mets = dir_metrics(learn.dls.train_ds.tensors[1], names='all')
    learn.metrics = mets
    calls = []
    store = mets[0].store
    import tsai_cbs.metrics as M
    real = M.dir_scores
    M.dir_scores = lambda *a: calls.append(1) or real(*a)
    try:
        with learn.no_bar(), learn.no_logging(): learn.validate()
    finally: M.dir_scores = real
    assert len(calls) == 1 and all(m.store is store for m in mets)
    assert sum(len(p) for p in store.preds) == 64

DDP = '''
import json, os, torch
from fastai.learner import Learner
from tsai_cbs.testing import synth_dls, SynthModel, patch_distributed_dl_for_cpu
from tsai_cbs.metrics import dir_metrics, dir_scores, shot_regions, DIR_METRIC_NAMES
patch_distributed_dl_for_cpu()
torch.manual_seed(0)
dls = synth_dls(n_train=128, n_valid=61, bs=8)   # 61: DistributedDL pads the validation set on one rank
train_y = dls.train_ds.tensors[1]
learn = Learner(dls, SynthModel(), loss_func=torch.nn.MSELoss(), metrics=dir_metrics(train_y, names='all'))
with learn.distrib_ctx(cpu=True), learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
r = int(os.environ['RANK'])
res = dict(zip(DIR_METRIC_NAMES, learn.recorder.values[-1][2:]))
# the same weights on this process alone, over the whole validation set
X, y = dls.valid_ds.tensors
learn.model.eval()
with torch.no_grad(): preds = learn.model(X)
res['ref'] = dir_scores(preds, y, shot_regions(train_y))
open(f'rank{r}.json', 'w').write(json.dumps(res))
'''

def test_distributed_values_over_all_samples(in_tmp):
    res = run_distributed(DDP, nproc=2, cwd=in_tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (json.loads((in_tmp/f'rank{r}.json').read_text()) for r in (0, 1))
    for n in DIR_METRIC_NAMES:
        assert r0[n] == pytest.approx(r1[n], rel=1e-6, nan_ok=True), n  # the same on every rank
        assert r0[n] == pytest.approx(r0['ref'][n], rel=1e-5, nan_ok=True), n  # over all 61 samples, padding dropped
