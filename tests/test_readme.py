"README.md's Python blocks run as written, in order, in a fresh interpreter, and leave nothing behind."
import os, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def python_blocks(text):
    return re.findall(r'^```python\n(.*?)^```$', text, flags=re.S | re.M)

def test_blocks_found():
    blocks = python_blocks((ROOT/'README.md').read_text(encoding='utf-8'))
    assert len(blocks) >= 3 and 'Learner(dls, model' in blocks[0]
    assert python_blocks('a\n```python\nx = 1\n```\n```sh\nls\n```\n```python\ny = 2\n```\n') == ['x = 1\n', 'y = 2\n']

def test_readme_python_blocks_run(tmp_path):
    blocks = python_blocks((ROOT/'README.md').read_text(encoding='utf-8'))
    script = '\n'.join(f'# --- README block {i}\n{b}' for i, b in enumerate(blocks, 1))
    cwd, tmp = tmp_path/'cwd', tmp_path/'tmp'
    cwd.mkdir(); tmp.mkdir()
    (tmp_path/'readme_blocks.py').write_text(script)
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'TMPDIR': str(tmp), 'PYTHONDONTWRITEBYTECODE': '1'}
    res = subprocess.run([sys.executable, str(tmp_path/'readme_blocks.py')], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    # the printed lines are the README's (figures may differ slightly from the stored ones on another machine)
    assert re.search(r'^256 weights, mean 1\.000, rarest labels weighted x[\d.]+ vs the most common$', res.stdout, re.M), res.stdout[-2000:]
    assert re.search(r'^fit\(5\) ended after 3 epochs; best valid_loss [\d.]+ \(epoch \d\) reloaded from usage_best\.pth$', res.stdout, re.M)
    # nothing written into the working folder, and the temporary folder removed
    assert list(cwd.iterdir()) == [] and [p.name for p in tmp.iterdir()] == []
