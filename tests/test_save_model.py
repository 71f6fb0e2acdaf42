"SaveModel on real Learners and real files: exact resume, SIGKILL at random moments, DDP, ranking, NaN, loading on current torch."
import errno, io, os, random, select, shutil, signal, subprocess, sys, threading, time, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
from torch import nn
import fastai.callback.schedule  # fit_one_cycle
from fastai.callback.core import Callback
from fastai.metrics import Metric
import tsai_cbs.save_model as sm
from tsai_cbs.save_model import SaveModel, load_checkpoint, atomic_write, clean_tmp_files
from tsai_cbs.testing import synth_learner, run_distributed


def quiet_fit(learn, *args, one_cycle=False, **kwargs):
    with learn.no_bar(), learn.no_logging():
        (learn.fit_one_cycle if one_cycle else learn.fit)(*args, **kwargs)


class Scripted(Metric):
    "A metric whose value at epoch i is `vals[i]`: rankings and edge values are exactly known"
    def __init__(self, vals, name='score'): self.vals, self._name = list(vals), name
    def reset(self): self.epoch = None
    def accumulate(self, learn): self.epoch = learn.epoch
    @property
    def value(self): return self.vals[self.epoch]
    @property
    def name(self): return self._name


class Crash(Callback):
    "Raise after `epoch`'s checkpoints are written (order after SaveModel), or in the middle of its training batches"
    order = 99
    def __init__(self, epoch, mid=False): self.at, self.mid = epoch, mid
    def after_epoch(self):
        if not self.mid and self.epoch == self.at: raise RuntimeError('simulated crash')
    def after_batch(self):
        if self.mid and self.training and self.epoch == self.at and self.iter == 3: raise RuntimeError('simulated crash')


class Grab(Callback):
    "Keep the weights as they are when training ends, before SaveModel loads the best"
    order = 0
    def after_fit(self): self.w = {k: v.clone() for k, v in self.model.state_dict().items()}


def files(path): return sorted(p.name for p in (Path(path)/'models').iterdir())


@pytest.mark.parametrize('background', [False, True])
def test_resume_equals_straight_run(in_tmp, background):
    # straight 5-epoch one-cycle run
    a = synth_learner(path='a', cbs=[SaveModel(save_last=True, with_opt=True), Grab()])
    quiet_fit(a, 5, one_cycle=True)
    # the same run, crashed after epoch 2 of 5 ...
    b = synth_learner(path='b', cbs=[SaveModel(resume=True, with_opt=True, background=background), Crash(1)])
    with pytest.raises(RuntimeError, match='simulated crash'): quiet_fit(b, 5, one_cycle=True)
    assert len(b.recorder.values) == 2 and files('b') == ['model.pth', 'model_last.pth']
    # ... resumed in a "new session": other weights and random states, which the resume must replace
    c = synth_learner(path='b', cbs=[SaveModel(resume=True, with_opt=True, background=background), Grab()])
    torch.manual_seed(123); random.seed(123); np.random.seed(123)
    for p in c.model.parameters(): nn.init.normal_(p)
    c.dls.train.rng.seed(123)
    quiet_fit(c, 5, one_cycle=True)
    for k, w in a.grab.w.items(): torch.testing.assert_close(c.grab.w[k], w, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.array(c.recorder.values, dtype=float), np.array(a.recorder.values, dtype=float), rtol=1e-6)
    sa, sc = a.save_model, c.save_model
    assert (sc.best, sc.best_epoch, sc.best_name) == (sa.best, sa.best_epoch, sa.best_name)
    for k, w in a.model.state_dict().items(): torch.testing.assert_close(c.model.state_dict()[k], w, rtol=1e-6, atol=1e-7)  # same best loaded
    # the optimizer state continued too (Adam moments)
    oa, oc = a.opt.state_dict()['state'], c.opt.state_dict()['state']
    for s1, s2 in zip(oa, oc):
        for k in s1:
            if isinstance(s1[k], torch.Tensor): torch.testing.assert_close(s2[k], s1[k], rtol=1e-6, atol=1e-7)


def test_resume_with_the_progress_bar_on(in_tmp):
    # the skipped epochs never reached fastprogress, whose bar starts its clock at epoch 0: `before_epoch` of the first
    # trained epoch raised AttributeError('...no attribute start_t') in every resume with the bar on (a notebook's default)
    a = synth_learner(path='a')
    quiet_fit(a, 4)
    b = synth_learner(path='b', cbs=SaveModel(resume=True))
    with pytest.raises(RuntimeError, match='simulated crash'), b.no_logging(): b.fit(4, cbs=Crash(1))
    c = synth_learner(path='b', cbs=SaveModel(resume=True))
    with c.no_logging(): c.fit(4)
    np.testing.assert_allclose(np.array(c.recorder.values, dtype=float), np.array(a.recorder.values, dtype=float), rtol=1e-6)


def _log_lines(err):
    "EpochLog's lines as (epoch, the values without time and ETA)"
    return [(int(l.split()[1].split('/')[0]), [p for p in l.split(' | ') if not p.startswith(('time', 'eta'))])
            for l in err.splitlines() if l.startswith('epoch ')]


@pytest.mark.parametrize('crash_order', [99, 20_000])
def test_epoch_log_writes_each_epoch_once_across_a_crash_and_its_resume(in_tmp, capsys, crash_order):
    # 99: the crash comes after the epoch's line used to be written (EpochLog: 70) but before its `last` checkpoint (10_000), so
    # the resumed run trains that epoch again: the log had it twice. 20_000: the checkpoint holds it, the resume skips it
    from tsai_cbs.epoch_log import EpochLog
    def run(path, n, cbs=()):
        learn = synth_learner(path=path, cbs=[SaveModel(resume=True), EpochLog()])
        with learn.no_bar(): learn.fit(n, cbs=list(cbs))
    run('a', 4)
    straight = _log_lines(capsys.readouterr().err)
    crash = Crash(1); crash.order = crash_order
    with pytest.raises(RuntimeError, match='simulated crash'): run('b', 4, [crash])
    first = _log_lines(capsys.readouterr().err)
    run('b', 4)
    resumed = _log_lines(capsys.readouterr().err)
    assert [e for e, _ in first] == ([1] if crash_order == 99 else [1, 2]), first
    assert [e for e, _ in first + resumed] == [1, 2, 3, 4]
    assert first + resumed == straight  # the same values as the run that never crashed


def test_resume_after_mid_epoch_crash_and_explicit_file(in_tmp):
    b = synth_learner(path='b', cbs=SaveModel(resume=True, background=True))
    with pytest.raises(RuntimeError, match='simulated crash'): quiet_fit(b, 4, cbs=Crash(2, mid=True))
    meta = load_checkpoint('b/models/model_last.pth')['tsai_cbs']
    assert meta['epoch'] == 1  # the crashed epoch 2 was never completed: the last checkpoint is epoch 1's
    assert not [t for t in threading.enumerate() if t.name.startswith('SaveModel')]  # worker joined and shut down
    c = synth_learner(path='b', cbs=SaveModel(resume='model_last'))
    quiet_fit(c, 4)
    assert len(c.recorder.values) == 4 and [len(v) for v in c.recorder.values] == [2] * 4
    with pytest.raises(FileNotFoundError, match='no checkpoint'):
        quiet_fit(synth_learner(path='b', cbs=SaveModel(resume='nope')), 1)
    with pytest.raises(ValueError, match='not a resumable checkpoint'):
        quiet_fit(synth_learner(path='b', cbs=SaveModel(resume='model')), 1)


def test_resume_from_a_finished_run_warns(in_tmp):
    # a notebook cell with resume=True run a second time, its `last` file kept: nothing is left to train, which must not pass silently
    learn = synth_learner()
    quiet_fit(learn, 3, cbs=SaveModel(resume=True, delete_last=False))
    values = [list(v) for v in learn.recorder.values]
    with pytest.warns(UserWarning, match='holds a finished run .epochs 0-2., so this fit has nothing left to train'):
        quiet_fit(learn, 3, cbs=SaveModel(resume=True, delete_last=False))
    assert [list(v) for v in learn.recorder.values] == values
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)  # a run crashed before its end resumes without that warning
        b = synth_learner(path='b')
        with pytest.raises(RuntimeError, match='simulated crash'): quiet_fit(b, 3, cbs=[SaveModel(resume=True), Crash(1)])
        quiet_fit(synth_learner(path='b'), 3, cbs=SaveModel(resume=True))


def test_finished_run_removes_its_resume_file_so_a_rerun_trains_again(in_tmp):
    # Keras's BackupAndRestore: by default (with `resume`) a run that ends normally removes its `last` file
    learn = synth_learner()
    quiet_fit(learn, 3, cbs=SaveModel(resume=True))
    assert files('.') == ['model.pth']
    w = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)  # no "finished run" warning: the cell trains again
        quiet_fit(learn, 3, cbs=SaveModel(resume=True))
    assert len(learn.recorder.values) == 3 and files('.') == ['model.pth']
    assert any(not torch.equal(w[k], v) for k, v in learn.model.state_dict().items())
    # early stopping ends a fit normally too; an exception keeps the file for the resume
    from fastai.callback.tracker import EarlyStoppingCallback
    learn = synth_learner(path='es', metrics=Scripted([3., 2., 4., 5., 6., 7.]))
    quiet_fit(learn, 6, cbs=[SaveModel(monitor='score', mode='min', resume=True), EarlyStoppingCallback('score', comp=np.less, patience=2)])
    assert len(learn.recorder.values) == 4 and files('es') == ['model.pth']
    with pytest.raises(RuntimeError, match='simulated crash'): quiet_fit(synth_learner(path='c'), 3, cbs=[SaveModel(resume=True), Crash(1)])
    assert files('c') == ['model.pth', 'model_last.pth']
    # save_last without resume is a product (Lightning's `last.ckpt`): kept unless asked
    quiet_fit(synth_learner(path='keep'), 2, cbs=SaveModel(save_last=True))
    assert files('keep') == ['model.pth', 'model_last.pth']
    quiet_fit(synth_learner(path='del'), 2, cbs=SaveModel(save_last=True, delete_last=True))
    assert files('del') == ['model.pth']


def test_topk_ranking_and_files(in_tmp):
    vals = [5., 3., 4., 1., 2., 6.]
    learn = synth_learner(metrics=Scripted(vals), cbs=SaveModel(monitor='score', mode='min', fname='m_{epoch}_{score:.0f}', save_top_k=3))
    quiet_fit(learn, 6)
    cb = learn.save_model
    assert [(c['epoch'], c['value']) for c in cb.checkpoints] == [(3, 1.), (4, 2.), (1, 3.)]
    assert files('.') == ['m_1_3.pth', 'm_3_1.pth', 'm_4_2.pth']
    assert (cb.best, cb.best_epoch, cb.best_path.name) == (1., 3, 'm_3_1.pth')
    # -1 keeps every qualifying one; the threshold keeps out the others
    learn = synth_learner(path='all', metrics=Scripted(vals), cbs=SaveModel(monitor='score', fname='m_{epoch}', save_top_k=-1,
                                                                          mode='max', initial_value_threshold=3.5))
    quiet_fit(learn, 6)
    assert files('all') == ['m_0.pth', 'm_2.pth', 'm_5.pth'] and learn.save_model.best_epoch == 5


def test_template_repeating_a_name_never_overwrites_a_better_file(in_tmp):
    class Keep(Callback):
        order = 99
        def before_fit(self): self.ws = []
        def after_epoch(self): self.ws.append({k: v.clone() for k, v in self.model.state_dict().items()})
    # no {epoch}: epochs 1 and 2 both format to 'm_1', epochs 0 and 3 to 'm_2'
    learn = synth_learner(metrics=Scripted([2.4, 0.9, 1.1, 2.2, 3.0]),
                          cbs=[SaveModel(monitor='score', mode='min', fname='m_{score:.0f}', save_top_k=2), Keep()])
    quiet_fit(learn, 5)
    cb, ws = learn.save_model, learn.keep.ws
    assert [(c['epoch'], c['value'], c['name']) for c in cb.checkpoints] == [(1, .9, 'm_1'), (3, 2.2, 'm_2')]
    assert files('.') == ['m_1.pth', 'm_2.pth'] and (cb.best, cb.best_epoch, cb.best_name) == (.9, 1, 'm_1')
    same = lambda a, b: all(torch.equal(a[k], b[k]) for k in a)
    assert same(load_checkpoint('models/m_1.pth'), ws[1])  # the best, not epoch 2's worse 1.1
    assert same(load_checkpoint('models/m_2.pth'), ws[3])  # 2.2 replaced the worse 2.4 of the same name
    assert same(learn.model.state_dict(), ws[1])  # and the best is what is loaded at the end


def test_nan_inf_never_improve_and_nothing_saved_warns(in_tmp):
    learn = synth_learner(metrics=Scripted([float('nan'), float('inf'), 2., -float('inf'), 1., float('nan')]),
                          cbs=SaveModel(monitor='score', mode='min', fname='m_{epoch}', save_top_k=-1))
    quiet_fit(learn, 6)
    assert (learn.save_model.best, learn.save_model.best_epoch) == (1., 4) and files('.') == ['m_2.pth', 'm_4.pth']
    learn = synth_learner(path='none', metrics=Scripted([float('nan')] * 3), cbs=SaveModel(monitor='score'))
    with pytest.warns(UserWarning, match='no checkpoint was saved; the model is left as it is'): quiet_fit(learn, 2)
    w = {k: v.clone() for k, v in learn.model.state_dict().items()}
    assert not (Path('none')/'models').exists()
    with pytest.warns(UserWarning, match='never improved'): quiet_fit(learn, 1)  # and no crash on the missing file
    assert any((w[k] != v).any() for k, v in learn.model.state_dict().items())  # trained, not reloaded


def test_rebase_best_marks_checkpoints_stale(in_tmp):
    class Rebase(Callback):
        order = 70  # after SaveModel, like a callback that re-defines the loss at the end of an epoch
        def after_epoch(self):
            if self.epoch == 2: self.learn.save_model.best = 100.  # new scale: old values are meaningless
    vals = [3., 1., 2., 50., 60., 40.]
    learn = synth_learner(metrics=Scripted(vals), cbs=[SaveModel(monitor='score', mode='min', fname='m_{epoch}', save_top_k=2), Rebase()])
    quiet_fit(learn, 6)
    cb = learn.save_model
    # after the re-base 50 is a new best (< 100) though worse than the old 1; stale entries are dropped first
    assert (cb.best, cb.best_epoch) == (40., 5)
    assert [(c['epoch'], c['stale']) for c in cb.checkpoints] == [(5, False), (3, False)]
    assert files('.') == ['m_3.pth', 'm_5.pth']


def test_fastai_compat_every_epoch_at_end_and_validate(in_tmp):
    learn = synth_learner(cbs=SaveModel(every_epoch=True))
    quiet_fit(learn, 2)
    learn.validate()  # validate sends fit events too: nothing may be saved or loaded then
    assert files('.') == ['model_0.pth', 'model_1.pth']
    learn = synth_learner(path='e2', cbs=SaveModel(every_epoch=2, fname='r_{epoch}_{valid_loss:.2f}', every_n_batches=3))
    quiet_fit(learn, 3)
    assert [f[:4] for f in files('e2')] == ['r_0_', 'r_2_', 'r_it'] and learn.save_model.n_written == 2 + 24 // 3
    learn = synth_learner(path='end', cbs=[SaveModel(at_end=True, with_opt=True), Grab()])
    quiet_fit(learn, 3)
    saved = load_checkpoint('end/models/model.pth')
    for k, w in learn.grab.w.items(): assert torch.equal(saved['model'][k], w)  # the final model, not the best
    # fastai/tsai calls and attributes keep working
    cb = SaveModel('valid_loss', None, 0., 'model', False, False, True, True, True)
    assert (cb.with_opt, cb.reset_on_fit, cb.verbose, cb.comp) == (True, True, True, np.less)
    learn = synth_learner(path='v', cbs=cb)
    quiet_fit(learn, 1)
    assert cb.last_saved_path == Path('v/models/model.pth') and cb.new_best
    # reset_on_fit=False: the next fit must beat the previous best, else the previous best file is loaded
    learn = synth_learner(path='keep', metrics=Scripted([1., 2., 3.]), cbs=[SaveModel(monitor='score', mode='min', reset_on_fit=False), Grab()])
    quiet_fit(learn, 1)
    first = {k: v.clone() for k, v in learn.model.state_dict().items()}
    quiet_fit(learn, 3)  # epochs 0-2 score 1, 2, 3 again: none beats 1
    assert (learn.save_model.best, learn.save_model.best_epoch) == (1., 0)
    assert all(torch.equal(first[k], v) for k, v in learn.model.state_dict().items())
    assert not all(torch.equal(first[k], v) for k, v in learn.grab.w.items())


def test_save_last_cannot_name_the_best_or_iter_file_and_conflicting_options(in_tmp):
    with pytest.raises(ValueError, match="`save_last`='x' names the file that `fname` writes"): SaveModel(fname='x', save_last='x')
    with pytest.raises(ValueError, match='`every_n_batches` writes'): SaveModel(every_n_batches=2, save_last='model_iter')
    with pytest.raises(ValueError, match='`save_top_k`=-1 has no effect with `every_epoch`'):  # it would be ignored silently
        SaveModel(fname='m_{epoch}', every_epoch=1, save_top_k=-1)
    learn = synth_learner(cbs=SaveModel(fname='x', save_last='x', save_as='learner'))  # x.pkl and x.pth: two files
    quiet_fit(learn, 1)
    assert files('.') == ['x.pkl', 'x.pth'] and 'tsai_cbs' in load_checkpoint('models/x.pth')


def test_lr_find_saves_nothing_and_fit_cbs_usage(in_tmp):
    # attached to the Learner: lr_find (and get_preds) neither save nor load, the later fit does
    learn = synth_learner(cbs=SaveModel(with_opt=True, save_last=True, every_n_batches=2))
    w = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with learn.no_bar(), learn.no_logging():
        learn.lr_find(num_it=12, show_plot=False)
        learn.get_preds()
    assert not (in_tmp/'models').exists() or files('.') == []
    assert all(torch.equal(w[k], v) for k, v in learn.model.state_dict().items())
    quiet_fit(learn, 2, one_cycle=True)
    assert files('.') == ['model.pth', 'model_iter.pth', 'model_last.pth']
    # fastai style: passed to one fit only, then removed from the Learner
    learn = synth_learner(path='f')
    cb = SaveModel(fname='b_{epoch}', save_top_k=2)
    quiet_fit(learn, 3, one_cycle=True, cbs=cb)
    assert not hasattr(learn, 'save_model') and cb.best_epoch is not None and len(cb.checkpoints) == 2
    assert files('f') == sorted(c['name'] + '.pth' for c in cb.checkpoints)


def test_with_opt_loads_on_current_torch(in_tmp):
    learn = synth_learner(cbs=SaveModel(with_opt=True))
    quiet_fit(learn, 2)
    opt_state = learn.opt.state_dict()
    fresh = synth_learner(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)  # no "could not load the optimizer state"
        fresh.load('model', with_opt=True)  # fastai's loader, torch.load(weights_only=True) by default
    for k, v in learn.model.state_dict().items(): assert torch.equal(fresh.model.state_dict()[k], v)
    for s1, s2 in zip(opt_state['state'], fresh.opt.state_dict()['state']):
        assert all(torch.equal(s1[k], s2[k]) for k in s1 if isinstance(s1[k], torch.Tensor))
    assert set(load_checkpoint('models/model.pth', weights_only=True)) == {'model', 'opt'}


def test_learner_export_mid_fit_restores_learner(in_tmp):
    learn = synth_learner(cbs=SaveModel(save_as='learner', background=True))
    dls, opt = learn.dls, None
    class Check(Callback):
        order = 70
        def after_epoch(self): assert self.learn.dls is dls and self.learn.opt is not None and self.learn.dl is not None
    quiet_fit(learn, 2, cbs=Check())
    from fastai.learner import load_learner
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        inf = load_learner('models/model.pkl')
    xb, _ = learn.dls.valid.one_batch()
    torch.testing.assert_close(inf.model(xb), learn.model(xb))


def test_failed_background_write_raises_in_training_thread(in_tmp, monkeypatch):
    import tsai_cbs.save_model as sm
    def broken(path, write_fn): raise OSError('disk full')
    monkeypatch.setattr(sm, 'atomic_write', broken)
    learn = synth_learner(cbs=SaveModel(background=True))
    with pytest.raises(OSError, match='disk full'): quiet_fit(learn, 3)
    assert not [t for t in threading.enumerate() if t.name.startswith('SaveModel')]


def test_tmp_cleanup_spares_a_write_in_progress_in_another_process(in_tmp):
    # another process saves (slowly) into the same folder while this one starts a fit there
    writer = subprocess.Popen([sys.executable, '-c', """if True:
        import time
        from pathlib import Path
        from tsai_cbs.save_model import atomic_write
        def slow(f):
            f.write(b'first half, '); f.flush(); Path('started').touch()
            while not Path('go').exists(): time.sleep(0.02)
            f.write(b'second half')
        atomic_write('models/other.bin', slow)
    """], cwd=in_tmp)
    deadline = time.time() + 120
    while not (in_tmp/'started').exists():
        assert writer.poll() is None and time.time() < deadline, 'the writer did not start'
        time.sleep(0.05)
    gone = subprocess.Popen([sys.executable, '-c', 'pass']); gone.wait()  # a writer killed mid-write left this one
    left = in_tmp/'models'/f'.model.pth.{sm._HOST}.{gone.pid}.abcd1234.tsai_cbs.tmp'
    left.write_bytes(b'partial')
    quiet_fit(synth_learner(cbs=SaveModel()), 1)  # SaveModel cleans the folder when fit starts
    (in_tmp/'go').touch()
    assert writer.wait(120) == 0
    assert (in_tmp/'models'/'other.bin').read_bytes() == b'first half, second half'
    assert not left.exists() and files('.') == ['model.pth', 'other.bin']
    # a temp file nobody touched for `max_age` seconds goes, whatever its writer (other hosts, reused pids)
    mine = in_tmp/'models'/f'.x.pth.{sm._HOST}.{os.getpid()}.abcd1234.tsai_cbs.tmp'
    mine.write_bytes(b'')
    assert clean_tmp_files(in_tmp/'models') == 0 and mine.exists()
    os.utime(mine, (time.time() - 7200,) * 2)
    assert clean_tmp_files(in_tmp/'models') == 1 and not mine.exists()
    with pytest.raises(TypeError, match='`max_age`'): clean_tmp_files(in_tmp/'models', max_age='1h')


# ---- SIGKILL at random moments: every checkpoint on disk is always complete

class _Big(nn.Module):
    "A few MB of weights (x3 with Adam's state), so that kills often land in the middle of a write"
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(192, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 1))
    def forward(self, x): return self.net(x)[:, 0]

def _kill_learner(path, background=False, resume=False):
    n_ep = 10_000  # never reached: the run is killed
    cb = SaveModel(monitor='score', mode='min', fname='m_{epoch}', save_top_k=2, save_last=True, with_opt=True,
                   every_n_batches=2, background=background, resume=resume)
    return synth_learner(path=path, model=_Big(), metrics=Scripted(np.linspace(1, 0, n_ep)), cbs=cb, n_train=64, n_valid=16, bs=16), n_ep

_GATE_BYTES = 1 << 20  # a checkpoint of `_Big` with Adam's state is ~8 MB: the gate stops it in the middle of the tensors

class _Gate:
    "The file `atomic_write` hands to a checkpoint's writer: once 1 MB is in the temp file, tell the parent, then hang"
    def __init__(self, f, wfd): self.f, self.wfd, self.n = f, wfd, 0
    def write(self, b):
        n = self.f.write(b)
        self.n += n
        if self.n >= _GATE_BYTES:
            self.f.flush()  # part of the checkpoint is in its temp file, the rest is not
            os.write(self.wfd, b'w')
            while True: time.sleep(60)  # mid-write until the parent's SIGKILL
        return n
    def __getattr__(self, k): return getattr(self.f, k)

def _gate_writes(wfd, target):
    "From `arm()` on, the next write of a checkpoint named `target` stops in the middle ('best' for any `m_{epoch}`)"
    armed, real = [False], sm.atomic_write
    def hit(name): return name[2:-4].isdigit() if target == 'best' else name == target
    def gated(path, write_fn):
        if not (armed[0] and hit(Path(path).name)): return real(path, write_fn)
        armed[0] = False
        return real(path, lambda f: write_fn(_Gate(f, wfd)))  # the real atomic write, its data cut off mid-stream
    sm.atomic_write = gated  # the writer's (in this forked child only)
    return lambda: armed.__setitem__(0, True)

def _child(path, wfd, background, gate=None):
    try:
        # the parent used torch's OpenMP threads before forking: in the child they would hang in the first parallel op
        torch.set_num_threads(1)
        learn, n_ep = _kill_learner(path, background)
        arm = _gate_writes(wfd, gate) if gate else None
        class Ready(Callback):
            order = 99
            def after_epoch(self):
                # epoch 0's checkpoints are written (also in the background): kill any time now, or stop the next write
                if self.epoch == 1: arm() if arm else os.write(wfd, b'1')
        quiet_fit(learn, n_ep, cbs=Ready())
    except BaseException:
        import traceback; traceback.print_exc()
    finally: os._exit(0)

def _killed_run(path, background, gate=None, delay=0.):
    "Fork a training run and SIGKILL it `delay` seconds after epoch 1 ends, or, with `gate`, while it is writing that checkpoint"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r); _child(path, w, background, gate)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 120)
        assert ready and os.read(r, 1) == (b'w' if gate else b'1'), 'the training subprocess did not get there'
        if delay: time.sleep(delay)
    finally:  # also when it did not get there: no process is left behind
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0); os.close(r)
    names = files(path)
    return [n for n in names if n.endswith('.tsai_cbs.tmp')], [n for n in names if not n.endswith('.tsai_cbs.tmp')]

def _check_all_load(path, cks, check):
    "Every checkpoint on disk loads fully (weights, optimizer state, resume data); returns their number"
    assert 'm_last.pth' in cks and any(n[2:-4].isdigit() for n in cks), cks  # a best (top-k) checkpoint and the last one
    for n in cks:
        st = load_checkpoint(path/'models'/n)
        check.model.load_state_dict(st['model'])  # strict: every tensor, with its shape
        check.opt.load_state_dict(st['opt'])
        if n == 'm_last.pth': assert st['tsai_cbs']['epoch'] >= 0
    return len(cks)

@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs os.fork')
def test_sigkill_at_random_moments_leaves_complete_checkpoints(in_tmp):
    rng, n_kills, mid_write, loaded = random.Random(0), 18, 0, 0
    check, _ = _kill_learner('check')
    check.create_opt()
    for i in range(n_kills):
        path = in_tmp/f'run{i}'
        tmp, cks = _killed_run(path, background=bool(i % 2), delay=rng.uniform(0, 0.4))
        mid_write += bool(tmp)  # where a kill lands is up to the timing: counted, not required (the test below makes sure)
        loaded += _check_all_load(path, cks, check)
        if i: shutil.rmtree(path)  # ~36 MB a run: the runs would leave ~0.6 GB in the temp folder
    print(f'{n_kills} kills, {mid_write} in the middle of a write, {loaded} checkpoints loaded')
    assert loaded >= 2 * n_kills
    # and a killed run resumes from its last checkpoint
    learn, n_ep = _kill_learner(in_tmp/'run0', resume=True)
    done = load_checkpoint(in_tmp/'run0'/'models'/'m_last.pth')['tsai_cbs']['epoch']
    with pytest.warns(UserWarning, match='resuming a run of'): quiet_fit(learn, done + 2)
    assert learn.save_model.best_epoch == done + 1 and learn.recorder.values[-1][2] == np.linspace(1, 0, n_ep)[done + 1]
    shutil.rmtree(in_tmp/'run0')


@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs os.fork')
@pytest.mark.parametrize('background', [False, True])
@pytest.mark.parametrize('target', ['best', 'm_last.pth', 'm_iter.pth'])
def test_sigkill_in_the_middle_of_a_write_leaves_complete_checkpoints(in_tmp, target, background):
    "The kill lands mid-write by construction: the writer stops after the first bytes of a checkpoint and says so"
    check, _ = _kill_learner('check')
    check.create_opt()
    tmp, cks = _killed_run(in_tmp/'run', background, gate=target)
    # the kill hit that write: its temp file is there, partial (it does not load)
    assert len(tmp) == 1 and (tmp[0].startswith('.m_') if target == 'best' else tmp[0].startswith(f'.{target}.')), tmp
    part = in_tmp/'run'/'models'/tmp[0]
    assert part.stat().st_size >= _GATE_BYTES
    with pytest.raises(ValueError, match='cannot be read, it is damaged'): load_checkpoint(part)
    # a new best is not there at all; a file being rewritten is still the complete previous one; every file on disk loads
    final = '.'.join(tmp[0][1:].split('.')[:2])
    assert (final not in cks) if target == 'best' else (final in cks), (final, cks)
    assert _check_all_load(in_tmp/'run', cks, check) >= 2


def test_ddp_rank0_writes_others_wait_then_load_the_same_best(in_tmp):
    res = run_distributed('''
        import os, time, torch
        import tsai_cbs.save_model as sm
        from tsai_cbs.testing import synth_learner, patch_distributed_dl_for_cpu
        patch_distributed_dl_for_cpu()
        r = int(os.environ['RANK'])  # the process group starts in distrib_ctx
        slow_write = sm.atomic_write
        def atomic_write(path, write_fn):  # a slow disk on rank 0: the other rank must wait for the last best
            if path.name == 'model.pth': time.sleep(0.5)
            return slow_write(path, write_fn)
        sm.atomic_write = atomic_write
        cb = sm.SaveModel(with_opt=True, save_last=True, every_n_batches=2, background=(r == 0))
        learn = synth_learner('regression', cbs=cb, lr=3e-2)
        with learn.distrib_ctx(cpu=True), learn.no_bar(), learn.no_logging(): learn.fit(4)
        best = sm.load_checkpoint('models/model.pth')['model']
        same = all(torch.equal(best[k], v) for k, v in learn.model.state_dict().items())
        open(f'rank{r}.txt', 'w').write(f"{cb.n_written} {cb.best_epoch} {cb.best:.6f} {same}")
        # resume under DDP: a run crashed after epoch 2 of 4, resumed, equals the straight run above
        import fastai.callback.schedule  # fit_one_cycle
        from fastai.callback.core import Callback
        from fastai.torch_core import get_model
        class Crash(Callback):
            order = 99
            def after_epoch(self):
                if self.epoch == 1: raise RuntimeError('simulated crash')
        final = {}
        from tsai_cbs.batch_subsampler import BatchSubsampler  # draws with seed + rank: each rank resumes its own generator
        sub = lambda: BatchSubsampler(sample_pct=.75, seed=5)
        for name, cbs in (('straight', [sm.SaveModel(at_end=True), sub()]), ('crash', [sm.SaveModel(resume=True), Crash(), sub()]),
                          ('resumed', [sm.SaveModel(resume=True, at_end=True), sub()])):
            learn = synth_learner('regression', path='resume' if name != 'straight' else 'straight', cbs=cbs, lr=3e-2)
            try:
                with learn.distrib_ctx(cpu=True), learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(4)
            except RuntimeError: pass
            final[name] = {k: v.clone() for k, v in get_model(learn.model).state_dict().items()}  # still DDP-wrapped after the crash
        ok = all(torch.allclose(final['resumed'][k], v, rtol=1e-5, atol=1e-6) for k, v in final['straight'].items())
        differs = not all(torch.equal(final['crash'][k], v) for k, v in final['straight'].items())
        open(f'resume{r}.txt', 'w').write(f"{ok} {differs}")
    ''', nproc=2, cwd=in_tmp, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    (n0, e0, b0, same0), (n1, e1, b1, same1) = [(in_tmp/f'rank{r}.txt').read_text().split() for r in (0, 1)]
    assert int(n0) > 0 and int(n1) == 0  # only rank 0 wrote
    assert (e0, b0) == (e1, b1)  # rank 0's values decided for both
    assert same0 == same1 == 'True'  # both loaded the final best file, fully written
    assert sorted(p.name for p in (in_tmp/'models').iterdir()) == ['model.pth', 'model_iter.pth', 'model_last.pth']
    assert [(in_tmp/f'resume{r}.txt').read_text() for r in (0, 1)] == ['True True'] * 2


# ---- the state protocol and the resume file's checks

def test_callback_states_keys_adapters_and_mismatches(in_tmp):
    from fastai.callback.tracker import EarlyStoppingCallback, ReduceLROnPlateau, SaveModelCallback
    from tsai_cbs.save_model import callback_states, load_callback_states, match_callback_states
    from tsai_cbs.stop_after import StopAfter
    learn = synth_learner(cbs=[EarlyStoppingCallback(patience=5), ReduceLROnPlateau(patience=1), SaveModelCallback(fname='fa'),
                               StopAfter(max_epochs=9), StopAfter(max_batches=1000)])
    quiet_fit(learn, 3)
    st = callback_states(learn)
    assert list(st) == ['recorder', 'early_stopping', 'reduce_lr_on_plateau', 'save_model', 'stop_after', 'stop_after_1']
    assert st['early_stopping'] == dict(cls='EarlyStoppingCallback', state=dict(best=learn.early_stopping.best, wait=learn.early_stopping.wait,
                                                                               new_best=learn.early_stopping.new_best))
    assert st['stop_after']['state']['n_epochs'] == 3 and st['stop_after_1']['state']['n_batches'] == 24
    assert len(st['recorder']['state']['values']) == 3
    # into a fresh Learner with the same callbacks: every value put back
    s1, s2 = StopAfter(max_epochs=9), StopAfter(max_batches=1000)
    fresh = synth_learner(cbs=[EarlyStoppingCallback(patience=5), ReduceLROnPlateau(patience=1), SaveModelCallback(fname='fa'), s1, s2])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        load_callback_states(fresh, st)
    assert (fresh.early_stopping.best, fresh.early_stopping.wait) == (learn.early_stopping.best, learn.early_stopping.wait)
    assert fresh.reduce_lr_on_plateau.best == learn.reduce_lr_on_plateau.best and fresh.save_model.best == learn.save_model.best
    assert fresh.recorder.values == learn.recorder.values and fresh.recorder.lrs == learn.recorder.lrs
    assert [s1.n_epochs, s2.n_batches] == [3, 24]
    # missing and extra callbacks are named; another class under a name is an error, before anything is loaded
    other = synth_learner(cbs=[ReduceLROnPlateau(), StopAfter(max_epochs=2), Grab()])
    with pytest.warns(UserWarning) as ws: match_callback_states(other, st)
    msgs = ' | '.join(str(w.message) for w in ws)
    assert 'early_stopping (EarlyStoppingCallback), save_model (SaveModelCallback), stop_after_1 (StopAfter)' in msgs and 'not restored' in msgs
    other = synth_learner(cbs=[ReduceLROnPlateau(), EarlyStoppingCallback(), SaveModelCallback(), StopAfter(max_epochs=2),
                               StopAfter(max_epochs=2), EpochLogLike()])
    with pytest.warns(UserWarning, match=r'epoch_log_like \(EpochLogLike\): on this Learner but not in the checkpoint'):
        match_callback_states(other, st)
    st2 = dict(st, stop_after=dict(st['stop_after'], cls='OtherCallback'))
    before = other.stop_after.n_epochs
    with pytest.raises(ValueError, match=r'stop_after \(OtherCallback there, StopAfter here\)'): load_callback_states(other, st2)
    assert other.stop_after.n_epochs == before and 'values' not in other.recorder.__dict__


class EpochLogLike(Callback):
    "A user's callback with the state protocol"
    def __init__(self): self.seen = []
    def after_epoch(self): self.seen.append(self.epoch)
    def state_dict(self): return dict(seen=list(self.seen))
    def load_state_dict(self, state): self.seen = list(state['seen'])


def test_resume_file_damaged_unknown_version_or_other_model_is_a_clear_error(in_tmp):
    learn = synth_learner(cbs=SaveModel(resume=True))
    with pytest.raises(RuntimeError, match='simulated crash'): quiet_fit(learn, 4, cbs=Crash(1))
    f = in_tmp/'models'/'model_last.pth'
    good = f.read_bytes()
    def refused(match, learn=learn):
        w = {k: v.clone() for k, v in learn.model.state_dict().items()}
        with pytest.raises(ValueError, match=match): quiet_fit(learn, 4)
        assert all(torch.equal(w[k], v) for k, v in learn.model.state_dict().items())  # nothing changed, nothing trained
    f.write_bytes(good[:len(good) // 2])  # cut short, e.g. by a full disk or an interrupted copy
    refused(r"`resume`: the checkpoint .*model_last.pth cannot be read, it is damaged")
    ck = torch.load(io.BytesIO(good), weights_only=False)
    ck['tsai_cbs']['version'] = 7
    torch.save(ck, f)
    refused(r"model_last.pth has checkpoint format version 7; this version of tsai_cbs reads version 2")
    f.write_bytes(good)
    refused(r"holds the weights of another model", synth_learner(cbs=SaveModel(resume=True), hidden=8))
    with warnings.catch_warnings(record=True) as ws:  # the good file resumes
        warnings.simplefilter('always')
        quiet_fit(synth_learner(cbs=SaveModel(resume=True)), 4)
    assert not [w for w in ws if 'resum' in str(w.message) or 'restored' in str(w.message)]


def _refused(learn, match):
    "`fit` raises an OSError matching `match` before any training: no epoch recorded, the weights untouched"
    w = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(OSError, match=match): quiet_fit(learn, 2, cbs=SaveModel())
    assert learn.recorder.values == [] and all(torch.equal(w[k], v) for k, v in learn.model.state_dict().items())

def test_unwritable_or_blocked_folder_is_an_oserror_before_training(in_tmp):
    Path('a').mkdir(); Path('a/models').write_text('a file where the folder should be')
    _refused(synth_learner(path='a'), r'SaveModel cannot write checkpoints to a/models: .*is a file')
    Path('b').write_text('a file')
    _refused(synth_learner(path='b/run'), r'SaveModel cannot write checkpoints to b/run/models')
    quiet_fit(synth_learner(path='c'), 1, cbs=SaveModel())  # a folder that does not exist yet is fine
    assert files('c') == ['model.pth']


def _deny_writes(monkeypatch, folder):
    "What the kernel answers for a `folder` without write permission, to root too (root writes through modes): no new file or folder in it, `os.access` says no"
    folder = Path(folder).resolve()
    real_open, real_mkdir, real_access = os.open, os.mkdir, os.access
    def denied(p): raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(p))
    def path(p): return Path(os.fsdecode(p)).resolve() if isinstance(p, (str, bytes, os.PathLike)) else None  # not a file descriptor
    def in_folder(p): return (q := path(p)) is not None and q.parent == folder
    def open_(p, flags, *a, **kw):
        if flags & os.O_CREAT and in_folder(p): denied(p)
        return real_open(p, flags, *a, **kw)
    def mkdir_(p, *a, **kw):
        if in_folder(p): denied(p)
        return real_mkdir(p, *a, **kw)
    def access_(p, mode, *a, **kw):
        if mode & os.W_OK and path(p) == folder: return False
        return real_access(p, mode, *a, **kw)
    monkeypatch.setattr(os, 'open', open_); monkeypatch.setattr(os, 'mkdir', mkdir_); monkeypatch.setattr(os, 'access', access_)

@pytest.mark.parametrize('models_exists', [True, False])
def test_read_only_folder_is_an_oserror_before_training(in_tmp, monkeypatch, models_exists):
    "A checkpoint folder (or the folder it would be made in) without write permission: refused in `before_fit`, even for root"
    ro = Path('ro/models') if models_exists else Path('ro')
    ro.mkdir(parents=True)
    with monkeypatch.context() as m:
        _deny_writes(m, ro)
        with pytest.raises(PermissionError): Path(ro/'probe').touch()  # the denial is real for this process
        _refused(synth_learner(path='ro'), r'SaveModel cannot write checkpoints to ro/models')
    assert sorted(p.name for p in Path('ro').rglob('*')) == (['models'] if models_exists else [])  # nothing was created
    quiet_fit(synth_learner(path='ro'), 1, cbs=SaveModel())  # the same run, allowed to write: the permission was the reason
    assert files('ro') == ['model.pth']


@pytest.mark.skipif(not hasattr(os, 'geteuid') or os.geteuid() == 0, reason='root writes through permission bits')
def test_read_only_folder_by_its_mode_is_an_oserror_before_training(in_tmp):
    "The same with the folder's real permission bits (a non-root user)"
    Path('ro/models').mkdir(parents=True); os.chmod('ro/models', 0o500)
    try: _refused(synth_learner(path='ro'), r'SaveModel cannot write checkpoints to ro/models')
    finally: os.chmod('ro/models', 0o700)
    Path('ro2').mkdir(); os.chmod('ro2', 0o500)
    try: _refused(synth_learner(path='ro2'), r'SaveModel cannot write checkpoints to ro2/models')
    finally: os.chmod('ro2', 0o700)


def test_mode_auto_knows_error_metrics_and_warns_when_it_cannot_tell(in_tmp):
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for m in ('mae', 'rmse', 'valid_mse', 'valid_loss', 'error_rate'): assert SaveModel(monitor=m).comp is np.less, m
        for m in ('accuracy', 'f1_score', 'r2_score', 'roc_auc_score'): assert SaveModel(monitor=m).comp is np.greater, m
        assert SaveModel(monitor='weird_metric', mode='min').comp is np.less  # given: no warning
    # a name that tells nothing: fastai's choice (higher), with a warning at `fit`, once the Learner's metrics are known to say nothing
    learn = synth_learner(metrics=Scripted([2., 3., 1.], name='weird_metric2'), cbs=SaveModel(monitor='weird_metric2'))
    with pytest.warns(UserWarning, match="mode='auto' cannot tell whether a higher or a lower `weird_metric2` is better .neither its name nor its metric says.; assuming higher"):
        quiet_fit(learn, 3)
    assert learn.save_model.comp is np.greater and (learn.save_model.best, learn.save_model.best_epoch) == (3., 1)
    # mae really is minimised during fit
    from fastai.metrics import mae
    learn = synth_learner(metrics=mae, cbs=SaveModel(monitor='mae'))
    quiet_fit(learn, 4)
    maes = [v[2] for v in learn.recorder.values]
    assert learn.save_model.best == min(maes) and learn.save_model.best_epoch == int(np.argmin(maes))


class Declared(Scripted):
    "A scripted metric that says a lower value is better, as every DIR metric of tsai_cbs.metrics does"
    lower_is_better = True


def test_mode_auto_follows_the_direction_a_metric_declares(in_tmp):
    from tsai_cbs.metrics import DIRMetric, shot_regions
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)  # the metric says which way is better: no warning
        learn = synth_learner(metrics=Declared([2., 1., 3.], name='odd'), cbs=SaveModel(monitor='odd'))
        quiet_fit(learn, 3)
        assert learn.save_model.comp is np.less and (learn.save_model.best, learn.save_model.best_epoch) == (1., 1)
        assert learn.save_model.min_delta == 0 and learn.save_model._lower
        # the DIR metrics of the package, on real training: `few_mae` and `mae` are minimised
        learn = synth_learner(path='dir', n_train=128, n_valid=64)
        regions = shot_regions(learn.dls.train.dataset.tensors[1])
        learn.metrics = [DIRMetric('mae', regions=regions)]
        learn.add_cb(SaveModel(monitor='mae', min_delta=1e-9))
        quiet_fit(learn, 4)
        vals = [v[2] for v in learn.recorder.values]
        assert learn.save_model.best == min(vals) and learn.save_model.best_epoch == int(np.argmin(vals))
        assert learn.save_model.min_delta == -1e-9  # fastai's convention for a lower-is-better tracker
        sm = SaveModel(monitor='few_mae')
        learn = synth_learner(path='few', metrics=DIRMetric('few_mae', regions=regions), cbs=sm)
        quiet_fit(learn, 2)
        assert sm.comp is np.less and sm.best == np.nanmin([v[2] for v in learn.recorder.values])
        # two of them: each decides its own direction at its `before_fit`; neither takes the other's provisional one for a mistake
        a, b = SaveModel(monitor='odd', fname='a'), SaveModel(monitor='odd', fname='b', every_epoch=True)
        learn = synth_learner(path='two', metrics=Declared([2., 1., 3.], name='odd'), cbs=[a, b])
        quiet_fit(learn, 3)
        assert a.comp is np.less and b.comp is np.less and (a.best, b.best) == (1., 1.)
    # fastai's own trackers decide from the name: a tracker maximising a metric that declares the opposite gets a warning
    from fastai.callback.tracker import EarlyStoppingCallback
    learn = synth_learner(path='es', metrics=Declared([2., 1., 3.], name='odd2'),
                          cbs=[SaveModel(monitor='odd2'), EarlyStoppingCallback(monitor='odd2', patience=5)])
    with pytest.warns(UserWarning, match=r'EarlyStoppingCallback monitors `odd2` as higher is better, but its metric declares lower is better; give it comp=np.less'):
        quiet_fit(learn, 3)


def test_at_end_best_path_never_names_a_file_holding_other_weights(in_tmp):
    learn = synth_learner(cbs=[SaveModel(monitor='score', mode='min', at_end=True), Grab()], metrics=Scripted([1., 0., 2.]))
    quiet_fit(learn, 3)
    cb = learn.save_model
    assert cb.best_epoch == 1 and cb.best_path is None  # model.pth now holds the final weights
    saved = load_checkpoint('models/model.pth')
    assert all(torch.equal(saved[k], w) for k, w in learn.grab.w.items())
    # with a template both stay: the best at its own name, the final one at the last epoch's
    class Keep(Callback):
        order = 99
        def before_fit(self): self.ws = []
        def after_epoch(self): self.ws.append({k: v.clone() for k, v in self.model.state_dict().items()})
    learn = synth_learner(path='t', metrics=Scripted([1., 0., 2.]), cbs=[SaveModel(monitor='score', mode='min', fname='m_{epoch}', at_end=True), Keep()])
    quiet_fit(learn, 3)
    cb = learn.save_model
    assert cb.best_path.name == 'm_1.pth' and files('t') == ['m_1.pth', 'm_2.pth']  # the best and the final one
    assert all(torch.equal(load_checkpoint(cb.best_path)[k], v) for k, v in learn.keep.ws[1].items())


def test_learner_checkpoint_loads_as_the_learner_after_fit(in_tmp):
    from fastai.learner import load_learner
    from tsai_cbs.loss_weights import LDSWeightedLoss
    learn = synth_learner()
    loss = learn.loss_func
    learn.add_cb(LDSWeightedLoss(labels=learn.dls.train.dataset.tensors[1]))
    quiet_fit(learn, 2, cbs=SaveModel(save_as='learner'))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        inf = load_learner('models/model.pkl')
    assert type(inf.loss_func) is type(loss) and '_tsai_cbs_fit_cleanups' not in inf.__dict__  # not the per-sample stand-in
    assert not any(type(c).__name__ == '_LastCheckpoint' for c in inf.cbs)
    inf.dls = learn.dls
    with inf.no_bar(), inf.no_logging(): v = inf.validate()  # was an IndexError
    assert np.isfinite(v[0])
    assert learn.loss_func is loss and not hasattr(learn, 'kept_rows')


def test_background_iter_file_holds_its_own_batch_and_interrupted_lr_find(in_tmp):
    class AtTrainEnd(Callback):
        def after_train(self): self.w = {k: v.clone() for k, v in self.model.state_dict().items()}
    learn = synth_learner(cbs=[SaveModel(every_n_batches=1, background=True), AtTrainEnd()])
    quiet_fit(learn, 1)
    it = load_checkpoint('models/model_iter.pth')
    assert all(torch.equal(it[k], v) for k, v in learn.at_train_end.w.items())  # the last batch's weights, not the first's
    # an lr_find interrupted by Ctrl-C leaves nothing that stops the next fit from saving
    class Interrupt(Callback):
        def after_batch(self):
            if self.train_iter == 3: raise KeyboardInterrupt
    learn = synth_learner(path='lr', cbs=[SaveModel(save_last=True), Interrupt()])
    with pytest.raises(KeyboardInterrupt), learn.no_bar(), learn.no_logging(): learn.lr_find(num_it=20, show_plot=False)
    learn.remove_cb(learn.interrupt)
    assert not (Path('lr')/'models').exists() or files('lr') == []
    quiet_fit(learn, 2)
    assert learn.save_model.best_epoch is not None and files('lr') == ['model.pth', 'model_last.pth']


def test_adapters_of_mixed_precision_and_param_scheduler(in_tmp):
    from fastai.callback.fp16 import MixedPrecision
    from fastcore.foundation import L
    from tsai_cbs.save_model import callback_states, load_callback_states
    def mp_learner(scale):
        learn = synth_learner(cbs=MixedPrecision())
        learn.scaler = torch.amp.GradScaler('cpu', init_scale=scale)  # an enabled scaler; fastai makes a CUDA one in before_fit
        return learn
    learn = mp_learner(512.)
    learn.mixed_precision.scales = L([1024., 512.])
    st = callback_states(learn)
    assert st['mixed_precision']['cls'] == 'MixedPrecision' and st['mixed_precision']['state']['scaler']['scale'] == 512.
    fresh = mp_learner(65536.)
    load_callback_states(fresh, st)
    assert fresh.scaler.get_scale() == 512. and list(fresh.mixed_precision.scales) == [1024., 512.]
    # fit_one_cycle's ParamScheduler: the values it set so far come back with a resume
    learn = synth_learner(cbs=SaveModel(resume=True))
    with pytest.raises(RuntimeError, match='simulated crash'): quiet_fit(learn, 3, cbs=Crash(1), one_cycle=True)
    hps = load_checkpoint('models/model_last.pth')['tsai_cbs']['callbacks']['param_scheduler']['state']['hps']
    assert len(hps['lr']) == 8 and hps['lr'] == learn.recorder.lrs[:8]
    class Hps(Callback):
        order = 99
        def after_fit(self): self.hps = {k: list(v) for k, v in self.learn.param_scheduler.hps.items()}
    learn, straight = synth_learner(cbs=SaveModel(resume=True)), synth_learner(path='s')
    h1, h2 = Hps(), Hps()
    quiet_fit(learn, 3, cbs=h1, one_cycle=True); quiet_fit(straight, 3, cbs=h2, one_cycle=True)
    assert h1.hps == h2.hps and len(h1.hps['lr']) == 24


def test_a_state_a_resume_could_not_read_is_an_error_when_written(in_tmp):
    class NumpyState(Callback):
        def state_dict(self): return dict(arr=np.zeros(3), ok=np.float32(1.))  # numpy scalars load; arrays do not
        def load_state_dict(self, state): pass
    learn = synth_learner(cbs=[SaveModel(save_last=True), NumpyState()])
    with pytest.raises(TypeError, match=r'callback numpy_state \(NumpyState\): its state_dict\(\) holds a numpy.ndarray'): quiet_fit(learn, 2)
    assert len(learn.recorder.values) == 1  # found when the first `last` checkpoint is written, not at resume time
