"""Benchmark: `prepare_LDS_weights` against tsai's own `prepare_LDS_weights` and a straightforward numpy version, in the same run,
for float32, float64, int64 and int32 labels; the 1e8-label CUDA timing when a GPU is there; the import time of `tsai_cbs.lds`.

    python benchmarks/lds.py              # 1e5, 1e6, 1e7 labels, 3 rounds; CUDA and import times
    python benchmarks/lds.py --quick      # 1e5 and 1e6 labels, 1 round
    python benchmarks/lds.py --cuda-only  # only the CUDA part (1e8 labels per dtype)
    python benchmarks/lds.py --json FILE  # also write the figures to FILE (used by benchmarks/run_all.py)

Labels, drawn with seeded torch generators: float32 and float64 lognormal (skewed; float64 drawn in float64), int64 and
int32 "ages" (round(exp(N(3.5, 0.35))) clipped to 0..120: one bin per integer). Number of bins: ours by its own rule
(the Rice rule for the float labels, 431 at 1e7; one per integer for the ages); tsai and the numpy baseline are given
the same `n_bins` (tsai's own default would truncate float labels to integers).
Methods: "ours" `tsai_cbs.lds.prepare_LDS_weights(labels, show_plot=False)` on a CPU tensor; "tsai" tsai's function on
the numpy array (only where tsai is installed); "numpy" float64 numpy: `np.histogram` counts, `np.searchsorted` per
label, scipy's `convolve1d` with the same window, `1 / smoothed[bin]`, mean 1, float32 tensor out.

Time: each round runs every method in its own fresh process (ours, numpy, tsai, in turn; the order of the dtypes
rotates from round to round); in it, for each dtype and size, a warm-up call on 1,000 labels and one full call, then
the best of several calls. Printed: per method the min and the median over the rounds of that best time, and the
speed-up as the median (and range) over rounds of the same-round ratio baseline / ours. Other processes on a shared
machine slow single calls now and then: the min is the least disturbed figure, the median shows the typical one.
Peak extra memory: the first call's peak resident set size minus the resident set size just before it (Linux: the
peak is reset through /proc/self/clear_refs and read as VmHWM), in a separate process per method whose glibc mmap
threshold is fixed (MALLOC_MMAP_THRESHOLD_=131072, so large buffers freed by one call go back to the system and every
call's peak is its own), as a multiple of the labels' bytes. Target (issue 14): at 1e7 labels >= 10x faster than
tsai for all four dtypes, peak extra memory <= 1.5x the labels' bytes.
CUDA (when available): 1e8 labels per dtype already on the GPU; median and min of 20 calls timed with CUDA events
around the call, after 3 warm-up calls; peak extra from `torch.cuda.max_memory_allocated`. Target: <= 10 ms (float32,
H100-class GPU). Needs torch and tsai_cbs only (no fastai, no scipy).
Import: wall time of `python -c "import tsai_cbs.lds"` in fresh interpreters (min of 3), beside `import torch, numpy`
and `import fastai.learner`.
"""
import json, os, statistics, subprocess, sys, time

SIZES = (10**5, 10**6, 10**7)
REPEATS = {10**5: 20, 10**6: 8, 10**7: 4}
TSAI_REPEATS = {10**5: 5, 10**6: 3, 10**7: 2}  # tsai takes 0.3-1 s per call at 1e7
DTYPES = ('float32', 'float64', 'int64', 'int32')
ROUNDS = 3
METHODS = ('ours', 'numpy', 'tsai')


def labels(dtype, n, device='cpu'):
    "Seeded labels: lognormal floats, integer ages 0..120"
    import torch
    g = torch.Generator(device=device).manual_seed(0)
    if dtype in ('float32', 'float64'):
        return torch.empty(n, dtype=getattr(torch, dtype), device=device).log_normal_(0, 1, generator=g)
    a = torch.empty(n, dtype=torch.float64, device=device).log_normal_(3.5, 0.35, generator=g).round_().clamp_(0, 120)
    return a.to(getattr(torch, dtype))


def numpy_baseline(y, n_bins, window):
    "The straightforward way: float64 numpy, np.histogram counts, np.searchsorted per sample"
    import numpy as np, torch
    from scipy.ndimage import convolve1d
    y = y.astype(np.float64)
    counts, edges = np.histogram(y, bins=n_bins)
    idx = np.searchsorted(edges, y, side='left')
    idx[idx == 0] = 1
    smoothed = convolve1d(counts.astype(np.float64), window, mode='constant')
    w = 1 / smoothed[idx - 1]
    w = w / w.sum() * len(w)
    return torch.from_numpy(w.astype(np.float32))


def _method(name):
    "(function of the labels, whether it takes numpy arrays)"
    if name == 'ours':
        from tsai_cbs.lds import prepare_LDS_weights
        return lambda y, nb: prepare_LDS_weights(y, show_plot=False), False
    if name == 'tsai':
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            from tsai.callback.core import prepare_LDS_weights as tsai_prepare
        return lambda y, nb: tsai_prepare(y, n_bins=nb, show_plot=False), True
    from tsai_cbs.lds import get_lds_kernel_window
    win = get_lds_kernel_window()
    return lambda y, nb: numpy_baseline(y, nb, win), True


def _rss_kb(field):
    for line in open('/proc/self/status'):
        if line.startswith(field): return int(line.split()[1])


def time_all(name, sizes, dtypes):
    "In a fresh process: best time of `name` for every dtype and size"
    import torch
    from tsai_cbs.lds import lds_bins
    fn, np_in = _method(name)
    reps = TSAI_REPEATS if name == 'tsai' else REPEATS
    out = {}
    for dt in dtypes:
        for n in sizes:
            y = labels(dt, n)
            nb = lds_bins(y).n_bins
            if np_in: y = y.numpy()
            fn(y[:1000], None if nb is None else min(nb, 50)); fn(y, nb)
            ts = []
            for _ in range(reps[n]):
                t0 = time.perf_counter(); fn(y, nb); ts.append(time.perf_counter() - t0)
            out[f'{dt}/{n}'] = dict(time=min(ts), n_bins=nb)
    return dict(results=out, threads=torch.get_num_threads())


def memory_all(name, n, dtypes):
    "In a fresh process (fixed mmap threshold): peak extra memory of the first full call, per dtype, / labels' bytes"
    from tsai_cbs.lds import lds_bins
    fn, np_in = _method(name)
    out = {}
    for dt in dtypes:
        y = labels(dt, n)
        nb, nbytes = lds_bins(y).n_bins, y.element_size() * n
        if np_in: y = y.numpy()
        fn(y[:1000], min(nb, 50))
        open('/proc/self/clear_refs', 'w').write('5')
        rss0 = _rss_kb('VmRSS')
        w = fn(y, nb)
        out[dt] = (_rss_kb('VmHWM') - rss0) * 1024 / nbytes
        del w
    return out


def check_agreement(n=10**6):
    "Fraction of labels whose weight agrees with the numpy baseline (rtol 1e-5); labels exactly on an edge may not"
    import torch
    from tsai_cbs.lds import prepare_LDS_weights, lds_bins, get_lds_kernel_window
    y = labels('float32', n)
    ours, base = prepare_LDS_weights(y, show_plot=False), numpy_baseline(y.numpy(), lds_bins(y).n_bins, get_lds_kernel_window())
    return torch.isclose(ours, base, rtol=1e-5, atol=0).double().mean().item()


def cuda_bench(n=10**8, reps=20):
    import torch
    from tsai_cbs.lds import prepare_LDS_weights
    if not torch.cuda.is_available(): return None
    out = dict(device=torch.cuda.get_device_name(), n=n)
    for dt in DTYPES:
        y = labels(dt, n, 'cuda')
        for _ in range(3): prepare_LDS_weights(y, show_plot=False)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
        ts = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); prepare_LDS_weights(y, show_plot=False); b.record(); torch.cuda.synchronize()
            ts.append(a.elapsed_time(b))
        peak = torch.cuda.max_memory_allocated() - base
        # the same weights as on the CPU (the table's mean-1 scaling sums in another order: a few ulp)
        small = y[:10**6]
        close = torch.allclose(prepare_LDS_weights(small, show_plot=False).cpu(), prepare_LDS_weights(small.cpu(), show_plot=False), rtol=1e-6, atol=0)
        out[dt] = dict(median_ms=statistics.median(ts), min_ms=min(ts), extra=peak / (y.element_size() * n), same_as_cpu=close)
        del y; torch.cuda.empty_cache()
    return out


def import_times(reps=3):
    "Wall time of fresh interpreters importing each module (min of `reps`)"
    out = {}
    for code in ('import torch, numpy', 'import tsai_cbs.lds', 'import fastai.learner'):
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, '-W', 'ignore', '-c', code], capture_output=True)
            ts.append(time.perf_counter() - t0)
        out[code] = min(ts) if r.returncode == 0 else None
    return out


def _sub(*args, env=None):
    r = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True,
                       env=None if env is None else {**os.environ, **env})
    if r.returncode: raise RuntimeError(f"benchmark subprocess {args} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _has_tsai():
    return subprocess.run([sys.executable, '-c', 'import importlib.util as u, sys; sys.exit(u.find_spec("tsai") is None)']).returncode == 0


def load():
    "Load average and cores now"
    la = os.getloadavg() if hasattr(os, 'getloadavg') else (float('nan'),) * 3
    return f"load average {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f} (1 / 5 / 15 min), {os.cpu_count()} cores"


def cpu_bench(sizes, rounds, methods):
    times = {m: {} for m in methods}  # method -> key -> [best time of each round]
    n_bins, threads = {}, None
    for r in range(rounds):
        dts = DTYPES[r % len(DTYPES):] + DTYPES[:r % len(DTYPES)]
        for m in methods:
            res = _sub('time', m, ','.join(map(str, sizes)), ','.join(dts))
            threads = threads or (res['threads'] if m == 'ours' else None)
            for k, v in res['results'].items():
                times[m].setdefault(k, []).append(v['time'])
                if m == 'ours': n_bins[k] = v['n_bins']
    mem = {m: _sub('memory', m, max(sizes), ','.join(DTYPES), env=dict(MALLOC_MMAP_THRESHOLD_='131072')) for m in methods}
    return dict(times=times, n_bins=n_bins, mem=mem, threads=threads, rounds=rounds, sizes=list(sizes))


def ratios(res, base, key):
    "Same-round speed-ups base / ours"
    return [b / o for b, o in zip(res['times'][base][key], res['times']['ours'][key])]


def print_cpu(res):
    methods = list(res['times'])
    print(f"CPU, torch threads {res['threads']} (prepare_LDS_weights splits its passes over as many threads of its own, at most 8), {res['rounds']} rounds; "
          "times in ms: min / median over rounds of each round's best call; speed-up: median (min-max) over rounds of the same-round ratio")
    head = f"{'dtype':<8}{'labels':>7} {'bins':>5} | {'ours ms':>13}"
    for m in methods[1:]: head += f" | {m + ' ms':>15} {m + ' / ours':>19}"
    print(head)
    for dt in DTYPES:
        for n in res['sizes']:
            k = f'{dt}/{n}'
            o = res['times']['ours'][k]
            line = f"{dt:<8}{n:>7.0e} {res['n_bins'][k]:>5} | {min(o) * 1e3:6.1f} / {statistics.median(o) * 1e3:5.1f}"
            for m in methods[1:]:
                b, rr = res['times'][m][k], ratios(res, m, k)
                line += (f" | {min(b) * 1e3:7.1f} / {statistics.median(b) * 1e3:6.1f} "
                         f"{statistics.median(rr):6.1f}x ({min(rr):.1f}-{max(rr):.1f})")
            print(line)
    n = max(res['sizes'])
    print(f"peak extra memory at {n:.0e} labels (first call, x the labels' bytes; target <= 1.5x): " + "; ".join(
        f"{m} " + ", ".join(f"{dt} {res['mem'][m][dt]:.2f}x" for dt in DTYPES) for m in methods))


def print_cuda(c):
    if c is None: print("CUDA: not available here, 1e8-label GPU timing skipped"); return
    print(f"CUDA {c['device']}: {c['n']:.0e} labels on the GPU, prepare_LDS_weights, median / min of 20 calls (target <= 10 ms for float32):")
    for dt in DTYPES:
        d = c[dt]
        print(f"  {dt:<8} {d['median_ms']:7.2f} / {d['min_ms']:.2f} ms, peak extra {d['extra']:.2f}x the labels' bytes, "
              f"same weights as on the CPU (1e6 labels, rtol 1e-6): {d['same_as_cpu']}")


def print_imports(t):
    f = lambda v: 'n/a' if v is None else f"{v:.2f} s"
    print(f"import time (fresh interpreter, min of 3): `import tsai_cbs.lds` {f(t['import tsai_cbs.lds'])}, "
          f"`import torch, numpy` {f(t['import torch, numpy'])}, `import fastai.learner` {f(t['import fastai.learner'])}")


def main(argv):
    quick, cuda_only = '--quick' in argv, '--cuda-only' in argv
    out = dict(load_before=load())
    print(f"LDS weights benchmark | {sys.executable} | OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} | {out['load_before']}")
    if not cuda_only:
        methods = ('ours', 'numpy') + (('tsai',) if _has_tsai() else ())
        if 'tsai' not in methods: print("tsai is not installed: comparing with the numpy baseline only")
        out['cpu'] = cpu_bench(SIZES[:2] if quick else SIZES, 1 if quick else ROUNDS, methods)
        print_cpu(out['cpu'])
        out['agree'] = _sub('agree')['frac']
        print(f"same weights as the numpy baseline (rtol 1e-5) for {out['agree'] * 100:.3f}% of 1e6 float32 labels "
              "(the baseline's searchsorted(side='left') puts a label exactly on an edge in the bin to its left)")
    out['cuda'] = _sub('cuda')
    print_cuda(out['cuda'])
    if not cuda_only:
        out['imports'] = import_times()
        print_imports(out['imports'])
    out['load_after'] = load()
    print(f"after: {out['load_after']}")
    if '--json' in argv: json.dump(out, open(argv[argv.index('--json') + 1], 'w'))
    return out


if __name__ == '__main__':
    a = sys.argv[1:]
    if a and a[0] == 'time': print(json.dumps(time_all(a[1], [int(v) for v in a[2].split(',')], a[3].split(','))))
    elif a and a[0] == 'memory': print(json.dumps(memory_all(a[1], int(a[2]), a[3].split(','))))
    elif a and a[0] == 'agree': print(json.dumps(dict(frac=check_agreement())))
    elif a and a[0] == 'cuda': print(json.dumps(cuda_bench()))
    else: main(a)
