"""Run every notebook as a test, as `nbdev-test` does (same notebooks, flags, working folder; each worker process
runs several notebooks), with a line when each notebook starts and when it ends (how long it took), so a person
watching knows the suite is alive. The same run checks that the notebook's stored text outputs (what the docs pages
show) equal the fresh ones (`docs/build.py`'s `stale_outputs`: results, displays and printed text; numbers, times and
temporary folders masked), and that the notebook removes what it writes to the temp folder: each runs with a temp
folder of its own (TMPDIR), which must be empty when it ends. Exit status 1 if any notebook fails, has stale outputs
or leaves files in its temp folder.

    python tests/run_notebooks.py [--n-workers 2] [NOTEBOOK ...]
"""
import argparse, multiprocessing as mp, multiprocessing.util, os, shutil, sys, tempfile, time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from nbdev.config import get_config
from nbdev.doclinks import nbglob
from nbdev.test import _keep_file

class _OwnTmp:
    "A new, empty temp folder for one notebook (TMPDIR, and `tempfile`'s cached default), removed at exit; `left` is what the notebook left in it"
    def __init__(self, name): self.name = name
    def __enter__(self):
        # multiprocessing keeps one temp folder per process, made on first use and removed at process exit: make
        # this worker's now, outside, so it is not counted as the notebook's
        multiprocessing.util.get_temp_dir()
        self.dir, self.prev = tempfile.mkdtemp(prefix=f'nbtest_{self.name}_'), (os.environ.get('TMPDIR'), tempfile.tempdir)
        os.environ['TMPDIR'] = tempfile.tempdir = self.dir
        return self
    def __exit__(self, *exc):
        env, tempfile.tempdir = self.prev
        if env is None: os.environ.pop('TMPDIR', None)
        else: os.environ['TMPDIR'] = env
        self.left = [_describe(p) for p in sorted(Path(self.dir).iterdir())]
        shutil.rmtree(self.dir, ignore_errors=True)  # the check itself leaves nothing

def _describe(p):
    if not p.is_dir() or p.is_symlink(): return p.name
    n = sum(1 for f in p.rglob('*') if not f.is_dir())
    return f'{p.name}/ ({n} file{"s" * (n != 1)})'

def _run(fn, skip_flags, basepath, cell_timeout):
    print(f'  ..   {fn.name}\n', end='', flush=True)  # one write: print's two (text, then end) interleave with other processes' lines
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'docs'))
    import build  # docs/build.py: one definition of "stored outputs are current", shared with `build.py check-outputs`
    t0, ok = time.monotonic(), False
    with _OwnTmp(fn.stem) as tmp:
        try: stale = build.stale_outputs(fn)
        except Exception as e: print(f'{fn.name}: {type(e).__name__}: {e}', file=sys.stderr, flush=True)
        else: ok = not build._report(fn.name, stale, None)
    if tmp.left:
        ok = False
        print(f'{fn.name}: left {len(tmp.left)} item(s) in its temp folder (remove what the notebook writes, e.g. with '
              f'tempfile.TemporaryDirectory and a last cell that cleans it up): {", ".join(tmp.left[:10])}', file=sys.stderr, flush=True)
    return ok, time.monotonic() - t0

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('notebooks', nargs='*', type=Path)
    p.add_argument('--n-workers', type=int, default=2)
    a = p.parse_args(argv)
    cfg = get_config()
    skip_flags = cfg.tst_flags.split() if isinstance(cfg.tst_flags, str) else list(cfg.tst_flags)
    files = [Path(f).absolute() for f in (a.notebooks or sorted(nbglob(cfg.nbs_path, as_path=True)))]
    files = [f for f in files if _keep_file(f, '.notest')]
    t0, failed, n = time.monotonic(), [], len(files)
    os.chdir(cfg.nbs_path)  # as nbdev-test (each notebook then runs in its own folder)
    ctx = mp.get_context('fork' if 'fork' in mp.get_all_start_methods() else 'spawn')
    # by module name, not `__main__`: a notebook run in a worker replaces that worker's `__main__` (IPython's user module)
    sys.path.insert(0, str(Path(__file__).parent)); import run_notebooks
    with ProcessPoolExecutor(a.n_workers, mp_context=ctx) as ex:
        futs = {ex.submit(run_notebooks._run, f, skip_flags, str(cfg.config_path), cfg.cell_timeout or None): f for f in files}
        for i, fut in enumerate(as_completed(futs), 1):
            f = futs[fut]
            try: ok, secs = fut.result()
            except Exception as e: ok, secs = False, float('nan'); print(f'{f.name}: {e!r}', file=sys.stderr)
            if not ok: failed.append(f.name)
            print(f'  {"ok  " if ok else "FAIL"} {f.name} {secs:.0f} s  [{i}/{n}, {time.monotonic() - t0:.0f} s]\n', end='', flush=True)
    if failed:
        print(f'notebooks failed: {", ".join(failed)}', file=sys.stderr)
        return 1
    print(f'{n} notebooks passed in {time.monotonic() - t0:.0f} s')
    return 0

if __name__ == '__main__': sys.exit(main())
