"Shared pytest set-up: headless matplotlib, quiet fastai, and a temporary working folder per test."
import os
os.environ.setdefault('MPLBACKEND', 'Agg')
import matplotlib
matplotlib.use('Agg')
import pytest

# Hypothesis caches constants of the source under `.hypothesis/` in the working folder (the repository): this process's
# cache goes to a temporary folder of its own instead, removed when the process ends
import atexit, shutil, tempfile
if 'HYPOTHESIS_STORAGE_DIRECTORY' not in os.environ:
    _hyp = tempfile.mkdtemp(prefix='tsai_cbs_hypothesis_')
    os.environ['HYPOTHESIS_STORAGE_DIRECTORY'] = _hyp
    atexit.register(shutil.rmtree, _hyp, ignore_errors=True)

@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt
    yield
    plt.close('all')

@pytest.fixture(autouse=True)
def _forget_once_messages():
    "Once-only warnings/messages (`tsai_cbs.core.warn0`/`say0` with `once=`) are once per test, not once per pytest process"
    from tsai_cbs.core import reset_once
    reset_once()
    yield

@pytest.fixture(autouse=True)
def _no_leftover_ipython_shell():
    "A test that runs notebook code in-process (execnb's CaptureShell) leaves IPython's singleton shell set, and later tests in that worker would see `get_ipython()` as a notebook: each test starts in plain Python"
    yield
    from IPython.core.interactiveshell import InteractiveShell
    if InteractiveShell.initialized(): InteractiveShell.clear_instance()

@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    "Run the test inside a fresh temporary folder (Learner paths, checkpoints and images land there)"
    monkeypatch.chdir(tmp_path)
    return tmp_path
