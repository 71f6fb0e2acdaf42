"""Run the benchmarks and print the README's benchmark table, with the machine and the load it ran under.

    python benchmarks/run_all.py               # every benchmark (CPU, and the CUDA parts where a GPU is present)
    python benchmarks/run_all.py --quick       # fewer sizes and rounds: a smoke run, not figures for the README
    python benchmarks/run_all.py --repeat 3    # run the benchmarks that print one figure per run 3 times (default 2)
    python benchmarks/run_all.py --json FILE   # also write every figure to FILE
    python benchmarks/run_all.py --from-json FILE   # print the table of a saved run again

Each figure is given as "min / median": over the rounds a benchmark runs inside itself (`lds.py`, the LDS rows; the
same-round ratios for its speed-ups) or over the epochs (`batch_callbacks.py`; `fds.py`: medians over its rounds, also
paired by round, and the fastest epoch), and over `--repeat` runs of the
scripts that print one figure per run (`checkpoint.py`, `multi_loss.py`, `graph_schedule_stop.py`). On a shared or
busy machine the min is the least disturbed figure and the median the typical one; the spread between them is how much
the figures vary from run to run. The load average (1 / 5 / 15 min) is printed before and after: figures measured at a
load above the number of cores are slower in absolute terms, while the same-round ratios move much less.
"""
import json, os, platform, re, statistics, subprocess, sys, tempfile, time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine():
    cpu = platform.processor() or ''
    try: cpu = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): pass
    import torch
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'
    return f"{cpu or platform.machine()}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def load():
    la = os.getloadavg()
    return f"{la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}"


def run(args, log):
    "Run a benchmark script, echo its output to `log`, return the output"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=HERE.parent)
    log.write(f"\n$ python {' '.join(map(str, args))}   ({time.perf_counter() - t0:.0f} s, load after {load()})\n{r.stdout}")
    log.flush()
    if r.returncode: raise RuntimeError(f"{args} failed:\n{r.stderr[-3000:]}")
    return r.stdout


def mm(vals, fmt='{:.1f}', unit=''):
    "'min / median' of a list (one value: itself)"
    vals = [v for v in vals if v is not None]
    if not vals: return 'n/a'
    if len(vals) == 1: return fmt.format(vals[0]) + unit
    return f"{fmt.format(min(vals))} / {fmt.format(statistics.median(vals))}{unit}"


def floats(pattern, text):
    return [float(v) for v in re.findall(pattern, text)]


def main(argv):
    quick = '--quick' in argv
    repeat = int(argv[argv.index('--repeat') + 1]) if '--repeat' in argv else (1 if quick else 2)
    log = open(Path(tempfile.gettempdir()) / 'tsai_cbs_benchmarks.log', 'w')
    start = dict(machine=machine(), load=load(), time=time.strftime('%Y-%m-%d %H:%M'))
    print(f"machine: {start['machine']}\nload average before (1 / 5 / 15 min): {start['load']}   (full outputs: {log.name})")
    fig = {}
    with tempfile.TemporaryDirectory() as tmp:
        # LDS: its own rounds, all dtypes, tsai and numpy side by side
        run([HERE / 'lds.py', *(['--quick'] if quick else []), '--json', f'{tmp}/lds.json'], log)
        fig['lds'] = json.load(open(f'{tmp}/lds.json'))
        run([HERE / 'batch_callbacks.py', *(['--quick'] if quick else []), '--json', f'{tmp}/bc.json'], log)
        fig['batch'] = json.load(open(f'{tmp}/bc.json'))
    outs = {k: [] for k in ('checkpoint', 'multi_loss', 'graph', 'fds')}
    outs['fds'].append(run([HERE / 'fds.py', *(['--quick'] if quick else [])], log))  # its own rounds (epochs)
    for _ in range(repeat):
        outs['checkpoint'].append(run([HERE / 'checkpoint.py', '--rounds', 2 if quick else 4], log))
        outs['multi_loss'].append(run([HERE / 'multi_loss.py', '--rounds', 3 if quick else 5], log))
        outs['graph'].append(run([HERE / 'graph_schedule_stop.py', *(['--quick'] if quick else [])], log))
    end_load = load()
    raw = dict(start=start, end_load=end_load, figures=fig, outputs=outs)
    json.dump(raw, open(Path(tempfile.gettempdir()) / 'tsai_cbs_benchmarks.json', 'w'))  # kept whatever happens next
    if '--json' in argv: json.dump(raw, open(argv[argv.index('--json') + 1], 'w'))
    print_table(raw)


def print_table(raw):
    print(f"machine: {raw['start']['machine']}; {raw['start']['time']}; load average (1 / 5 / 15 min) {raw['start']['load']} before, "
          f"{raw['end_load']} after\n")
    print("| benchmark | result (min / median) |\n|---|---|")
    for k, v in table(raw['figures'], raw['outputs']): print(f"| {k} | {v} |")


def table(fig, outs):
    rows = []
    lds = fig['lds']
    if 'cpu' in lds:
        c = lds['cpu']
        n = max(c['sizes'])
        t = c['times']
        for dt in ('float32', 'float64', 'int64', 'int32'):
            k = f'{dt}/{n}'
            o = [v * 1e3 for v in t['ours'][k]]
            parts = [f"ours {mm(o)} ms"]
            for base in ('tsai', 'numpy'):
                if base in t:
                    r = [b / q for b, q in zip(t[base][k], t['ours'][k])]
                    parts.append(f"{base} {mm([v * 1e3 for v in t[base][k]], '{:.0f}')} ms: **{mm(r)}x faster**")
            mem = f"; peak extra memory **{c['mem']['ours'][dt]:.2f}x** the labels' bytes" + (
                f" (tsai {c['mem']['tsai'][dt]:.1f}x)" if 'tsai' in c['mem'] else '')
            rows.append((f"`prepare_LDS_weights`, {n:.0e} {dt} labels ({c['n_bins'][k]} bins)", ', '.join(parts) + mem))
        for s_ in [s for s in c['sizes'] if s != n]:
            if 'tsai' in t:
                rows.append((f"`prepare_LDS_weights`, {s_:.0e} labels: speed-up vs tsai", ', '.join(
                    f"{dt} {mm([b / q for b, q in zip(t['tsai'][f'{dt}/{s_}'], t['ours'][f'{dt}/{s_}'])], '{:.0f}')}x" for dt in ('float32', 'float64', 'int64', 'int32'))))
    if lds.get('cuda'):
        cu = lds['cuda']
        rows.append((f"`prepare_LDS_weights`, 1e8 CUDA labels ({cu['device']})",
                     ', '.join(f"{dt} {cu[dt]['min_ms']:.2f} / {cu[dt]['median_ms']:.2f} ms" for dt in ('float32', 'float64', 'int64', 'int32'))))
    if 'imports' in lds:
        im = lds['imports']
        rows.append(("`import tsai_cbs.lds` (fresh interpreter, min of 3)",
                     f"{im['import tsai_cbs.lds']:.2f} s, no fastai/scipy/pandas imported (`import torch, numpy`: {im['import torch, numpy']:.2f} s; "
                     f"`import fastai.learner`: {im['import fastai.learner']:.2f} s)"))
    b = fig['batch']['cpu']
    sb = statistics.median(b['spans']['bare fit'])
    ex = lambda name: [s - sb for s in b['spans'][name]]
    bare = b['times']['bare fit']
    step = lambda name: [(t / statistics.median(bare) - 1) * 100 for t in b['times'][name]]
    names = [n for n in ('WeightedPerSampleLoss', 'LDSWeightedLoss', 'BatchSubsampler', 'Weighted + Subsampler', 'tsai LDS (index lookup)') if n in b['spans']]
    rows.append(("per-batch work in the training loop (before_batch hooks + loss, host time, CPU, batch 32): " + ' / '.join(names),
                 ' / '.join(f"{mm([v * 1e6 for v in ex(n)])} us" for n in names) + f" over the bare loop's {sb * 1e6:.0f} us"))
    if 'lds_minus_tsai_span' in b:
        d = [v * 1e6 for v in b['lds_minus_tsai_span']]
        rows.append(("`LDSWeightedLoss` minus tsai's LDS index lookup, per batch (same epoch)", f"{mm(d, '{:+.1f}')} us (range {min(d):+.1f} to {max(d):+.1f})"))
    rows.append(("whole CPU training step, extra over a bare step: " + ' / '.join(names),
                 ' / '.join(f"{statistics.median(step(n)):+.1f}%" for n in names) + f" (median over epochs) of a bare {statistics.median(bare) * 1e3:.2f} ms step"))
    ck = outs['checkpoint']
    if ck:
        sync = [v for o in ck for v in floats(r"every_epoch\s+epoch min.*?= ([\d.]+)% of an epoch", o)]
        bg = [v for o in ck for v in floats(r"every_epoch\+background\s+epoch min.*?= ([\d.]+)% of an epoch", o)]
        rows.append(("`SaveModel(every_epoch=1)`, 21.8M parameters: training loop blocked per epoch", f"{mm(sync)}% synchronous, **{mm(bg)}% with `background=True`**"))
    ml = outs['multi_loss']
    if ml:
        m = [v for o in ml for v in floats(r"\n  multi\s+[\d.]+ us/batch\s+extra vs plain\s+([+-][\d.]+)%", o.split('\ncuda')[0])]
        a = [v for o in ml for v in floats(r"\n  adaptive\s+[\d.]+ us/batch\s+extra vs plain\s+([+-][\d.]+)%", o.split('\ncuda')[0])]
        rows.append(("`MultiLoss` / `AdaptiveCountsWeight`, CPU per batch vs a plain loss", f"{mm(m, '{:+.1f}')}% / {mm(a, '{:+.1f}')}%"))
    gs = outs['graph']
    if gs:
        ts = [v for o in gs for v in floats(r"TransformScheduler per batch ([\d.]+) us", o)]
        sa = [v for o in gs for v in floats(r"StopAfter per batch ([\d.]+) us", o)]
        sg = [v for o in gs for v in floats(r"ShowGraph per epoch \(redraw \+ PNG\) ([\d.]+) ms", o)]
        rows.append(("`TransformScheduler` / `StopAfter` per batch, `ShowGraph` per epoch (isolated)", f"{mm(ts)} us / {mm(sa)} us / {mm(sg, '{:.0f}')} ms"))
    fd = outs.get('fds')
    if fd:
        cells = []
        for kind in ('cnn', 'mlp'):
            sec = fd[0].split(f'CPU {kind},')[1].split('\n\n')[0] if f'CPU {kind},' in fd[0] else ''
            row = re.search(r'\n\s+256\s+([\d.]+)\s+[\d.]+\s+([+-]?[\d.]+)%\s+([+-]?[\d.]+)%\s+([+-]?[\d.]+)%\s+[+-]?[\d.]+%\s+[\d.]+\s+([\d.]+)%', sec)
            if row: cells.append(f"`{kind}` ({float(row[1]) / 1e3:.1f} ms step): whole step {float(row[2]):+.1f}% (paired by round {float(row[3]):+.1f}%, fastest epoch {float(row[4]):+.1f}%), FDS's hook in the fit {row[5]}%")
        if cells: rows.append(("`FDS`, CPU, 256 features, batch 128, extra over a bare step (medians over rounds)", '; '.join(cells)))
    return rows


if __name__ == '__main__':
    a = sys.argv[1:]
    if '--from-json' in a: print_table(json.load(open(a[a.index('--from-json') + 1])))  # re-print a saved run's table
    else: main(a)
