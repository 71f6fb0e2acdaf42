"Docs: README.md is generated from nbs/index.ipynb and up to date; the site renders the notebooks' stored outputs, and reads well in a browser."
import base64, functools, html, http.server, importlib.util, io, json, os, re, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent

def _load_build():
    spec = importlib.util.spec_from_file_location('tsai_cbs_docs_build', ROOT/'docs'/'build.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

build = _load_build()

# --- README -------------------------------------------------------------------------------------
def test_readme_up_to_date():
    assert (ROOT/'README.md').read_text(encoding='utf-8') == build.render_readme(), \
        'README.md differs from what nbs/index.ipynb gives: run `python docs/build.py readme`'
    assert build.main(['readme', '--check']) == 0

def test_readme_check_and_write(tmp_path, monkeypatch):
    stale = tmp_path/'README.md'
    stale.write_text('# old\n')
    monkeypatch.setattr(build, 'README', stale)
    assert build.main(['readme', '--check']) == 1 and stale.read_text() == '# old\n'  # --check never writes
    assert build.main(['readme']) == 0 and stale.read_text(encoding='utf-8') == build.render_readme()
    assert build.main(['readme', '--check']) == 0

def test_readme_states_the_commands_ci_runs():
    readme = (ROOT/'README.md').read_text(encoding='utf-8')
    # .ci/run marks the README's commands; the README must show exactly those
    ci = [l.split('#')[0].strip() for l in (ROOT/'.ci'/'run').read_text().splitlines() if '# README:' in l]
    assert len(ci) == 2, ci
    for cmd in ci: assert f'\n{cmd}\n' in readme, cmd
    for s in ['from tsai_cbs.all import *', '## Docs', 'python docs/build.py site', 'python docs/build.py readme']:
        assert s in readme, s
    assert '#|' not in readme and 'from fastcore.test import' not in readme  # hidden cells and directives dropped

# --- notebook -> markdown -------------------------------------------------------------------------
def _png():
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format='png')
    plt.close(fig)
    return buf.getvalue()

def _code(src, *outputs): return dict(cell_type='code', execution_count=1, id='c', metadata={}, source=src, outputs=list(outputs))
def _md(src): return dict(cell_type='markdown', id='m', metadata={}, source=src)
def _stream(name, text): return dict(output_type='stream', name=name, text=text)
def _result(**data): return dict(output_type='execute_result', execution_count=1, metadata={}, data=data)

def _write_nb(path, png):
    cells = [
        _md('# My page\n\n> What the page is about.'),
        _code('#| default_exp thing'),
        _code('#| hide\nsecret_setup = 1'),
        _code('#| export\ndef exported_fn(): "Exported doc"'),
        _code('show_doc(exported_fn)', _result(**{'text/markdown': '### exported_fn\n\n*Exported doc*', 'text/plain': '<ShowDocRenderer>'})),
        _md('See [the other page](03_other.ipynb#usage) and [fastai](https://docs.fast.ai/x.ipynb).'),
        # stored outputs are shown, never re-run: executing this cell would fail the build
        _code("raise RuntimeError('executed!')  #| hide_line\nvisible = 2\nprint(visible)",
              _stream('stderr', '/x/torch/jit.py:12: FutureWarning: noisy\n  warnings.warn(\n'), _stream('stdout', 'stored stdout 2\n')),
        _code('log()', _stream('stderr', 'epoch 1/2 loss 0.5\n/x/y.py:3: UserWarning: noisy too\n  warn(x)\nepoch 2/2 loss 0.4\n')),
        _code('#| echo: false\nsilent_source()', _result(**{'text/plain': 'output of a cell without echo'})),
        _code('#| output: false\nsource_without_output()', _result(**{'text/plain': 'dropped output'})),
        _code('frame', _result(**{'text/html': '<table><tr><td>html cell</td></tr></table>', 'text/plain': 'plain frame'})),
        _code('plot()', dict(output_type='display_data', metadata={},
                             data={'image/png': base64.b64encode(png).decode(), 'text/plain': '<Figure size 100x100 with 1 Axes>'})),
    ]
    nb = dict(cells=cells, metadata=dict(kernelspec=dict(display_name='python3', language='python', name='python3')),
              nbformat=4, nbformat_minor=5)
    path.write_text(json.dumps(nb))
    return path

def test_nb2md(tmp_path):
    png = _png()
    nb = build.process_nb(_write_nb(tmp_path/'07_thing.ipynb', png))
    md = build.nb2md(nb, img_dir=tmp_path/'img', img_stem='thing')
    assert md.startswith('# My page\n\n> What the page is about.\n')
    for gone in ['#|', 'secret_setup', 'def exported_fn', 'show_doc(', 'raise RuntimeError', 'Warning', 'warn(',
                 'silent_source', 'dropped output', '<Figure size', '<ShowDocRenderer>', 'plain frame']:
        assert gone not in md, gone
    for kept in ['### exported_fn\n\n*Exported doc*', '```python\nvisible = 2\nprint(visible)\n```',
                 '```\nstored stdout 2\n```', '```\nepoch 1/2 loss 0.5\nepoch 2/2 loss 0.4\n```', '```\noutput of a cell without echo\n```', '```python\nsource_without_output()\n```',
                 '<figure class="nb-figure" markdown="0"><a href="img/thing_0.png"><img src="img/thing_0.png" alt="figure 1" width="100"></a></figure>', '<div class="nb-output" markdown="0">\n<table><tr><td>html cell</td>']:
        assert kept in md, kept
    assert (tmp_path/'img'/'thing_0.png').read_bytes() == png
    # without an image folder (the README) figures are left out
    assert 'png' not in build.nb2md(build.process_nb(tmp_path/'07_thing.ipynb'))

def _nb(path, *cells):
    path.write_text(json.dumps(dict(cells=list(cells), nbformat=4, nbformat_minor=5,
                                    metadata=dict(kernelspec=dict(display_name='python3', language='python', name='python3')))))
    return path

def test_api_docs_for_undocumented_exports(tmp_path):
    from tsai_cbs import core
    # documented names are left alone; the others get the docs of the installed module, in source order
    p = _nb(tmp_path/'00_x.ipynb', _md('# X'), _code('#| default_exp core'),
            _code('#| export\ndef check_type(): pass\ndef check_pct(): pass\ndef _private(): pass'),
            _code('#| export\ndef is_rank0(): pass'),
            _code('show_doc(is_rank0)', _result(**{'text/markdown': '### is_rank0 (stored output)'})))
    md = build.nb2md(build.process_nb(p))
    assert md.index('### check\\_type') < md.index('### check\\_pct') and '_private' not in md
    assert core.check_pct.__doc__ in md and 'def check_pct(): pass' not in md
    # a notebook's own show_doc is rendered from the module too (its stored output may be stale), once
    assert md.count('### is\\_rank0') == 1 and '(stored output)' not in md and core.is_rank0.__doc__ in md
    # with the parameter table
    assert '| Parameter | Type | Default | Description |' in md and "| `name` | `str` |" in md
    p = _nb(tmp_path/'01_y.ipynb', _md('# Y'), _code('#| default_exp no_such_module'), _code('#| export\ndef f(): pass'))
    with pytest.warns(UserWarning, match='no_such_module'): md = build.nb2md(build.process_nb(p))
    assert 'def f' not in md and 'show_doc' not in md

def test_links_between_notebooks(tmp_path):
    nb_path = _write_nb(tmp_path/'07_thing.ipynb', _png())
    readme = build.render_readme(nb_path)
    assert '[the other page](nbs/03_other.ipynb#usage)' in readme and '(https://docs.fast.ai/x.ipynb)' in readme
    assert readme.startswith('# My page\n\n<!-- Generated from nbs/index.ipynb')
    docs = tmp_path/'docs'
    docs.mkdir()
    nav = build.write_pages(docs, nbs=tmp_path)
    assert nav == [{'My page': 'thing.md'}]
    page = (docs/'thing.md').read_text()
    assert '[the other page](other.md#usage)' in page and (docs/'thing_files'/'thing_0.png').exists()

def test_page_names():
    assert [build.page_name(p) for p in ['nbs/02_lds.ipynb', 'index.ipynb', '13_stop_after.ipynb', '07a_x.ipynb']] == \
           ['lds', 'index', 'stop_after', 'x']
    nbs = build.notebooks()
    assert nbs[0].name == 'index.ipynb'
    assert sorted(p.name for p in nbs) == sorted(p.name for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))

# --- site -----------------------------------------------------------------------------------------
def test_site_from_stored_outputs(tmp_path):
    nbs = tmp_path/'nbs'
    nbs.mkdir()
    png = _png()
    _write_nb(nbs/'07_thing.ipynb', png)
    site = build.build_site(tmp_path/'site', nbs=nbs)
    html = (site/'thing.html').read_text(encoding='utf-8')
    assert 'stored stdout 2' in html and 'executed!' not in html and 'secret_setup' not in html
    assert '<td>html cell</td>' in html and '<h3 id="exported_fn">' in html
    src = re.search(r'<img[^>]*src="([^"]+)"', html)[1]
    assert (site/src).read_bytes() == png

def test_site_renders_the_notebooks(tmp_path):
    site = build.build_site(tmp_path/'site')
    pages = {build.page_name(p) for p in build.notebooks()}
    for name in pages: assert (site/f'{name}.html').exists(), name
    lds = (site/'lds.html').read_text(encoding='utf-8')
    assert 'prepare_LDS_weights' in lds and 'get_lds_kernel_window' in lds
    imgs = re.findall(r'<img[^>]*src="([^"]+)"', lds)
    assert imgs, 'the LDS page shows no plot'
    for src in imgs: assert (site/src).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', src
    for name in pages - {'lds'}: assert f'href="{name}.html"' in lds, f'no nav link to {name}'
    assert not re.search(r'#\|\s*(hide|export|default_exp)', lds) and 'FutureWarning' not in lds

# --- stored outputs are current --------------------------------------------------------------------
def _ided(*cells):
    for i, c in enumerate(cells): c['id'] = f'c{i}'
    return cells

def test_check_outputs(tmp_path):
    "A notebook whose stored text outputs (results, displays, printed text) differ from a fresh run is found; numbers with decimals, times, temporary folders, stderr, progress bars and opted-out cells are not compared"
    table = "print('| arm | MAE |'); print(f'| plain | {1/3:.3f} |')"
    good = _nb(tmp_path/'01_ok.ipynb', *_ided(_md('# ok'), _code('1 + 1', _result(**{'text/plain': '2'})),
               _code('import time; time.time()', _result(**{'text/plain': '1733312.25'})),
               _code("print(f'took {time.time():.1f} s at 12:04')", _stream('stdout', 'took 3.5 s at 07:31\n')),
               _code(table, _stream('stdout', '| arm | MAE |\n'), _stream('stdout', '| plain | 0.25 |\n')),  # split as a kernel may split it
               _code("import shutil, tempfile; d = tempfile.mkdtemp(); print(f'output in {d}'); shutil.rmtree(d)",
                     _stream('stdout', 'output in /tmp/tmpk2_9xq0a\n')),
               _code("import sys; print('a new log line', file=sys.stderr)", _stream('stderr', 'an old one\n')),
               _code("print('\\rEpoch 1/1 : |████----| 50.00% [1/2 00:00<00:00]\\rdone')", _stream('stdout', 'done\n')),
               _code("#| check_output: false\nprint('varies'); list(range(3))", _stream('stdout', 'differs\n'), _result(**{'text/plain': '[9]'})),
               _code("import numpy as np; np.array([0.5, 10.25])", _result(**{'text/plain': 'array([ 0.25, 11.5 ])'}))))
    assert build.stale_outputs(good) == []
    bad = _nb(tmp_path/'02_bad.ipynb', *_ided(_md('# bad'), _code("sorted(['b', 'a', 'c'])", _result(**{'text/plain': "['a', 'b']"})),
              _code("'never stored'"),
              _code("print('fresh')", _stream('stdout', 'stored\n')),
              _code(table, _stream('stdout', '| arm | MAE |\n| lds | 0.25 |\n'))))  # a changed word in a printed table
    assert build.stale_outputs(bad) == [('c1', "['a', 'b']", "['a', 'b', 'c']"), ('c2', '', "'never stored'"),
                                        ('c3', 'stored', 'fresh'), ('c4', '| arm | MAE |\n| lds |#.#|', '| arm | MAE |\n| plain |#.#|')]
    assert build.main(['check-outputs', '--n-workers', '1', str(bad)]) == 1
    assert build.main(['check-outputs', '--n-workers', '1', str(good)]) == 0
    assert build.main(['check-outputs', '--n-workers', '2', str(good), str(bad)]) == 1  # a process per notebook

def test_notebook_stage_finds_what_a_notebook_leaves_in_the_temp_folder(tmp_path):
    "tests/run_notebooks.py runs each notebook with a temp folder of its own and fails, naming the notebook and what it left, when the folder is not empty at its end"
    leaks = _nb(tmp_path/'01_leaks.ipynb', *_ided(_md('# leaks'), _code(
        "import pathlib, tempfile\nd = pathlib.Path(tempfile.mkdtemp(prefix='kept_')); (d/'a.pth').write_text('x')\n"
        "f = tempfile.NamedTemporaryFile(suffix='.png', delete=False); f.close()")))
    clean = _nb(tmp_path/'02_clean.ipynb', *_ided(_md('# clean'), _code(
        "import pathlib, tempfile\ntmp = tempfile.TemporaryDirectory(); n = (pathlib.Path(tmp.name)/'a.pth').write_text('x')"),
        _code('tmp.cleanup()')))
    outer = tmp_path/'tmp'
    outer.mkdir()
    def stage(nb):
        return subprocess.run([sys.executable, str(ROOT/'tests'/'run_notebooks.py'), '--n-workers', '1', str(nb)], cwd=ROOT,
                              capture_output=True, text=True, env=dict(os.environ, TMPDIR=str(outer)), timeout=300)
    res = stage(leaks)
    assert res.returncode == 1 and 'FAIL 01_leaks.ipynb' in res.stdout and 'stored outputs differ' not in res.stderr, res.stdout + res.stderr
    left = re.search(r'01_leaks\.ipynb: left 2 item\(s\) in its temp folder .*: (.*)', res.stderr)
    assert left and re.fullmatch(r'kept_\w{8}/ \(1 file\), tmp\w{8}\.png', left[1]), res.stderr
    res = stage(clean)
    assert res.returncode == 0 and 'ok   02_clean.ipynb' in res.stdout, res.stdout + res.stderr
    assert list(outer.iterdir()) == []  # the stage removes the notebooks' folders, and what they left in them

# --- in a browser ---------------------------------------------------------------------------------
# Headless Chromium (Debian's `chromium`) opens the built pages, from disk and served, and the checks read what it
# rendered. Without a chromium binary these tests are skipped, saying why.
CHROMIUM = next((shutil.which(b) for b in ('chromium', 'chromium-browser', 'google-chrome', 'chrome') if shutil.which(b)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason='no chromium binary on PATH (apt-get install chromium): rendered pages not checked')

class Chromium:
    "Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe): no extra package"
    def __init__(self, binary, width=1600, height=1000):
        self.prof = tempfile.mkdtemp(prefix='tsai_cbs_chromium_')
        r_cmd, w_cmd = os.pipe()   # we write commands, chromium reads them on fd 3
        r_res, w_res = os.pipe()   # chromium writes replies on fd 4
        def child():  # the protocol's fds are 3 (commands in) and 4 (replies out) in chromium
            a, b = os.dup(r_cmd), os.dup(w_res)
            a, b = os.dup2(a, 100), os.dup2(b, 101)
            os.dup2(100, 3); os.dup2(101, 4)
        args = [binary, '--headless', '--no-sandbox', '--disable-gpu', '--remote-debugging-pipe', '--no-first-run',
                f'--user-data-dir={self.prof}', f'--window-size={width},{height}', '--disable-dev-shm-usage', 'about:blank']
        self.proc = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=child, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(r_cmd); os.close(w_res)
        self.w, self.r = os.fdopen(w_cmd, 'wb', buffering=0), os.fdopen(r_res, 'rb', buffering=0)
        self.n, self.buf = 0, b''

    def _recv(self):
        while b'\0' not in self.buf:
            chunk = self.r.read(65536)
            if not chunk: raise RuntimeError('chromium closed the DevTools pipe')
            self.buf += chunk
        msg, self.buf = self.buf.split(b'\0', 1)
        return json.loads(msg)

    def send(self, method, session=None, **params):
        self.n += 1
        m = dict(id=self.n, method=method, params=params)
        if session: m['sessionId'] = session
        self.w.write(json.dumps(m).encode() + b'\0')
        while True:
            r = self._recv()
            if r.get('id') == self.n:
                if 'error' in r: raise RuntimeError(f'{method}: {r["error"]}')
                return r.get('result', {})

    def open(self, url):
        "A new tab at `url`; returns its session"
        tid = self.send('Target.createTarget', url='about:blank')['targetId']
        s = self.send('Target.attachToTarget', targetId=tid, flatten=True)['sessionId']
        self.send('Page.enable', session=s)
        self.send('Page.navigate', session=s, url=url)
        self.eval(s, "new Promise(r => document.readyState === 'complete' ? r() : addEventListener('load', () => r()))")
        return s

    def eval(self, session, js, timeout=30):
        "Value of the JS expression `js` (awaited if a promise)"
        r = self.send('Runtime.evaluate', session=session, expression=js, awaitPromise=True, returnByValue=True, timeout=timeout * 1000)
        if 'exceptionDetails' in r: raise RuntimeError(f'{js[:80]}: {r["exceptionDetails"]}')
        return r['result'].get('value')

    def wait_for(self, session, js_cond, timeout=20):
        "Poll until `js_cond` is truthy; returns its value (or the last falsy one after `timeout` s)"
        end = time.time() + timeout
        while True:
            v = self.eval(session, js_cond)
            if v or time.time() > end: return v
            time.sleep(.2)

    def close(self):
        try: self.send('Browser.close')
        except Exception: pass
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        shutil.rmtree(self.prof, ignore_errors=True)


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The real site, built once for the browser checks"
    return build.build_site(tmp_path_factory.mktemp('docs')/'site')

class _Pages(http.server.SimpleHTTPRequestHandler):
    "A static server that answers a missing page with the site's 404.html, as GitHub Pages and `mkdocs serve` do"
    def log_message(self, *args): pass
    def send_error(self, code, message=None, explain=None):
        page = Path(self.directory)/'404.html'
        if code != 404 or not page.exists(): return super().send_error(code, message, explain)
        body = page.read_bytes()
        self.send_response(404); self.send_header('Content-Type', 'text/html; charset=utf-8')
        self.send_header('Content-Length', str(len(body))); self.end_headers(); self.wfile.write(body)

@pytest.fixture(scope='module')
def served(site):
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Pages, directory=str(site)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{srv.server_port}'
    srv.shutdown(); srv.server_close()

@pytest.fixture(scope='module')
def browser():
    if CHROMIUM is None: pytest.skip('no chromium binary on PATH (apt-get install chromium): rendered pages not checked')
    b = Chromium(CHROMIUM, width=1600, height=1000)
    yield b
    b.close()

@needs_chromium
def test_math_renders_offline(site, browser):
    "Formulas are MathML made at build time: rendered from disk, with no network and no script"
    for page in site.glob('*.html'):
        assert not re.search(r'<script[^>]+src="https?://', page.read_text(encoding='utf-8')), f'{page.name} loads a script from the network'
    s = browser.open((site/'lds.html').as_uri())
    boxes = browser.eval(s, "[...document.querySelectorAll('.arithmatex')].map(e => { const m = e.querySelector('math'); "
                            "if (!m) return null; const r = m.getBoundingClientRect(); return [r.width, r.height, e.tagName]; })")
    assert len(boxes) >= 8 and all(b is not None and b[0] > 5 and b[1] > 5 for b in boxes), boxes
    assert any(b[2] == 'DIV' for b in boxes)  # the display formula
    text = browser.eval(s, 'document.querySelector("article").innerText')
    assert '\\(' not in text and '\\tilde' not in text and '\\sum' not in text  # no raw TeX on the page
    # a fraction is laid out as one: taller than a line of text
    s = browser.open((site/'adaptive_loss.html').as_uri())
    h = browser.eval(s, "(() => { const f = document.querySelector('math mfrac'); return f ? f.getBoundingClientRect().height : 0 })()")
    line = browser.eval(s, "parseFloat(getComputedStyle(document.querySelector('article p')).lineHeight)")
    assert h > .9 * line, (h, line)

@needs_chromium
def test_no_progress_bar_dumps(site, browser):
    for page in site.glob('*.html'):
        text = page.read_text(encoding='utf-8')
        assert '\u2588' not in text and not re.search(r'\d+\.\d+% \[\d+/\d+', text), f'progress bar in {page.name}'
    for name in ('core', 'testing'):
        s = browser.open((site/f'{name}.html').as_uri())
        text = browser.eval(s, 'document.querySelector("article").innerText')
        assert len(text) > 500 and 'Epoch 1/1 :' not in text and '0.00%' not in text, name

@needs_chromium
def test_api_entries(site, browser):
    "A parameter table (name, type, default, description) per API entry; special methods keep their names"
    s = browser.open((site/'lds.html').as_uri())
    heads = browser.eval(s, "[...document.querySelectorAll('article h3')].map(h => h.textContent.replace('\u00b6', '').trim())")
    assert 'LDSBins.__call__' in heads and 'lds_bins' in heads, heads
    assert browser.eval(s, "[...document.querySelectorAll('article h3 strong')].length") == 0
    rows = browser.eval(s, """(() => { const h = [...document.querySelectorAll('article h3')].find(h => h.textContent.startsWith('lds_bins'));
        let e = h.nextElementSibling, t = null;   // material wraps tables in scroll boxes
        for (; e && e.tagName !== 'H3' && !t; e = e.nextElementSibling) t = e.tagName === 'TABLE' ? e : e.querySelector('table');
        if (!t) return null;
        return [...t.querySelectorAll('tr')].map(r => [...r.children].map(c => c.innerText.trim())); })()""")
    assert rows and rows[0] == ['Parameter', 'Type', 'Default', 'Description'], rows
    by_name = {r[0]: r for r in rows[1:]}
    assert by_name['n_bins'][1:3] == ['int', 'None'] and 'Rice rule' in by_name['n_bins'][3]
    assert by_name['reweight'][1:3] == ['str', "'inv'"]
    assert by_name['labels'][1:3] == ['', ''] and 'numpy array' in by_name['labels'][3]

@needs_chromium
def test_room_for_code_and_figures(tmp_path, browser):
    "A wider content column; a figure wider than it scrolls at a readable size instead of being squeezed"
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(36, 3), dpi=100)
    ax.plot(range(100))
    buf = io.BytesIO(); fig.savefig(buf, format='png', dpi=100); plt.close(fig)
    wide = buf.getvalue()
    assert build.png_size(wide)[0] == 3600
    nbs = tmp_path/'nbs'; nbs.mkdir()
    long_sig = 'def f(' + ', '.join(f'argument_{i}:int={i}' for i in range(12)) + '): pass'
    _nb(nbs/'01_wide.ipynb', _md('# Wide'), _code(long_sig),
        _code('plot()', dict(output_type='display_data', metadata={}, data={'image/png': base64.b64encode(wide).decode()})),
        _code('small()', dict(output_type='display_data', metadata={}, data={'image/png': base64.b64encode(_png()).decode()})),
        # a 'retina' figure: twice the pixels of its display size, which the output's metadata holds
        _code('retina()', dict(output_type='display_data', metadata={'image/png': {'width': 900, 'height': 75}},
                               data={'image/png': base64.b64encode(wide).decode()})))
    site = build.build_site(tmp_path/'site', nbs=nbs)
    s = browser.open((site/'wide.html').as_uri())
    col = browser.eval(s, "document.querySelector('.md-content').getBoundingClientRect().width")
    assert col > 1000, col  # material's default column is about 700 px at this window width
    fig_box = browser.eval(s, """(() => { const f = document.querySelectorAll('figure.nb-figure');
        return [...f].map(e => { const i = e.querySelector('img'); return [i.getBoundingClientRect().width, e.scrollWidth, e.clientWidth,
        e.querySelector('a').getAttribute('href') === i.getAttribute('src')]; }); })()""")
    (w_img, scroll, client, linked), small, retina = fig_box
    assert w_img == 3600 and scroll > client and linked, fig_box  # its own size, scrolls sideways, opens full size
    assert small[0] <= col and small[1] <= small[2]
    assert retina[0] == 900 and retina[1] <= retina[2]  # shown at its display size, no scrolling

@needs_chromium
def test_all_page_lists_every_name(site, browser):
    import tsai_cbs.all as a
    s = browser.open((site/'all.html').as_uri())
    text = browser.eval(s, 'document.querySelector("article").innerText')
    missing = [n for n in a.__all__ if not re.search(rf'\b{re.escape(n)}\b', text)]
    assert not missing, f'the all page does not list {missing}: its stored outputs are stale (run nbs/99_all.ipynb again)'

@needs_chromium
def test_search_when_served(served, browser):
    s = browser.open(f'{served}/index.html?q=prepare_LDS_weights')
    hits = browser.wait_for(s, "[...document.querySelectorAll('.md-search-result__item a')].map(a => a.getAttribute('href'))", timeout=30)
    assert hits and any('lds.html' in h for h in hits), hits

@needs_chromium
def test_404_page_is_styled(served, browser):
    s = browser.open(f'{served}/no/such/page.html')
    st = browser.eval(s, """(() => { const h = document.querySelector('.md-header');
        return [document.title, h ? getComputedStyle(h).backgroundColor : null, getComputedStyle(document.body).fontFamily,
                document.querySelector('article, .md-content') ? document.querySelector('.md-content').innerText : ''] })()""")
    title, header_bg, font, text = st
    assert header_bg not in (None, 'rgba(0, 0, 0, 0)'), st  # material's indigo header bar, not an unstyled page
    assert '404' in text or '404' in title, st
