"""Run every notebook as a test, as `nbdev-test` does (same notebooks, flags, working folder; each worker process
runs several notebooks), with a line when each notebook starts and when it ends (how long it took), so a person
watching knows the suite is alive. The same run checks that the notebook's stored text outputs (what the docs pages
show) equal the fresh ones (`docs/build.py`'s `stale_outputs`: results and displays, numbers and times masked).
Exit status 1 if any notebook fails or has stale outputs.

    python tests/run_notebooks.py [--n-workers 2] [NOTEBOOK ...]
"""
import argparse, multiprocessing as mp, os, sys, time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from nbdev.config import get_config
from nbdev.doclinks import nbglob
from nbdev.test import _keep_file

def _run(fn, skip_flags, basepath, cell_timeout):
    print(f'  ..   {fn.name}', flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'docs'))
    import build  # docs/build.py: one definition of "stored outputs are current", shared with `build.py check-outputs`
    t0 = time.monotonic()
    try: stale = build.stale_outputs(fn)
    except Exception as e:
        print(f'{fn.name}: {type(e).__name__}: {e}', file=sys.stderr, flush=True)
        return False, time.monotonic() - t0
    build._report(fn.name, stale, None)
    return not stale, time.monotonic() - t0

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
            print(f'  {"ok  " if ok else "FAIL"} {f.name} {secs:.0f} s  [{i}/{n}, {time.monotonic() - t0:.0f} s]', flush=True)
    if failed:
        print(f'notebooks failed: {", ".join(failed)}', file=sys.stderr)
        return 1
    print(f'{n} notebooks passed in {time.monotonic() - t0:.0f} s')
    return 0

if __name__ == '__main__': sys.exit(main())
