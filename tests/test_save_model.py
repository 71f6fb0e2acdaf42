"SaveModel on real Learners and real files: exact resume, SIGKILL at random moments, DDP, ranking, NaN, loading on current torch."
import os, random, select, signal, subprocess, sys, threading, time, warnings
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
    # a notebook cell with resume=True run a second time: nothing is left to train, which must not pass silently
    learn = synth_learner()
    quiet_fit(learn, 3, cbs=SaveModel(resume=True))
    values = [list(v) for v in learn.recorder.values]
    with pytest.warns(UserWarning, match='holds a finished run .epochs 0-2., so this fit has nothing left to train'):
        quiet_fit(learn, 3, cbs=SaveModel(resume=True))
    assert [list(v) for v in learn.recorder.values] == values
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)  # a run crashed before its end resumes without that warning
        b = synth_learner(path='b')
        with pytest.raises(RuntimeError, match='simulated crash'): quiet_fit(b, 3, cbs=[SaveModel(resume=True), Crash(1)])
        quiet_fit(synth_learner(path='b'), 3, cbs=SaveModel(resume=True))


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

def _child(path, wfd, background):
    try:
        learn, n_ep = _kill_learner(path, background)
        class Ready(Callback):
            order = 99
            def after_epoch(self):
                if self.epoch == 1: os.write(wfd, b'1')  # epoch 0's checkpoints are written (also in the background): kill any time now
        quiet_fit(learn, n_ep, cbs=Ready())
    except BaseException:
        import traceback; traceback.print_exc()
    finally: os._exit(0)

@pytest.mark.skipif(not hasattr(os, 'fork'), reason='needs os.fork')
def test_sigkill_at_random_moments_leaves_complete_checkpoints(in_tmp):
    rng, n_kills, mid_write, loaded = random.Random(0), 24, 0, 0
    check, _ = _kill_learner('check')
    check.create_opt()
    for i in range(n_kills):
        path = in_tmp/f'run{i}'
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r); _child(path, w, background=bool(i % 2))
        os.close(w)
        ready, _, _ = select.select([r], [], [], 60)
        assert ready and os.read(r, 1) == b'1', 'the training subprocess did not start'
        time.sleep(rng.uniform(0, 0.4))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0); os.close(r)
        names = files(path)
        tmp = [n for n in names if n.endswith('.tsai_cbs.tmp')]
        mid_write += bool(tmp)
        cks = [n for n in names if n not in tmp]
        assert 'm_last.pth' in cks and any(n.startswith('m_') and n[2:-4].isdigit() for n in cks), names
        for n in cks:  # every checkpoint loads fully: weights, optimizer state, resume data
            f = path/'models'/n
            st = load_checkpoint(f)
            check.model.load_state_dict(st['model'])  # strict: every tensor, with its shape
            check.opt.load_state_dict(st['opt'])
            loaded += 1
            if n == 'm_last.pth': assert st['tsai_cbs']['epoch'] >= 0
    print(f'{n_kills} kills, {mid_write} in the middle of a write, {loaded} checkpoints loaded')
    assert loaded >= 2 * n_kills
    assert mid_write >= 1, 'no kill landed in the middle of a write: the test did not exercise atomicity'
    # and a killed run resumes from its last checkpoint
    learn, n_ep = _kill_learner(in_tmp/'run0', resume=True)
    done = load_checkpoint(in_tmp/'run0'/'models'/'m_last.pth')['tsai_cbs']['epoch']
    with pytest.warns(UserWarning, match='resuming a run of'): quiet_fit(learn, done + 2)
    assert learn.save_model.best_epoch == done + 1 and learn.recorder.values[-1][2] == np.linspace(1, 0, n_ep)[done + 1]


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
        for name, cbs in (('straight', [sm.SaveModel(at_end=True)]), ('crash', [sm.SaveModel(resume=True), Crash()]),
                          ('resumed', [sm.SaveModel(resume=True, fname='final', at_end=True)])):
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
