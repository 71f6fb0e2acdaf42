"Tests of `tsai_cbs.epoch_log.EpochLog`: line content against the Recorder, patience and ETA, early stop, logger levels, rank 0 only (and one λ for every rank under DDP)."
import logging, re
import pytest
from fastai.callback.tracker import EarlyStoppingCallback, ReduceLROnPlateau
import fastai.callback.schedule  # Learner.lr_find

import tsai_cbs.epoch_log as el
from tsai_cbs.epoch_log import EpochLog
from tsai_cbs.testing import synth_learner, run_distributed


def fit(learn, *a, **k):
    with learn.no_bar(): learn.fit(*a, **k)  # logging on: EpochLog writes only then (its line replaces fastai's printed row)


def parse(line):
    return dict(p.split(' ', 1) for p in line.split(' | '))


def test_lines_match_recorder(in_tmp, capsys):
    es, lrp = EarlyStoppingCallback(patience=3), ReduceLROnPlateau(patience=2)
    learn = synth_learner(cbs=[es, lrp, EpochLog(fmt='{:.8e}')], n_train=64, n_valid=32, metrics=[lambda p, y: (p - y).abs().mean()])
    fit(learn, 3)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    names = learn.recorder.metric_names[1:-1]
    for e, (line, vals) in enumerate(zip(lines, learn.recorder.values)):
        d = parse(line)
        assert d['epoch'] == f'{e+1}/3'
        for n, v in zip(names, vals): assert float(d[n]) == pytest.approx(v, rel=1e-7)
        assert re.fullmatch(r'\d\d:\d\d', d['time']) and re.fullmatch(r'\d\d:\d\d', d['eta'])
        assert float(d['lr']) == pytest.approx(learn.opt.hypers[-1]['lr'], rel=1e-2)
    # patience left after the last epoch, as the trackers count it
    d = parse(lines[-1])
    assert d['patience'] == f'{3 - es.wait}/3' and d['lr_patience'] == f'{2 - lrp.wait}/2'


def test_early_stop_last_line(in_tmp, capsys):
    "Early stopping cancels after_epoch before EpochLog: the last line comes at after_fit, with 0 patience left"
    learn = synth_learner(cbs=[EarlyStoppingCallback(patience=1, comp=lambda a, b: False), EpochLog()], n_train=64, n_valid=32)
    fit(learn, 5)
    lines = capsys.readouterr().err.splitlines()
    lines = [l for l in lines if l.startswith('epoch ')]
    assert len(learn.recorder.values) == 1 and len(lines) == 1
    assert parse(lines[0])['patience'] == '0/1'


def test_logger_and_batches(in_tmp, caplog):
    learn = synth_learner(cbs=EpochLog(to='tsai.test', every_n_batches=3), n_train=256, n_valid=32)  # 8 batches
    with caplog.at_level(logging.INFO, logger='tsai.test'): fit(learn, 2)
    assert [r.levelno for r in caplog.records] == [logging.INFO] * 2  # batch lines are DEBUG
    caplog.clear()
    lg = logging.getLogger('tsai.test2')
    learn = synth_learner(cbs=EpochLog(to=lg, every_n_batches=3), n_train=256, n_valid=32)
    with caplog.at_level(logging.DEBUG, logger='tsai.test2'): fit(learn, 2)
    msgs = [r.getMessage() for r in caplog.records]
    assert [m.split(' loss ')[0] for m in msgs if ' batch ' in m] == ['epoch 1/2 batch 3/8', 'epoch 1/2 batch 6/8', 'epoch 2/2 batch 3/8', 'epoch 2/2 batch 6/8']
    assert sum(m.startswith('epoch ') and ' batch ' not in m for m in msgs) == 2


def test_quiet_outside_fit_and_off_rank0(in_tmp, capsys, monkeypatch):
    log = EpochLog()
    learn = synth_learner(cbs=log, n_train=64, n_valid=32)
    with learn.no_bar(), learn.no_logging():
        learn.lr_find(num_it=4, show_plot=False)
        learn.validate()
    assert log.lines == 0 and capsys.readouterr().err == ''
    monkeypatch.setattr(el, 'is_rank0', lambda: False)
    fit(learn, 1)
    assert log.lines == 0 and capsys.readouterr().err == ''


def test_errors():
    for kw, m in [(dict(to=1), '`to`'), (dict(every_n_batches=-1), 'every_n_batches'), (dict(every_n_batches=1.5), 'every_n_batches'),
                  (dict(fmt='{:q}'), '`fmt`'), (dict(fmt=3), 'fmt')]:
        with pytest.raises((ValueError, TypeError), match=m): EpochLog(**kw)


def test_ddp_rank0_log_and_one_lambda(in_tmp):
    "Under DDP only rank 0 writes lines, and every rank trains with rank 0's λ"
    res = run_distributed('''
        import sys, torch, torch.distributed as dist
        from torch import nn
        from tsai_cbs.testing import synth_learner, patch_distributed_dl_for_cpu
        from tsai_cbs.multi_loss import MultiLoss
        from tsai_cbs.adaptive_loss import AdaptiveCountsWeight
        from tsai_cbs.epoch_log import EpochLog
        patch_distributed_dl_for_cpu()
        r = dist.get_rank() if dist.is_initialized() else None
        terms = {'r': {'mse': lambda p, y: ((p - y)**2).mean(), 'counts': lambda p, y: (p - y).abs().mean()}}
        acw, log = AdaptiveCountsWeight({'r': 0.3}), EpochLog()
        learn = synth_learner('regression', loss_func=MultiLoss(terms), cbs=[acw, log], n_train=128)
        with learn.distrib_ctx(cpu=True), learn.no_bar(): learn.fit(3)
        r = dist.get_rank() if dist.is_initialized() else r
        lams = [h['lambda_r'] for h in acw.lambda_history] + [learn.loss_func.weight('r', 'counts')]
        open(f'rank{r}.txt', 'w').write(f'{log.lines} ' + ' '.join(f'{v:.9g}' for v in lams))
    ''', nproc=2, cwd=in_tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = [(in_tmp/f'rank{r}.txt').read_text().split() for r in (0, 1)]
    assert r0[0] == '3' and r1[0] == '0'
    assert r0[1:] == r1[1:] and len(r0) == 5


def test_batch_lines_read_no_loss_off_rank0(in_tmp, monkeypatch):
    "Off rank 0 a batch line is neither written nor prepared: the loss (a device sync on GPU) is not read"
    import torch
    reads = {'n': 0}
    orig = torch.Tensor.__float__
    def counted(self): reads['n'] += 1; return orig(self)
    learn = synth_learner(cbs=EpochLog(every_n_batches=1), n_train=128, n_valid=32)
    monkeypatch.setattr(el, 'is_rank0', lambda: False)
    monkeypatch.setattr(torch.Tensor, '__float__', counted)
    fit(learn, 1)
    monkeypatch.undo()
    assert reads['n'] == 0 and learn.cbs.filter(lambda c: isinstance(c, EpochLog))[0].lines == 0
