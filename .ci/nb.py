"""Developer aid: build a notebook from a percent-format draft, or dump one back.

    python .ci/nb.py to-nb draft.py nbs/05_thing.ipynb   # cells split on '# %%' / '# %% [markdown]'
    python .ci/nb.py to-py nbs/05_thing.ipynb draft.py   # the reverse, for editing
Then `nbdev-export` and `nbdev-test --path nbs/05_thing.ipynb --save` to store outputs.
The notebook stays the source; drafts are scratch files and are not committed.
"""
import json, re, sys, uuid
from pathlib import Path

_hdr = re.compile(r'^# %%( \[markdown\])?\s*$')

def to_nb(src, dest):
    cells, cur, kind = [], [], None
    def flush():
        if kind is None: return
        lines = cur[:]
        while lines and not lines[-1].strip(): lines.pop()
        while lines and not lines[0].strip(): lines.pop(0)
        if kind == 'markdown': lines = [l[2:] if l.startswith('# ') else l[1:] if l.startswith('#') else l for l in lines]
        text = '\n'.join(lines)
        src_lines = [l + '\n' for l in text.split('\n')]
        if src_lines: src_lines[-1] = src_lines[-1][:-1]
        c = dict(cell_type=kind, id=uuid.uuid4().hex[:8], metadata={}, source=src_lines)
        if kind == 'code': c.update(execution_count=None, outputs=[])
        cells.append(c)
    for line in Path(src).read_text().split('\n'):
        m = _hdr.match(line)
        if m:
            flush(); cur.clear(); kind = 'markdown' if m.group(1) else 'code'
        elif kind is not None: cur.append(line)
    flush()
    # keep the cell ids of an existing notebook (by position) so a round trip gives a small diff
    if Path(dest).exists():
        old = json.loads(Path(dest).read_text())['cells']
        for c, o in zip(cells, old):
            if 'id' in o: c['id'] = o['id']
    nb = dict(cells=cells, metadata=dict(kernelspec=dict(display_name='python3', language='python', name='python3')),
              nbformat=4, nbformat_minor=5)
    Path(dest).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')

def to_py(src, dest):
    nb = json.loads(Path(src).read_text())
    out = []
    for c in nb['cells']:
        s = ''.join(c['source'])
        if c['cell_type'] == 'markdown': out += ['# %% [markdown]'] + ['# ' + l if l else '#' for l in s.split('\n')]
        else: out += ['# %%', s]
        out.append('')
    Path(dest).write_text('\n'.join(out))

if __name__ == '__main__':
    cmd, a, b = sys.argv[1:4]
    {'to-nb': to_nb, 'to-py': to_py}[cmd](a, b)
