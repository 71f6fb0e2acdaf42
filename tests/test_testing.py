"The shared test helper builds real Learners and runs real distributed training on the CPU."
import torch
from tsai_cbs.testing import synth_learner, synth_dls, run_distributed, TASKS

def test_tasks_train(in_tmp):
    for task in TASKS:
        learn = synth_learner(task)
        with learn.no_bar(), learn.no_logging(): learn.fit(3, lr=1e-2)
        losses = [v[1] for v in learn.recorder.values]
        assert losses[-1] < losses[0], (task, losses)

def test_dls_options():
    dls = synth_dls(n_train=50, bs=16, drop_last=True, num_workers=2)
    assert len(dls.train) == 3
    xb, yb = dls.train.one_batch()
    assert xb.shape == (16, 3, 64) and yb.shape == (16,)

def test_ddp_cpu(in_tmp):
    res = run_distributed('''
        import torch, torch.distributed as dist
        from tsai_cbs.testing import synth_learner, patch_distributed_dl_for_cpu
        patch_distributed_dl_for_cpu()
        from fastai.callback.core import Callback
        class Seen(Callback):
            def before_fit(self): self.n = 0
            def after_batch(self):
                if self.training: self.n += 1; self.dl_type = type(self.learn.dl).__name__
        learn = synth_learner('regression', cbs=Seen())
        with learn.distrib_ctx(cpu=True), learn.no_bar(), learn.no_logging(): learn.fit(1)
        r = dist.get_rank()
        open(f'rank{r}.txt', 'w').write(f'{r} {learn.seen.dl_type} {learn.seen.n}')
    ''', nproc=2, cwd=in_tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    # each rank sees fastai's DistributedDL with half of the 8 training batches
    assert [(in_tmp/f'rank{r}.txt').read_text() for r in (0, 1)] == ['0 DistributedDL 4', '1 DistributedDL 4']


def test_ddp_run_judged_by_finished_ranks(in_tmp):
    "Exit-time teardown never runs (an atexit handler that would abort is skipped); files left open are flushed; a rank that raises fails the run"
    res = run_distributed('''
        import atexit, os, torch, torch.distributed as dist
        dist.init_process_group('gloo')  # never destroyed
        r = dist.get_rank()
        t = torch.tensor([r + 1.]); dist.all_reduce(t)
        out = open(f'rank{r}.txt', 'w'); out.write(f'{t.item()}')  # neither closed nor flushed
        atexit.register(os.abort)  # what gloo's threads can do to a rank at interpreter exit
        print(f'rank {r} done')
    ''', nproc=2, cwd=in_tmp, env={'PYTHONUNBUFFERED': ''})  # stdout buffered whatever the caller's environment: the launcher must flush it
    assert (res.returncode, res.torchrun_returncode, res.finished_ranks) == (0, 0, [0, 1]), res.stderr[-3000:]
    assert [(in_tmp/f'rank{r}.txt').read_text() for r in (0, 1)] == ['3.0', '3.0']
    assert sorted(l for l in res.stdout.splitlines() if l.endswith(' done')) == ['rank 0 done', 'rank 1 done']  # stdout flushed
    assert not (in_tmp/'_tsai_cbs_ddp_script.py').exists()
    res = run_distributed('''
        import torch.distributed as dist
        dist.init_process_group('gloo')
        if dist.get_rank() == 1: 1 / 0
    ''', nproc=2, cwd=in_tmp)
    assert res.returncode != 0 and res.torchrun_returncode != 0 and 1 not in res.finished_ranks
    assert '[rank1] ZeroDivisionError' in res.stderr and 'line 4' in res.stderr  # the script's own line
