"""Smoke test of the INSTALLED package (tests/run_all.sh runs it in a fresh virtual environment holding only the
wheel and its declared run-time dependencies): short real trainings with every callback (and metric) that
`tsai_cbs.all` exports, each checked to have done its work.

    python tests/wheel_smoke.py [--installed]  # from any folder; it works in a temporary folder it removes
                                               # --installed: fail if tsai_cbs is imported from the source tree

A new callback or metric exported by `tsai_cbs.all` needs a check here (`@exercises(...)`): the script fails while
one is not exercised. Not run under `learn.distrib_ctx()`: fastai's distributed training needs `accelerate`, which
is not a run-time dependency of tsai_cbs (a user who trains with DDP installs it, as fastai asks); the DDP behaviour
of every callback is tested by the test suite (`tsai_cbs.testing.run_distributed`). This script checks instead that
training without it never imports `fastai.distributed` or `accelerate`.
"""
import inspect, logging, os, sys, tempfile
from pathlib import Path
import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import SchedLin
from fastai.metrics import Metric
from fastai.losses import MSELossFlat
import tsai_cbs, tsai_cbs.all as tca
from tsai_cbs.all import *
from tsai_cbs.testing import synth_learner, synth_data

CHECKS = []
def exercises(*names):
    "Register a check that trains with the callbacks/metrics `names` of `tsai_cbs.all` and returns its Learners"
    def deco(f): CHECKS.append((names, f)); return f
    return deco

def fit(learn, n, log=False):
    with learn.no_bar():
        if log: learn.logger = lambda *a, **k: None; learn.fit(n)  # no rows printed, but not `no_logging`
        else:
            with learn.no_logging(): learn.fit(n)
    return learn

def plain_losses(pred, y): return ((pred - y) ** 2).view(len(y), -1).mean(1)  # MSELossFlat per sample

class LossProbe(Callback):
    "After each training loss: the loss is the batch mean of `weights(ids, y)` x each sample's plain loss"
    order = 100
    def __init__(self, X, weights): self.X, self.weights, self.n = X.flatten(1), weights, 0
    def after_loss(self):
        if not self.training: return
        m = (self.x.flatten(1)[:, None] == self.X[None]).all(-1)
        assert (m.sum(1) == 1).all()
        ids = m.float().argmax(1)
        want = (self.weights(ids, self.y) * plain_losses(self.pred, self.y)).mean()
        assert torch.allclose(self.loss, want, rtol=1e-5), (self.loss, want)
        self.n += 1

@exercises('WeightedPerSampleLoss', 'LDSWeightedLoss')
def per_sample_weights():
    X, y = synth_data(128 + 32, 'regression')
    w = torch.rand(128, generator=torch.Generator().manual_seed(1)) + .1
    wn = w / w.mean()  # weights are normalized to mean 1 over the training set
    probe = LossProbe(X[:128], lambda ids, y: wn[ids])
    crit = MSELossFlat()
    a = fit(synth_learner(n_train=128, n_valid=32, loss_func=crit, cbs=[WeightedPerSampleLoss(w), probe]), 1)
    assert probe.n == 4 and a.loss_func is crit  # every batch weighted; the loss put back
    bins = lds_bins(y[:128])
    assert torch.equal(prepare_LDS_weights(y[:128], show_plot=False), bins(y[:128]))
    probe = LossProbe(X[:128], lambda ids, yb: bins(yb))
    b = fit(synth_learner(n_train=128, n_valid=32, cbs=[LDSWeightedLoss(y[:128]), probe]), 1)
    assert probe.n == 4 and bins(y[:128]).std() > 0.1  # weights that really differ between samples
    return a, b

@exercises('BatchSubsampler')
def subsampler():
    class Sizes(Callback):
        order = 100
        def before_fit(self): self.seen = set()
        def after_pred(self): self.seen.add((self.training, tuple(self.x.shape)))
    sizes = Sizes()
    learn = fit(synth_learner(n_train=128, n_valid=32, cbs=[BatchSubsampler(sample_pct=.5, step_pct=.25, same_seq_len=False, seed=0), sizes]), 1)
    assert sizes.seen == {(True, (16, 3, 16)), (False, (32, 3, 64))}, sizes.seen
    return learn,

@exercises('SaveModel', 'TrackerRecords', 'EpochLog', 'StopAfter')
def checkpoints_log_stop():
    lines = []
    class Lines(logging.Handler):
        def emit(self, record): lines.append(record.getMessage())
    log = logging.getLogger('wheel_smoke'); log.propagate = False; log.addHandler(Lines()); log.setLevel(logging.INFO)
    sm, tr = SaveModel(fname='best', save_last=True, with_opt=True), TrackerRecords()
    learn = fit(synth_learner(n_train=128, n_valid=32, cbs=[sm, tr, EpochLog(to=log), StopAfter(max_epochs=3)], path='ckpt'), 5, log=True)  # EpochLog is quiet under no_logging
    assert len(learn.recorder.values) == 3  # stopped after 3 of the 5 epochs
    assert sorted(p.name for p in Path('ckpt/models').iterdir()) == ['best.pth', 'best_last.pth']
    assert sm.best == min(v[1] for v in learn.recorder.values)
    best = torch.load('ckpt/models/best.pth', weights_only=False)
    best = best.get('model', best)
    assert all(torch.equal(best[k], v) for k, v in learn.model.state_dict().items())  # the best model is loaded at the end
    assert tr.record_epoch(sm) == (0, sm.best_epoch)
    assert len(lines) == 3 and all('valid_loss' in l for l in lines), lines
    return learn,

@exercises('MultiLossCallback', 'AdaptiveCountsWeight')
def multi_term_losses():
    terms = {'r': {'mse': lambda p, y: ((p - y) ** 2).mean(), 'counts': lambda p, y: (p - y).abs().mean()}}
    a = fit(synth_learner(loss_func=MultiLoss(terms, weights={'r': {'counts': 3.}}), cbs=MultiLossCallback(), n_train=128, n_valid=32), 2)
    names = a.recorder.metric_names[1:-1]
    for v in a.recorder.values:
        row = dict(zip(names, map(float, v)))
        assert abs(row['valid_loss'] - row['valid_r_mse_wloss'] - row['valid_r_counts_wloss']) < 1e-4 * row['valid_loss']
        assert abs(row['valid_r_counts_wloss'] - 3 * row['valid_r_counts_loss']) < 1e-4 * row['valid_r_counts_wloss']
    acw = AdaptiveCountsWeight({'r': .3})
    b = fit(synth_learner(loss_func=MultiLoss(terms), cbs=acw, n_train=128, n_valid=32), 3)
    lams = [h['lambda_r'] for h in acw.lambda_history]
    # λ of each epoch, then the next one, in the loss: it moves (from its estimate, 1 in the loss as given)
    assert len(lams) == 3 and len(set(lams + [b.loss_func.weight('r', 'counts')])) == 4 and 1. not in lams, lams
    return a, b

@exercises('ShowGraph', 'TransformScheduler')
def graph_and_schedule():
    class Spy:
        def __init__(self): self.magnitude, self.log = 1., []
        def __call__(self, b): self.log.append(self.magnitude); return b
    spy = Spy()
    learn = fit(synth_learner(n_train=128, n_valid=32, after_batch=spy, cbs=[ShowGraph(), TransformScheduler(SchedLin(1., 2.))]), 2)
    # 4 training batches per epoch, 8 in the fit: batch g uses 1 + g/7; validation batches unscheduled; restored after
    want = [1 + g / 7 for g in range(4)] + [1.] + [1 + g / 7 for g in range(4, 8)] + [1.]
    assert np.allclose(spy.log, want) and spy.magnitude == 1., spy.log
    assert Path('show_graph.png').stat().st_size > 1000
    return learn,

@exercises('FDS')
def feature_smoothing():
    _, y = synth_data(128 + 32, 'regression')
    seen = []  # (training, epoch, head input changed from the body's output)
    class HeadIn(Callback):
        order = 100
        def before_fit(self): self.h = self.learn.model.head.register_forward_hook(self.f)  # sees the input after FDS's pre-hook
        def f(self, m, args, out):
            with torch.no_grad(): plain = self.learn.model.body(self.x).mean(-1)
            seen.append((self.training, self.epoch, not torch.allclose(args[0], plain)))
        def after_fit(self): self.h.remove()
    fds = FDS(lag=False)  # calibrates from epoch 1
    learn = fit(synth_learner(n_train=128, n_valid=32, cbs=[LDSWeightedLoss(y[:128]), fds, HeadIn()]), 2)
    assert fds.layer_name == 'head' and fds.stats.epoch == 2 and fds.stats.calibrating
    assert {(t, e, c) for t, e, c in seen} == {(True, 0, False), (False, 0, False), (True, 1, True), (False, 1, False)}, set(seen)
    assert not learn.model.head._forward_pre_hooks  # removed after fit
    return learn,

@exercises('DIRMetric')
def imbalanced_regression_metrics():
    learn = synth_learner(n_train=128, n_valid=32)
    y = learn.dls.train_ds.tensors[1]
    learn.metrics = dir_metrics(y, names='all')
    fit(learn, 1)
    vals = dict(zip(learn.recorder.metric_names[3:-1], learn.recorder.values[-1][2:]))
    with learn.no_bar(): preds, targs = learn.get_preds()
    ref = dir_scores(preds, targs, shot_regions(y))  # the plain computation over the whole validation set
    assert list(vals) == list(DIR_METRIC_NAMES)
    for k in DIR_METRIC_NAMES: assert np.isclose(vals[k], ref[k], rtol=1e-5, equal_nan=True), (k, vals[k], ref[k])
    return learn,

def exported():
    "Every callback and metric `tsai_cbs.all` exports (aliases count once)"
    objs = [getattr(tca, n) for n in tca.__all__]
    return {o for o in objs if (inspect.isclass(o) and issubclass(o, (Callback, Metric))) or isinstance(o, Metric)}

def main():
    import matplotlib; matplotlib.use('Agg')
    here = Path.cwd()
    repo = Path(__file__).resolve().parents[1]
    if Path(tsai_cbs.__file__).resolve().is_relative_to(repo):
        if '--installed' in sys.argv: sys.exit(f'tsai_cbs imported from the source tree ({tsai_cbs.__file__}), not from the installed wheel')
        print(f'note: tsai_cbs imported from the source tree ({tsai_cbs.__file__}), not from an installed wheel')
    done = set()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            for names, f in CHECKS:
                learners = f()
                on = {type(c) for l in learners for c in l.cbs} | {m.func if hasattr(m, 'func') else m for l in learners for m in l.metrics} | {type(m) for l in learners for m in l.metrics}
                for n in names:
                    o = getattr(tca, n)
                    assert o in on or type(o) in on or any(isinstance(c, o) for c in on if inspect.isclass(o) and inspect.isclass(c)), \
                        f'{f.__name__}: {n} was not attached to its Learner'
                    done.add(o)
                print(f'ok  {f.__name__}: {", ".join(names)}')
        finally: os.chdir(here)
    missing = sorted(getattr(o, '__name__', repr(o)) for o in exported() - done)
    if missing: sys.exit(f'not exercised by tests/wheel_smoke.py (add a check): {", ".join(missing)}')
    loaded = [m for m in ('fastai.distributed', 'accelerate') if m in sys.modules]
    if loaded: sys.exit(f'imported without distributed training: {", ".join(loaded)}')
    print(f'tsai_cbs {tsai_cbs.__version__} from {Path(tsai_cbs.__file__).parent}: every exported callback and metric '
          f'({len(done)}) trained and checked; fastai.distributed and accelerate not imported')

if __name__ == '__main__': main()
