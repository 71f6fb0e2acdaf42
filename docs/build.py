"""Build README.md and the docs site from the notebooks, without Quarto.

    python docs/build.py readme           # nbs/index.ipynb -> README.md
    python docs/build.py readme --check   # exit 1 when README.md is not what nbs/index.ipynb gives
    python docs/build.py site             # every nbs/*.ipynb -> site/ (mkdocs-material; open site/index.html)
    python docs/build.py site --out DIR   # the same into DIR

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

def _render_added_docs(nb):
    "Fill in the `show_doc` cells nbdev's `add_show_docs` adds for undocumented exports, from the installed module"
    cells = [c for c in nb.cells if c.get('has_sd')]
    if not cells: return
    from nbdev.showdoc import show_doc
    exp = [c.directives_['default_exp'] for c in nb.cells if 'default_exp' in c.get('directives_', {})]
    if not exp: return
    mod = f"{_settings()['lib_name']}.{str(exp[0]).split()[0]}"
    try: ns = vars(importlib.import_module(mod))
    except Exception as e:
        warnings.warn(f'{getattr(nb, "path_", "")}: no API docs for {len(cells)} exported names, importing {mod} failed: {e!r}')
        for c in cells: c.source = None
        return
    for c in cells:  # nbdev wrote them as `show_doc(name)`; the name is looked up, nothing in the notebook runs
        nm = c.source.strip()[len('show_doc('):-1]
        md = show_doc(eval(nm, ns))._repr_markdown_()
        c['outputs'] = [dict(output_type='execute_result', execution_count=None, metadata={},
                             data={'text/markdown': md, 'text/plain': nm})]
    # nbdev inserts the docs of a cell's names one by one right after it, i.e. in reverse: restore source order
    out, run = [], []
    for c in nb.cells + [None]:
        if c is not None and c.get('has_sd'): run.append(c); continue
        out += run[::-1] + ([c] if c is not None else [])
        run = []
    nb.cells = out

def process_nb(path):
    "Read the notebook at `path` and run the docs processors on it; returns nbdev's processed notebook"
    from fastcore.nbio import read_nb
    from nbdev.process import NBProcessor, Processor
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.processors import (populate_language, add_show_docs, strip_ansi, hide_line, filter_stream_, rm_header_dash,
                                  rm_export, clean_magics, hide_, strip_hidden_metadata)
    nb = read_nb(path)
    class render_added_docs(Processor):
        def begin(self): _render_added_docs(self.nb)
    procs = [FrontmatterProc, populate_language, add_show_docs, render_added_docs, strip_ansi, hide_line, filter_stream_,
             rm_header_dash, _quarto_opts, rm_export, clean_magics, hide_, _drop_warnings, strip_hidden_metadata]
    NBProcessor(nb=nb, procs=procs, rm_directives=True).process()
    return nb

# --- markdown writer ------------------------------------------------------------------------------
def _fence(text, lang=''):
    ticks = '`' * max(3, 1 + max((len(m) for m in re.findall(r'`+', text)), default=0))
    return f'{ticks}{lang}\n{text.rstrip()}\n{ticks}'


def _output_md(o, img_dir, img_stem, n_img):
    "Markdown for one stored output, and how many images it wrote"
    ot = o.get('output_type')
    if ot == 'stream': return (_fence(_txt(o.get('text'))) if _txt(o.get('text')).strip() else ''), 0
    if ot == 'error': return _fence(f"{o.get('ename')}: {o.get('evalue')}"), 0
    data = o.get('data', {})
    if 'image/png' in data and img_dir is not None:
        name = f'{img_stem}_{n_img}.png'
        (img_dir/name).write_bytes(base64.b64decode(_txt(data['image/png'])))
        return f'![figure {n_img + 1}]({img_dir.name}/{name})', 1
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
    for f in ('extra.css', 'mathjax.js'): (docs_dir/f).write_text((ROOT/'docs'/f).read_text(encoding='utf-8'), encoding='utf-8')
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
        if not quiet: print(res.stdout + res.stderr, end='')
    return out

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    r = sub.add_parser('readme', help='nbs/index.ipynb -> README.md')
    r.add_argument('--check', action='store_true', help='only check README.md is up to date')
    s = sub.add_parser('site', help='every nbs/*.ipynb -> a static site')
    s.add_argument('--out', default=str(ROOT/'site'), help='where the site goes (default: site/)')
    a = ap.parse_args(argv)
    if a.cmd == 'readme':
        ok = write_readme(check=a.check)
        if not ok: print('README.md is out of date: run `python docs/build.py readme`', file=sys.stderr)
        return 0 if ok else 1
    out = build_site(a.out, quiet=False)
    print(f'site built: {out/"index.html"}')
    return 0

if __name__ == '__main__': sys.exit(main())
