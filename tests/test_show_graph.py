"ShowGraph on real Learners, headless (Agg): image files, losses by name, awkward runs, figures closed."
import math
import numpy as np
import pytest, torch
import matplotlib.pyplot as plt
import fastai.callback.schedule  # Learner.lr_find
from fastai.callback.core import Callback
from fastai.metrics import accuracy
from tsai_cbs.testing import synth_learner, run_distributed
from tsai_cbs.show_graph import ShowGraph, plot_metrics, recorder_table

class Snap(Callback):
    "Right after ShowGraph: the live graph's data and the image file's bytes, per epoch"
    order = 66
    def before_fit(self): self.snaps = []
    def after_epoch(self):
        sg = self.learn.show_graph
        if getattr(sg, 'fig', None) is None: return
        ax = sg.ax
        p = sg.image_path
        self.snaps.append(dict(lines={l.get_label(): (l.get_xdata().copy(), l.get_ydata().copy()) for l in ax.lines},
                               ylim=ax.get_ylim(), xlim=ax.get_xlim(), img=p.read_bytes() if p.exists() else None))

def _fit(learn, *args, **kwargs):
    with learn.no_bar(), learn.no_logging(): learn.fit(*args, **kwargs)

def test_script_mode_writes_and_overwrites(in_tmp, capsys):
    learn = synth_learner(metrics=accuracy, task='classification', cbs=[ShowGraph(), Snap()], path=in_tmp/'run')
    _fit(learn, 3)
    img, met = in_tmp/'run'/'show_graph.png', in_tmp/'run'/'show_graph_metrics.png'
    assert img.exists() and met.exists()
    assert img.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    imgs = [s['img'] for s in learn.snap.snaps]
    assert len(imgs) == 3 and len(set(imgs)) == 3 and imgs[-1] == img.read_bytes()  # rewritten after every epoch
    _fit(learn, 2)
    out = capsys.readouterr().out
    assert out.count('ShowGraph:') == 1 and str(img) in out and str(met) in out  # said once
    # a custom name (relative to learn.path) and an absolute one
    learn = synth_learner(cbs=ShowGraph(fname='g/loss.png'), path=in_tmp/'run2')
    _fit(learn, 2)
    assert (in_tmp/'run2'/'g'/'loss.png').exists() and (in_tmp/'run2'/'g'/'loss_metrics.png').exists()
    learn = synth_learner(cbs=ShowGraph(fname=in_tmp/'abs.png', plot_metrics=False), path=in_tmp/'run3')
    _fit(learn, 1)
    assert (in_tmp/'abs.png').exists() and not (in_tmp/'abs_metrics.png').exists()

def test_losses_found_by_name_with_train_metrics(in_tmp):
    learn = synth_learner('classification', metrics=accuracy, cbs=[ShowGraph(), Snap()])
    learn.recorder.train_metrics = True
    _fit(learn, 3)
    names = list(learn.recorder.metric_names)
    assert names[1:5] == ['train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy']
    valid = [v[names.index('valid_loss') - 1] for v in learn.recorder.values]
    vx, vy = learn.snap.snaps[-1]['lines']['valid']
    np.testing.assert_allclose(vy, valid, rtol=1e-6)
    np.testing.assert_allclose(vx, [1, 2, 3])
    tx, ty = learn.snap.snaps[-1]['lines']['train']
    np.testing.assert_allclose(ty, [float(l) for l in learn.recorder.losses], rtol=1e-6)
    np.testing.assert_allclose(tx, np.arange(1, 25) / 8)
    t = recorder_table(learn.recorder)
    np.testing.assert_allclose(t['valid_loss'], valid)
    fig = plot_metrics(learn.recorder, perc=.7)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == ['losses', 'final losses', 'accuracy']
    acc = fig.axes[2]
    assert [l.get_label() for l in acc.lines] == ['train', 'valid']
    np.testing.assert_allclose(acc.lines[1].get_ydata(), t['valid_accuracy'])
    np.testing.assert_allclose(fig.axes[1].lines[0].get_xdata(), [1, 2])  # round(3 * .7) = 2 final epochs
    plt.close(fig)

def test_start_epoch_resume(in_tmp):
    learn = synth_learner(cbs=[ShowGraph(), Snap()])
    _fit(learn, 5, start_epoch=3)
    s = learn.snap.snaps
    assert len(s) == 2
    tx, _ = s[-1]['lines']['train']
    np.testing.assert_allclose(tx, 3 + np.arange(1, 17) / 8)
    assert s[-1]['xlim'] == (3, 5)
    np.testing.assert_allclose(s[-1]['lines']['valid'][0], [4, 5])
    fig = plot_metrics(learn.recorder)
    assert fig.axes[0].get_xlim()[0] > 2  # skipped epochs are not drawn
    np.testing.assert_allclose(fig.axes[0].lines[1].get_xdata(), [3, 4])
    plt.close(fig)

def test_skipped_during_lr_find_get_preds_validate(in_tmp):
    learn = synth_learner(cbs=ShowGraph())
    n0 = len(plt.get_fignums())
    with learn.no_bar(): learn.lr_find(num_it=10, show_plot=False)
    learn.get_preds(); learn.validate()
    assert not (in_tmp/'show_graph.png').exists() and not (in_tmp/'show_graph_metrics.png').exists()
    assert len(plt.get_fignums()) == n0

def test_no_validation_single_epoch(in_tmp):
    learn = synth_learner(cbs=[ShowGraph(), Snap()], n_valid=0)
    _fit(learn, 1)
    s = learn.snap.snaps[-1]
    assert np.isnan(s['lines']['valid'][1]).all() and np.isfinite(s['lines']['train'][1]).all()
    assert all(map(math.isfinite, s['ylim']))
    assert (in_tmp/'show_graph.png').exists() and (in_tmp/'show_graph_metrics.png').exists()
    # no validation at all: no valid line, no valid panel
    learn = synth_learner(cbs=[ShowGraph(), Snap()])
    learn.recorder.valid_metrics = False
    _fit(learn, 2)
    assert list(learn.snap.snaps[-1]['lines']) == ['train']
    fig = plot_metrics(learn.recorder)
    assert [l.get_label() for l in fig.axes[0].lines] == ['train']
    plt.close(fig)

class Diverge(Callback):
    def after_loss(self):
        if not self.training and self.epoch == 1: self.learn.loss = self.loss * math.inf
    def before_epoch(self):
        if self.epoch == 3:
            with torch.no_grad(): self.model.head.weight.fill_(math.nan)

def test_nan_inf_gaps_and_sane_axes(in_tmp):
    learn = synth_learner(cbs=[Diverge(), ShowGraph(), Snap()])
    _fit(learn, 4)
    s = learn.snap.snaps[-1]
    vy = s['lines']['valid'][1]
    assert np.isnan(vy[1]) and np.isnan(vy[3]) and np.isfinite(vy[[0, 2]]).all()
    ty = s['lines']['train'][1]
    assert np.isfinite(ty[:24]).all() and np.isnan(ty[24:]).all()
    lo, hi = s['ylim']
    assert math.isfinite(lo) and math.isfinite(hi) and lo < np.nanmin(ty[8:]) and hi > max(np.nanmax(ty[8:]), np.nanmax(vy))
    fig = plot_metrics(learn.recorder)
    assert all(math.isfinite(v) for ax in fig.axes if ax.axison for v in ax.get_ylim())
    plt.close(fig)

class Boom(Callback):
    def before_batch(self):
        if self.epoch == 1 and self.iter == 1: raise RuntimeError('boom')

def test_figures_closed(in_tmp):
    n0 = len(plt.get_fignums())
    learn = synth_learner(cbs=ShowGraph(), n_train=64)
    for _ in range(20): _fit(learn, 2)
    assert len(plt.get_fignums()) == n0
    learn.add_cb(Boom())
    with pytest.raises(RuntimeError): _fit(learn, 3)
    assert len(plt.get_fignums()) == n0

def test_notebook_mode_updates_one_display(in_tmp, monkeypatch):
    import IPython, IPython.display
    monkeypatch.setattr(IPython, 'get_ipython', lambda: None)  # plain Python, whatever shell an earlier test left
    calls = []
    class Handle:
        def update(self, obj): calls.append(('update', obj))
    def display(obj, display_id=False):
        calls.append(('display', obj))
        return Handle() if display_id else None
    monkeypatch.setattr(IPython.display, 'display', display)
    learn = synth_learner(cbs=ShowGraph(mode='notebook'))
    _fit(learn, 4)
    kinds = [k for k, _ in calls]
    assert kinds == ['display', 'update', 'update', 'update', 'display']  # one live figure, then the metric plot
    assert calls[0][1] is calls[1][1] is calls[3][1] and calls[4][1] is not calls[0][1]
    assert not (in_tmp/'show_graph.png').exists()  # no file in a notebook unless fname is given
    calls.clear()
    learn = synth_learner(cbs=ShowGraph(mode='notebook', fname='also.png', plot_metrics=False))
    _fit(learn, 2)
    assert [k for k, _ in calls] == ['display', 'update'] and (in_tmp/'also.png').exists()

def test_bad_arguments():
    for kw, name in [(dict(perc=0), 'perc'), (dict(perc=2), 'perc'), (dict(perc='a'), 'perc'), (dict(final_losses=1), 'final_losses'),
                     (dict(plot_metrics=None), 'plot_metrics'), (dict(mode='png'), 'mode'), (dict(fname=1), 'fname'), (dict(fname=' '), 'fname'),
                     (dict(figsize=6), 'figsize'), (dict(figsize=(6,)), 'figsize'), (dict(figsize=(6, 'a')), 'figsize'), (dict(figsize=(6, -1)), 'figsize')]:
        with pytest.raises((TypeError, ValueError), match=name): ShowGraph(**kw)

def test_ddp_rank0_only(in_tmp):
    "Under DDP on 2 CPU processes: only rank 0 writes/prints (ShowGraph, TransformScheduler's plot); TransformScheduler and StopAfter run the same on both ranks"
    res = run_distributed('''
        import torch.distributed as dist
        from fastai.callback.schedule import SchedLin
        from tsai_cbs.testing import synth_learner, patch_distributed_dl_for_cpu
        from tsai_cbs.show_graph import ShowGraph
        from tsai_cbs.transform_scheduler import TransformScheduler
        from tsai_cbs.stop_after import StopAfter
        patch_distributed_dl_for_cpu()
        class Spy:
            def __init__(self): self.magnitude, self.log = 1., []
            def __call__(self, b): self.log.append(self.magnitude); return b
        spy = Spy()
        learn = synth_learner(after_batch=spy, cbs=[ShowGraph(), TransformScheduler(SchedLin(1., 2.), show_plot=True), StopAfter(max_batches=6)])
        with learn.distrib_ctx(cpu=True), learn.no_bar(), learn.no_logging(): learn.fit(3)
        r = dist.get_rank()
        open(f'rank{r}.txt', 'w').write(' '.join(f'{v:.4f}' for v in spy.log) + f' | {spy.magnitude}')
    ''', nproc=2, cwd=in_tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    # per rank and epoch: 4 training batches (12 in the fit: batch g uses 1 + g/11), then 1 unscheduled validation batch; stopped after 6
    want = ' '.join(f'{v:.4f}' for v in [1 + g / 11 for g in range(4)] + [1.] + [1 + g / 11 for g in (4, 5)]) + ' | 1.0'
    assert [(in_tmp/f'rank{r}.txt').read_text() for r in (0, 1)] == [want, want]
    assert (in_tmp/'show_graph.png').exists() and res.stdout.count('ShowGraph:') == 1
    assert (in_tmp/'transform_schedule.png').exists() and res.stdout.count('TransformScheduler:') == 1

class InterruptLrFind(Callback):
    def before_batch(self):
        if hasattr(self.learn, 'lr_finder') and self.iter == 2: raise KeyboardInterrupt()

def test_draws_after_interrupted_lr_find(in_tmp):
    "An lr_find that raises never reaches after_fit (where fastai resets a callback's `run`): the next fit still draws"
    learn = synth_learner(cbs=[ShowGraph(), InterruptLrFind()])
    with pytest.raises(KeyboardInterrupt), learn.no_bar(): learn.lr_find(num_it=10, show_plot=False)
    assert not (in_tmp/'show_graph.png').exists()
    _fit(learn, 2)
    assert (in_tmp/'show_graph.png').exists() and (in_tmp/'show_graph_metrics.png').exists()

def test_notebook_mode_under_nbdevs_runner_shows_the_final_graph_once(in_tmp, monkeypatch):
    "execnb's CaptureShell stores every display update as a new output: there ShowGraph shows the finished graph once"
    import IPython, IPython.display
    class CaptureShell: pass
    monkeypatch.setattr(IPython, 'get_ipython', lambda: CaptureShell())
    calls = []
    monkeypatch.setattr(IPython.display, 'display', lambda obj, display_id=False: calls.append((display_id, obj)))
    learn = synth_learner(cbs=ShowGraph(mode='notebook', plot_metrics=False))
    _fit(learn, 3)
    assert [d for d, _ in calls] == [False] and calls[0][1].axes[0].get_lines()
