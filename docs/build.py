"""Build README.md and the docs site from the notebooks, without Quarto.

    python docs/build.py readme           # nbs/index.ipynb -> README.md
    python docs/build.py readme --check   # exit 1 when README.md is not what nbs/index.ipynb gives
    python docs/build.py site             # every nbs/*.ipynb -> site/ (mkdocs-material; open site/index.html)
    python docs/build.py site --out DIR   # the same into DIR
    python docs/build.py check-outputs    # exit 1 when a notebook's stored text outputs differ from a fresh run

Notebooks go through nbdev's own processors (frontmatter from the first `# Title` / `> summary`
markdown cell, `#| hide` / `#| export` cells dropped, `#|` directive lines stripped, `hide_line`,
ANSI codes stripped, a `show_doc` for every exported name the notebook does not document itself,
rendered from the installed module) and are then written as markdown with their STORED outputs: nothing is executed.
`show_doc(...)` cells keep only their output; Python warnings in stderr are dropped; figures become
PNG files next to the page (the README keeps no images). mkdocs-material turns the pages into the site.
"""
from __future__ import annotations
import argparse, base64, importlib, os, re, subprocess, sys, tempfile, warnings
from configparser import ConfigParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS, README = ROOT/'nbs', ROOT/'README.md'
_re_num = re.compile(r'^\d+[a-zA-Z0-9]*_')
_re_showdoc = re.compile(r'^\s*show_doc\(', re.MULTILINE)
_re_nblink = re.compile(r'\]\((?![a-z]+:|/)(?:\./)?([\w-]+)\.ipynb(#[^)]*)?\)')  # `[text](02_lds.ipynb#x)`

def page_name(nb_path) -> str:
    "The page a notebook becomes: `02_lds.ipynb` -> `lds` (nbdev's rule), `index.ipynb` -> `index`"
    return _re_num.sub('', Path(nb_path).stem)

def _txt(x): return ''.join(x) if isinstance(x, list) else (x or '')

# --- notebook processing: nbdev's processors, then our own output filters -------------------------
_re_warning = re.compile(r'^\S.*:\d+: \w*Warning: ')  # `file.py:12: FutureWarning: ...`, then indented source lines

def _drop_warnings(cell):
    "Python warnings printed while the notebook ran are not part of the docs; other stderr (logs) is"
    outs = []
    for o in cell.get('outputs', []):
        if o.get('name') == 'stderr':
            keep, in_warning = [], False
            for line in _txt(o.get('text')).splitlines(True):
                if _re_warning.match(line): in_warning = True
                elif not (in_warning and line[:1].isspace()): in_warning = False
                if not in_warning: keep.append(line)
            if not ''.join(keep).strip(): continue
            o['text'] = ''.join(keep)
        outs.append(o)
    if 'outputs' in cell: cell['outputs'] = outs

def _quarto_opts(cell):
    "Honour the quarto cell options docs authors use: `echo: false`, `output: false`, `include: false`"
    if cell.cell_type != 'code': return
    d = {k: ' '.join(v) if isinstance(v, list) else str(v) for k, v in cell.directives_.items()}
    if d.get('include', '').lower() == 'false': del cell['source']; return
    if d.get('echo', '').lower() == 'false' or _re_showdoc.match(cell.source): cell.metadata['hide_input'] = True
    if d.get('output', '').lower() == 'false': cell['outputs'] = []

_re_sd_call = re.compile(r'^\s*show_doc\((.*)\)\s*$', re.DOTALL)

def _esc_md(text):
    "Markdown-safe heading text: `LDSBins.__call__` must not become `LDSBins.**call**`"
    return re.sub(r'([_*\\`])', r'\\\1', text)

def _cell_md(text): return str(text).replace('|', '\\|').replace('\n', ' ')

def _param_table(obj) -> str:
    "Parameter table (name, type, default, description) from the signature and docments, as nbdev's pages show"
    from fastcore.docments import docments
    import inspect
    try: d = docments(obj, full=True)
    except Exception: return ''
    rows = []
    for name, v in d.items():
        if name in ('self', 'cls', 'return'): continue
        kind = v.get('kind')
        shown = f'*{name}' if kind == inspect.Parameter.VAR_POSITIONAL else f'**{name}' if kind == inspect.Parameter.VAR_KEYWORD else name
        anno = '' if v['anno'] is inspect._empty else (v['anno'] if isinstance(v['anno'], str) else getattr(v['anno'], '__name__', str(v['anno'])))
        default = '' if v['default'] is inspect._empty else f'`{_cell_md(repr(v["default"]))}`'
        rows.append(f'| `{shown}` | {f"`{_cell_md(anno)}`" if anno else ""} | {default} | {_cell_md(v["docment"] or "")} |')
    ret = d.get('return', {})
    if ret and (ret.get('anno') not in (None, inspect._empty) or ret.get('docment')):
        anno = ret['anno'] if isinstance(ret['anno'], str) else getattr(ret['anno'], '__name__', '')
        rows.append(f'| **returns** | {f"`{_cell_md(anno)}`" if anno and ret["anno"] is not inspect._empty else ""} |  | {_cell_md(ret.get("docment") or "")} |')
    if not rows: return ''
    return '| Parameter | Type | Default | Description |\n| --- | --- | --- | --- |\n' + '\n'.join(rows)

def api_md(obj, name=None, title_level=3) -> str:
    "Markdown API entry of `obj`: heading (special names kept), signature, docstring and the parameter table"
    from nbdev.showdoc import show_doc
    md = show_doc(obj, name=name, title_level=title_level)._repr_markdown_()
    # nbdev writes the name as a plain heading: `__call__` would render bold; escape the heading's markdown
    md = re.sub(rf'^({"#" * title_level} )(.+)$', lambda m: m[1] + _esc_md(m[2]), md, count=1, flags=re.MULTILINE)
    tbl = _param_table(obj)
    return md.rstrip() + ('\n\n' + tbl if tbl else '')

def _sd_args(src, ns):
    "The object and options of a `show_doc(...)` cell, looked up in `ns` (nothing else in the notebook runs)"
    m = _re_sd_call.match(src)
    if not m: return None
    return eval(f'_capture({m[1]})', {**ns, '_capture': lambda sym, renderer=None, name=None, title_level=3: (sym, name, title_level)})

def _render_show_docs(nb):
    "Render every `show_doc` cell from the installed module (nbdev's added ones too): API docs are always current"
    exp = [c.directives_['default_exp'] for c in nb.cells if 'default_exp' in c.get('directives_', {})]
    cells = [c for c in nb.cells if c.cell_type == 'code' and (c.get('has_sd') or _re_sd_call.match(c.source or ''))]
    if not cells: return
    ns = {}
    if exp:
        mod = f"{_settings()['lib_name']}.{str(exp[0]).split()[0]}"
        try: ns = dict(vars(importlib.import_module(mod)))
        except Exception as e:
            added = [c for c in cells if c.get('has_sd')]
            if added: warnings.warn(f'{getattr(nb, "path_", "")}: no API docs for {len(added)} exported names, importing {mod} failed: {e!r}')
            for c in added: c.source = None
            cells = [c for c in cells if not c.get('has_sd')]
    for c in cells:
        try: md = api_md(*_sd_args(c.source, ns))
        except Exception:
            if c.get('has_sd'): c.source = None
            continue  # a name the module does not hold (e.g. imported in the notebook only): its stored output stays
        c['outputs'] = [dict(output_type='execute_result', execution_count=None, metadata={},
                             data={'text/markdown': md, 'text/plain': c.source.strip()})]
    # nbdev inserts the docs of a cell's names one by one right after it, i.e. in reverse: restore source order
    out, run = [], []
    for c in nb.cells + [None]:
        if c is not None and c.get('has_sd'): run.append(c); continue
        out += run[::-1] + ([c] if c is not None else [])
        run = []
    nb.cells = out

# fastprogress's bars: `Epoch 1/1 : |████----| 50.00% [1/2 00:00<00:00 ...]` (text), or an HTML <progress>
_re_bar = re.compile(r'^\s*(Epoch \d+/\d+ : )?\|[█\-\s]*\|\s*\d+(\.\d+)?% \[\d+/\d+')

def _terminal_text(text) -> str:
    "What a terminal would show last of a stream's `text`, without progress bars (the pages show this)"
    lines = []
    for line in _txt(text).split('\n'):
        parts = [p for p in line.split('\r') if p.strip()]  # a carriage return overwrites the line
        parts = [p for p in parts if not _re_bar.match(p) and p.strip() not in ('█', 'Epoch 1/1 :')]
        parts = [p for p in parts if not re.fullmatch(r'\s*(Epoch \d+/\d+ :)?\s*█?\s*', p)]
        if parts or not line: lines.append(parts[-1] if parts else '')
    return re.sub(r'\n{3,}', '\n\n', '\n'.join(lines))

def _drop_progress(cell):
    "Progress bars stored in a notebook are not docs: keep what a terminal would show last, without the bars"
    outs = []
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'stream':
            text = _terminal_text(o.get('text'))
            if not text.strip(): continue
            o['text'] = text
        elif o.get('output_type') in ('display_data', 'execute_result'):
            html = _txt(o.get('data', {}).get('text/html'))
            if '<progress' in html and 'text/markdown' not in o.get('data', {}): continue
        outs.append(o)
    if 'outputs' in cell: cell['outputs'] = outs

def process_nb(path):
    "Read the notebook at `path` and run the docs processors on it; returns nbdev's processed notebook"
    from fastcore.nbio import read_nb
    from nbdev.process import NBProcessor, Processor
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.processors import (populate_language, add_show_docs, strip_ansi, hide_line, filter_stream_, rm_header_dash,
                                  rm_export, clean_magics, hide_, strip_hidden_metadata)
    nb = read_nb(path)
    class render_show_docs(Processor):
        def begin(self): _render_show_docs(self.nb)
    procs = [FrontmatterProc, populate_language, add_show_docs, render_show_docs, strip_ansi, hide_line, filter_stream_,
             rm_header_dash, _quarto_opts, rm_export, clean_magics, hide_, _drop_warnings, _drop_progress, strip_hidden_metadata]
    NBProcessor(nb=nb, procs=procs, rm_directives=True).process()
    return nb

# --- markdown writer ------------------------------------------------------------------------------
def _fence(text, lang=''):
    ticks = '`' * max(3, 1 + max((len(m) for m in re.findall(r'`+', text)), default=0))
    return f'{ticks}{lang}\n{text.rstrip()}\n{ticks}'


WIDE_PX = 1100  # wider than the content column on a large screen: scroll rather than shrink

def png_size(png:bytes):
    "(width, height, dpi) of a PNG; dpi from its pHYs chunk, None when it has none"
    import struct
    if png[:8] != b'\x89PNG\r\n\x1a\n': return None, None, None
    w, h = struct.unpack('>II', png[16:24])
    k = png.find(b'pHYs', 0, 4096)
    dpi = round(struct.unpack('>I', png[k + 4:k + 8])[0] * .0254) if k > 0 and png[k + 12] == 1 else None
    return w, h, dpi

def _figure_md(src, png, alt, meta=None):
    "A figure at the size the notebook showed it, opening full size when clicked; a wide one scrolls sideways instead of shrinking"
    w, h, dpi = png_size(png)
    # a 'retina' figure stores its display size in the output's metadata (half its pixels), as Jupyter shows it
    css_w = (meta or {}).get('width') or w
    if css_w is None: return f'<figure class="nb-figure" markdown="0"><a href="{src}"><img src="{src}" alt="{alt}"></a></figure>'
    if css_w <= WIDE_PX:
        return f'<figure class="nb-figure" markdown="0"><a href="{src}"><img src="{src}" alt="{alt}" width="{css_w}"></a></figure>'
    return (f'<figure class="nb-figure nb-wide" markdown="0"><a href="{src}"><img src="{src}" alt="{alt}" '
            f'width="{css_w}" style="max-width:none"></a></figure>')

def _output_md(o, img_dir, img_stem, n_img):
    "Markdown for one stored output, and how many images it wrote"
    ot = o.get('output_type')
    if ot == 'stream': return (_fence(_txt(o.get('text'))) if _txt(o.get('text')).strip() else ''), 0
    if ot == 'error': return _fence(f"{o.get('ename')}: {o.get('evalue')}"), 0
    data = o.get('data', {})
    if 'image/png' in data and img_dir is not None:
        name = f'{img_stem}_{n_img}.png'
        png = base64.b64decode(_txt(data['image/png']))
        (img_dir/name).write_bytes(png)
        return _figure_md(f'{img_dir.name}/{name}', png, f'figure {n_img + 1}', (o.get('metadata') or {}).get('image/png')), 1
    if 'image/svg+xml' in data and img_dir is not None: return _txt(data['image/svg+xml']), 0
    if 'text/markdown' in data: return _txt(data['text/markdown']).strip(), 0
    if 'text/html' in data: return f'<div class="nb-output" markdown="0">\n{_txt(data["text/html"]).strip()}\n</div>', 0
    if 'text/plain' in data and not ('image/png' in data or 'image/svg+xml' in data):
        return _fence(_txt(data['text/plain'])), 0
    return '', 0

def nb2md(nb, img_dir=None, img_stem='fig'):
    "Markdown for a processed notebook; figures are written to `img_dir` (left out when it is None)"
    fm = getattr(nb, 'frontmatter_', {}) or {}
    blocks = []
    if fm.get('title'): blocks.append(f"# {fm['title']}")
    if fm.get('description'): blocks.append(f"> {fm['description']}")
    if img_dir is not None: img_dir.mkdir(parents=True, exist_ok=True)
    n_img = 0
    for cell in nb.cells:
        if cell.cell_type == 'markdown':
            blocks.append(cell.source.strip())
        elif cell.cell_type == 'code':
            if cell.source.strip() and not cell.metadata.get('hide_input'):
                blocks.append(_fence(cell.source, 'python'))
            for o in cell.get('outputs', []):
                md, k = _output_md(o, img_dir, img_stem, n_img)
                n_img += k
                if md: blocks.append(md)
    return '\n\n'.join(b for b in blocks if b) + '\n'

# --- README ---------------------------------------------------------------------------------------
_readme_note = '<!-- Generated from nbs/index.ipynb by `python docs/build.py readme`: edit the notebook, not this file. -->'

def render_readme(nb_path=NBS/'index.ipynb') -> str:
    "The README text `nb_path` gives: markdown as is, code as python blocks, text outputs as plain blocks"
    # README.md sits in the repo root: links to notebooks go into nbs/
    md = _re_nblink.sub(lambda m: f'](nbs/{m[1]}.ipynb{m[2] or ""})', nb2md(process_nb(nb_path)))
    return md.replace('\n', f'\n\n{_readme_note}\n', 1) if md.startswith('# ') else f'{_readme_note}\n\n{md}'

def write_readme(check=False) -> bool:
    "Write README.md (or with `check`, only say whether it is up to date)"
    new = render_readme()
    old = README.read_text(encoding='utf-8') if README.exists() else None
    if check: return old == new
    if old != new: README.write_text(new, encoding='utf-8')
    return True

# --- site -----------------------------------------------------------------------------------------
def _settings():
    cfg = ConfigParser(delimiters=['='])
    cfg.read(ROOT/'settings.ini', encoding='utf-8')
    return cfg['DEFAULT']

def notebooks(nbs=NBS):
    "The notebooks the site is made of: index first, then the rest in file order"
    nbs = sorted(p for p in Path(nbs).glob('*.ipynb') if not p.name.startswith(('_', '.')))
    return sorted(nbs, key=lambda p: p.stem != 'index')

def write_pages(docs_dir, nbs=NBS):
    "Write one markdown page per notebook into `docs_dir`; returns the mkdocs nav"
    docs_dir = Path(docs_dir)
    nav = []
    for p in notebooks(nbs):
        name = page_name(p)
        nb = process_nb(p)
        # links between notebooks (`[LDS](02_lds.ipynb)`) point at the pages they become
        md = _re_nblink.sub(lambda m: f']({page_name(m[1])}.md{m[2] or ""})',
                            nb2md(nb, img_dir=docs_dir/f'{name}_files', img_stem=name))
        (docs_dir/f'{name}.md').write_text(md, encoding='utf-8')
        title = (getattr(nb, 'frontmatter_', {}) or {}).get('title') or name
        nav.append({('Home' if name == 'index' else title): f'{name}.md'})
    (docs_dir/'extra.css').write_text((ROOT/'docs'/'extra.css').read_text(encoding='utf-8'), encoding='utf-8')
    return nav

def mkdocs_config(docs_dir, site_dir, nav) -> dict:
    "docs/mkdocs.yml with this build's paths, the nav and the project's names from settings.ini"
    import yaml
    cfg = yaml.safe_load((ROOT/'docs'/'mkdocs.yml').read_text(encoding='utf-8'))
    s = _settings()
    cfg.setdefault('site_name', s['lib_name'])
    cfg.setdefault('site_description', s['description'])
    cfg.setdefault('repo_url', s['git_url'])
    return dict(cfg, docs_dir=str(docs_dir), site_dir=str(site_dir), nav=nav)

_re_math = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.DOTALL)

def tex_to_mathml(tex:str, display=False) -> str:
    "MathML for a TeX formula (latex2mathml); browsers render it natively, offline"
    import latex2mathml.converter
    tex = re.sub(r'\\text\{([^}]*)\}', lambda m: r'\text{' + m[1].replace(r'\_', '_') + '}', tex)  # `\text{lds\_ks}`
    return latex2mathml.converter.convert(tex, display='block' if display else 'inline')

def mathml_pages(site_dir):
    r"Replace pymdownx.arithmatex's `\(...\)` / `\[...\]` spans in every page by MathML; returns how many formulas"
    import html as _html
    n = 0
    def sub(m):
        nonlocal n
        tex, display = _html.unescape(m[2]).strip(), m[1] == 'div'
        tex = tex[2:-2] if tex[:2] in ('\\(', '\\[') and tex[-2:] in ('\\)', '\\]') else tex
        try: ml = tex_to_mathml(tex, display)
        except Exception as e:
            warnings.warn(f'formula left as TeX, latex2mathml failed on {tex!r}: {e!r}')
            return m[0]
        n += 1
        return f'<{m[1]} class="arithmatex" title="{_html.escape(tex)}">{ml}</{m[1]}>'
    for page in Path(site_dir).rglob('*.html'):
        text = page.read_text(encoding='utf-8')
        new = _re_math.sub(sub, text)
        if new != text: page.write_text(new, encoding='utf-8')
    return n

def self_contained_404(site_dir):
    "Inline the stylesheets of `404.html`: it is served for a missing page at any depth (and any base path), where its links to /assets would not resolve"
    p = Path(site_dir)/'404.html'
    if not p.exists(): return False
    text = p.read_text(encoding='utf-8')
    def sub(m):
        f = Path(site_dir)/m[1].split('?')[0].lstrip('/')
        return f'<style>\n{f.read_text(encoding="utf-8")}\n</style>' if f.is_file() else m[0]
    new = re.sub(r'<link rel="stylesheet" href="([^"]+\.css)"\s*/?>', sub, text)
    p.write_text(new, encoding='utf-8')
    return new != text

def build_site(out=ROOT/'site', nbs=NBS, quiet=True) -> Path:
    "Render every notebook in `nbs` into a static site in `out`; returns `out`"
    import yaml
    out = Path(out).resolve()
    with tempfile.TemporaryDirectory(prefix='tsai_cbs_docs_') as tmp:
        docs_dir = Path(tmp)/'docs'
        docs_dir.mkdir()
        cfg = mkdocs_config(docs_dir, out, write_pages(docs_dir, nbs))
        (Path(tmp)/'mkdocs.yml').write_text(yaml.safe_dump(cfg, sort_keys=False), encoding='utf-8')
        cmd = [sys.executable, '-m', 'mkdocs', 'build', '--clean', '-f', str(Path(tmp)/'mkdocs.yml')]
        env = dict(os.environ, NO_MKDOCS_2_WARNING='1')  # mkdocs-material's banner about MkDocs 2.0, not about this site
        res = subprocess.run(cmd + (['-q'] if quiet else []), capture_output=True, text=True, env=env)
        if res.returncode: raise RuntimeError(f'mkdocs build failed:\n{res.stdout}\n{res.stderr}')
        mathml_pages(out)
        self_contained_404(out)
        if not quiet: print(res.stdout + res.stderr, end='')
    return out

# --- stored outputs are current ---------------------------------------------------------------------
# The pages show the outputs stored in the notebooks, so a check runs each notebook afresh (as `nbdev-test` does) and
# compares its text outputs with the stored ones: results and displays as text, and printed text (stdout, as a
# terminal shows it, without progress bars). stderr (warnings, logs, progress) is not compared. Only what is the same
# on every run is compared: decimals, times, memory addresses and temporary folders (`tempfile`'s random names) are
# masked, so a table's words and layout must match, not its measured values. API docs (`show_doc`) are not compared:
# the site renders them from the installed module. `#| check_output: false` leaves a cell out (printed text that
# differs from run to run in more than its numbers: timings in words, tracebacks with paths, ...).
_re_mask = [(re.compile(r'0x[0-9a-fA-F]+'), '0x…'),
            # `/tmp/tmpab_x9k2q/run`, `/var/folders/…/nbtest_03_x_0a1b2c3d/tmpz8y7x6w5/a.png` -> `<tmp>/run`, `<tmp>/a.png`
            (re.compile(r"""(?:/[^\s/'"]+)*/(?:tmp|[\w.-]*_)[a-z0-9_]{8}(?![\w-]|\.\w)"""), '<tmp>'),
            (re.compile(r'\b\d{1,2}:\d{2}(:\d{2})?\b'), 'hh:mm'),
            (re.compile(r'[-+]?(\d+\.\d*|\.\d+)([eE][-+]?\d+)?|\b\d+[eE][-+]?\d+\b|\bnan\b|\binf\b'), '#.#')]

def _mask(t) -> str:
    for rx, rep in _re_mask: t = rx.sub(rep, t)
    return re.sub(r'[ \t]*#\.#[ \t]*', '#.#', re.sub(r'[ \t]+', ' ', t)).strip()  # padding follows the width of the (masked) numbers

def comparable_text(outputs) -> str:
    "The text of a cell's outputs that is compared: results and displays as text, and stdout as a terminal shows it, masked (see above)"
    parts, stdout = [], []
    def flush():
        if stdout: parts.append(_mask(_terminal_text(''.join(stdout)))); stdout.clear()
    for o in outputs or []:
        ot = o.get('output_type')
        if ot == 'stream':  # consecutive stdout pieces are one text, however the kernel split them
            if o.get('name') == 'stdout': stdout.append(_txt(o.get('text')))
            continue
        if ot not in ('execute_result', 'display_data'): continue
        flush()
        d = o.get('data', {})
        t = _txt(d.get('text/plain')) if 'text/plain' in d and not any(k.startswith('image/') for k in d) else ''
        if not t and 'text/markdown' in d: t = _txt(d['text/markdown'])
        parts.append(_mask(t))
    flush()
    return '\n'.join(p for p in parts if p)

def _checked(cell) -> bool:
    if cell.get('cell_type') != 'code': return False
    src = _txt(cell.get('source'))
    if _re_showdoc.match(src): return False
    return not re.search(r'^#\|\s*check_output:\s*false\s*$', src, re.MULTILINE)

def fresh_run(path):
    "Run the notebook at `path` as `nbdev-test` does (same skipped cells, in its folder); returns its cells with their new outputs"
    from fastcore.xtras import working_directory
    from nbdev.config import get_config
    from nbdev.process import NBProcessor
    from nbdev.test import _skip_cell
    from execnb.shell import CaptureShell
    path = Path(path).resolve()
    nb = NBProcessor(path, rm_directives=False, process=True).nb
    skip = _skip_cell(nb, (get_config().get('tst_flags') or '').split())
    prev = os.environ.get('IN_TEST')
    os.environ['IN_TEST'] = '1'  # as nbdev-test: notebooks may check it
    try:
        k = CaptureShell(path)
        with working_directory(path.parent): k.run_all(nb, exc_stop=True, preproc=skip)
    finally:
        if prev is None: os.environ.pop('IN_TEST', None)
        else: os.environ['IN_TEST'] = prev
    return nb.cells

def stale_outputs(path) -> list:
    "Cells of the notebook at `path` whose stored text outputs differ from a fresh run's: `(cell id, stored, fresh)`"
    import json
    stored = {c.get('id'): c for c in json.loads(Path(path).read_text(encoding='utf-8'))['cells']}
    out = []
    for c in fresh_run(path):
        old = stored.get(c.get('id'))
        if old is None or not _checked(old) or c.get('outputs') is None: continue
        a, b = comparable_text(old.get('outputs')), comparable_text(c.get('outputs'))
        if a != b: out.append((c.get('id'), a, b))
    return out

def _report(name, stale, err, file=sys.stderr):
    if err: print(f'{name}: does not run: {err}', file=file); return 1
    if not stale: return 0
    print(f'{name}: stored outputs differ from a fresh run in {len(stale)} cell(s); run it again and store its outputs '
          f'(`nbdev-test {name} --save`)', file=file)
    for cid, a, b in stale:  # the first line that differs (masked as compared): a table's one changed row, not 300 characters of it
        al, bl = a.split('\n'), b.split('\n')
        i = next((i for i, (x, y) in enumerate(zip(al, bl)) if x != y), min(len(al), len(bl)))
        line = lambda ls: repr(ls[i][:300]) if i < len(ls) else '(no more lines)'
        print(f'  cell {cid}, line {i + 1} of its text outputs:\n    stored: {line(al)}\n    fresh:  {line(bl)}', file=file)
    return 1

def check_outputs(paths=None, n_workers=2) -> int:
    "Print every notebook whose stored outputs are stale (or that fails to run); returns how many"
    paths = [Path(p) for p in (paths or notebooks())]
    if n_workers <= 1 or len(paths) == 1:
        bad = 0
        for p in paths:
            try: stale, err = stale_outputs(p), None
            except Exception as e: stale, err = [], f'{type(e).__name__}: {e}'
            bad += _report(str(p), stale, err)
        return bad
    # one process per notebook (a fresh interpreter each, as nbdev-test gives every notebook its own kernel)
    from concurrent.futures import ThreadPoolExecutor
    def one(p):
        return subprocess.run([sys.executable, str(Path(__file__).resolve()), 'check-outputs', '--n-workers', '1', str(p)],
                              capture_output=True, text=True)
    bad = 0
    with ThreadPoolExecutor(max_workers=n_workers) as ex:
        for p, res in zip(paths, ex.map(one, paths)):
            if res.returncode:
                bad += 1
                msg = [l for l in res.stderr.splitlines() if not _re_warning.match(l) and not l.startswith('  warnings.warn')]
                print('\n'.join(msg), file=sys.stderr)
    return bad

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    r = sub.add_parser('readme', help='nbs/index.ipynb -> README.md')
    r.add_argument('--check', action='store_true', help='only check README.md is up to date')
    s = sub.add_parser('site', help='every nbs/*.ipynb -> a static site')
    s.add_argument('--out', default=str(ROOT/'site'), help='where the site goes (default: site/)')
    c = sub.add_parser('check-outputs', help="fail when notebooks' stored text outputs differ from a fresh run")
    c.add_argument('paths', nargs='*', help='notebooks (default: all of nbs/)')
    c.add_argument('--n-workers', type=int, default=2)
    a = ap.parse_args(argv)
    if a.cmd == 'check-outputs':
        n = check_outputs(a.paths, a.n_workers)
        print(f'stored outputs: {n} notebook(s) stale or failing' if n else 'stored outputs: current')
        return 1 if n else 0
    if a.cmd == 'readme':
        ok = write_readme(check=a.check)
        if not ok: print('README.md is out of date: run `python docs/build.py readme`', file=sys.stderr)
        return 0 if ok else 1
    out = build_site(a.out, quiet=False)
    print(f'site built: {out/"index.html"}')
    return 0

if __name__ == '__main__': sys.exit(main())
