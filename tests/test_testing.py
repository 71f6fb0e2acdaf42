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
