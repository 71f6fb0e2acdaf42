"`python -m tsai_cbs.demo`: the real command on real data (--quick), its files, its table, resuming, and a missing sktime."
import json, os, subprocess, sys, warnings
from pathlib import Path
import numpy as np
import pytest, torch

pytest.importorskip('sktime')
from tsai_cbs.demo import load_data, main, parse_args, ARMS, COLUMNS
from tsai_cbs.metrics import dir_scores, shot_regions

def _run(*args, cwd, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS='1', MPLBACKEND='Agg')
    return subprocess.run([sys.executable, '-m', 'tsai_cbs.demo', *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

def _png(p): return p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

def test_quick_run(tmp_path):
    res = _run('--quick', cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    # the default folder is new, under the current one, and printed
    made = [p for p in tmp_path.iterdir() if p.name.startswith('tsai_cbs_demo_tecator_')]
    assert len(made) == 1 and str(made[0]) in out
    d = made[0]
    assert '172 training / 43 test' in out and 'x 8 epochs' in out
    # EpochLog lines as progress: first and last epoch of every run on the console, every epoch in train.log
    arms = ('plain', 'lds', 'fds', 'lds+fds')  # every arm by default
    for run in (f'{a}_seed{s}' for a in arms for s in (0, 1)):
        assert f'[{run}] epoch 1/8 |' in out and f'[{run}] epoch 8/8 |' in out, run
    assert len((d/'train.log').read_text().splitlines()) == 8 * 8
    for f in ('label_histogram.png', 'loss_curves.png', 'region_errors.png', 'pred_vs_true.png', *(f'runs/{a}_seed0_graph.png' for a in arms)):
        assert _png(d/f), f
    assert sorted(p.name for p in (d/'runs'/'models').iterdir()) == sorted(f'{a}_seed{s}.pth' for a in arms for s in (0, 1))
    # the table printed is the one measured: recompute every cell from the stored predictions
    Xtr, ytr, Xte, yte = load_data('tecator')
    regions = shot_regions(ytr)
    summary = json.loads((d/'results.json').read_text())['summary']
    for arm in arms:
        runs = [json.loads((d/'runs'/f'{arm}_seed{s}.json').read_text()) for s in (0, 1)]
        scores = [dir_scores(torch.tensor(r['preds']), torch.tensor(yte), regions) for r in runs]
        for k in ('mae', 'many_mae', 'medium_mae', 'few_mae', 'gm', 'balanced_mae'):
            vals = [s[k] for s in scores]
            assert summary[arm][k][0] == pytest.approx(np.mean(vals), rel=1e-9), (arm, k)
            row = next(l for l in out.splitlines() if l.startswith(f'| {arm} ')).strip('| ').split(' | ')
            m, s = row[1 + [c for c, _ in COLUMNS].index(k)].split(' ± ')
            half = .5 * 10 ** -len(m.split('.')[1]) + 1e-12  # the printed digits are the measured ones, rounded
            assert abs(float(m) - np.mean(vals)) <= half and abs(float(s) - np.std(vals)) <= half, (arm, k, m, s)
        # a real model was trained: far better than predicting the training median
        assert summary[arm]['mae'][0] < 0.5 * np.abs(yte - np.median(ytr)).mean()
    # it says what each arm changed, whichever way it went
    for arm in arms[1:]: assert f'{arm} lowered the few-shot MAE' in out or f'{arm} raised the few-shot MAE' in out, arm
    assert (d/'results.md').read_text().count('| plain ') == 1

def test_resume_after_interruption(tmp_path):
    "A run interrupted by an exception (Ctrl-C, a crash) goes on from its `last` checkpoint; a finished one is read back"
    from fastai.callback.core import Callback
    from tsai_cbs.demo import train_run, _logger, _close_logger
    class Crash(Callback):
        order = 99
        def after_epoch(self):
            if self.epoch == 1: raise KeyboardInterrupt
    data = load_data('tecator')
    regions = shot_regions(data[1])
    lg = _logger(tmp_path, 4, console=False)
    try:
        with pytest.raises(KeyboardInterrupt): train_run('lds', 0, data, regions, tmp_path, epochs=4, cbs=[Crash()], graph=False)
        assert (tmp_path/'runs'/'models'/'lds_seed0_last.pth').exists() and not (tmp_path/'runs'/'lds_seed0.json').exists()
        r = train_run('lds', 0, data, regions, tmp_path, epochs=4, graph=False)
    finally: _close_logger(lg)
    log = [l.split(' | ') for l in (tmp_path/'train.log').read_text().splitlines()]
    before = log[:2]
    assert [l[0] for l in before] == ['[lds_seed0] epoch 1/4', '[lds_seed0] epoch 2/4']
    # after the crash, epochs 3 and 4 trained; epoch 1 was not trained again
    after = [l[0] for l in log[2:]]
    assert after[-2:] == ['[lds_seed0] epoch 3/4', '[lds_seed0] epoch 4/4'] and '[lds_seed0] epoch 1/4' not in after
    # the finished run's history holds the epochs trained before the crash, as they were logged then
    assert r['trained'] == 4 and len(r['train_loss']) == 4
    for e in (0, 1): assert float(before[e][1].split()[1]) == pytest.approx(r['train_loss'][e], rel=1e-5)
    assert train_run('lds', 0, data, regions, tmp_path, epochs=4, graph=False) == r  # read back, not trained again
    assert len((tmp_path/'train.log').read_text().splitlines()) == len(log)

def test_stop_after(tmp_path):
    res = _run('--epochs', '6', '--seeds', '1', '--stop-after', '2', '--out', str(tmp_path/'o'), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert '[plain_seed0] epoch 2/6' in res.stdout and 'epoch 3/6' not in res.stdout
    assert 'stopped after 2 of its 6 epochs' in res.stdout and json.loads((tmp_path/'o'/'results.json').read_text())['trained'] == 2

def test_fds_arms(tmp_path):
    "The FDS arms (alone and with LDS) train, and FDS really calibrated features"
    from fastai.callback.core import Callback
    from tsai_cbs.demo import train_run
    data = load_data('tecator')
    regions = shot_regions(data[1])
    seen = []
    class Watch(Callback):
        order = 99
        def after_epoch(self):
            fds = next(cb for cb in self.learn.cbs if type(cb).__name__ == 'FDS')
            seen.append(bool(fds.stats is not None and fds.stats.calibrating))
    for arm in ('fds', 'lds+fds'):
        seen.clear()
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter('always')
            r = train_run(arm, 0, data, regions, tmp_path, epochs=3, graph=False, cbs=[Watch()])
        assert r['trained'] == 3 and np.isfinite(r['scores']['mae']) and seen[-1], (arm, seen)
        # enough bins for the paper's window: with the regions' 12, FDS warns (and tripled the test MAE)
        assert not [str(w.message) for w in ws if str(w.message).startswith('FDS:')], arm

def test_without_sktime(tmp_path):
    code = ("import sys; sys.modules['sktime'] = None; sys.modules['sktime.datasets'] = None\n"
            "from tsai_cbs.demo import main; sys.exit(main(['--quick']))")
    res = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    assert 'pip install "tsai_cbs[demo]"' in res.stderr and 'Traceback' not in res.stderr
    assert not any(tmp_path.iterdir())  # nothing written

def test_options(capsys):
    with pytest.raises(SystemExit) as e: parse_args(['--help'])
    assert e.value.code == 0
    h = capsys.readouterr().out
    for opt in ('--dataset', '--epochs', '--seeds', '--out', '--quick', '--arms', 'tecator', 'covid3month'): assert opt in h, opt
    a = parse_args([])
    assert (a.dataset, a.epochs, a.seeds, a.arms) == ('tecator', 60, 3, ['plain', 'lds', 'fds', 'lds+fds'])
    a = parse_args(['--quick', '--epochs', '5'])
    assert (a.epochs, a.seeds) == (5, 2)
    for bad in (['--dataset', 'gunpoint'], ['--epochs', '0'], ['--seeds', '-1'], ['--arms', 'plain,fancy'], ['--stop-after', '0']):
        with pytest.raises(SystemExit) as e: parse_args(bad)
        assert e.value.code == 2, bad
    assert set(ARMS) == {'plain', 'lds', 'fds', 'lds+fds'}
    assert parse_args(['--arms', 'plain,lds+fds']).arms == ['plain', 'lds+fds']

def test_covid3month_data():
    Xtr, ytr, Xte, yte = load_data('covid3month')
    assert Xtr.shape == (140, 1, 84) and Xte.shape == (61, 1, 84) and Xtr.dtype == np.float32
    assert 0 <= ytr.min() and ytr.max() < 1 and np.isfinite(Xtr).all()
