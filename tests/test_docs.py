"Docs: README.md is generated from nbs/index.ipynb and up to date; the site renders the notebooks' stored outputs."
import base64, importlib.util, io, json, re
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
                 '![figure 1](img/thing_0.png)', '<div class="nb-output" markdown="0">\n<table><tr><td>html cell</td>']:
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
    assert md.index('### check_type') < md.index('### check_pct') and '_private' not in md
    assert core.check_pct.__doc__ in md and 'def check_pct(): pass' not in md
    assert md.count('### is_rank0') == 1 and '### is_rank0 (stored output)' in md
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
