"""Check what `python -m build` made (tests/run_all.sh, package stage): the wheel was built from the sdist, the sdist
holds what building needs, and the wheel's metadata is settings.ini's.

    python tests/check_dist.py DIST_DIR BUILD_LOG
"""
import sys, tarfile, zipfile
from configparser import ConfigParser
from email.parser import Parser
from pathlib import Path

root = Path(__file__).resolve().parents[1]
dist, log = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
cfg = ConfigParser(delimiters=['=']); cfg.read(root/'settings.ini', encoding='utf-8'); cfg = cfg['DEFAULT']
name, version = cfg['lib_name'], cfg['version']
errors = []
def check(ok, msg):
    if not ok: errors.append(msg)

(sdist,), (wheel,) = sorted(dist.glob('*.tar.gz')), sorted(dist.glob('*.whl'))
check('Building wheel from sdist' in log, 'the wheel was not built from the sdist')
with tarfile.open(sdist) as t: in_sdist = {n.split('/', 1)[1] for n in t.getnames() if '/' in n}
modules = sorted(p.relative_to(root).as_posix() for p in (root/cfg['lib_path']).glob('*.py'))
for f in ['setup.py', 'pyproject.toml', 'settings.ini', 'README.md', 'LICENSE', 'MANIFEST.in'] + modules:
    check(f in in_sdist, f'{f} missing from the sdist')

with zipfile.ZipFile(wheel) as z:
    in_wheel = set(z.namelist())
    meta = Parser().parsestr(z.read(f'{name}-{version}.dist-info/METADATA').decode())
    lic = z.read(f'{name}-{version}.dist-info/licenses/LICENSE').decode()
for f in modules: check(f in in_wheel, f'{f} missing from the wheel')
check(lic == (root/'LICENSE').read_text() and 'Apache License' in lic and 'Version 2.0' in lic, 'the wheel does not carry LICENSE (Apache 2.0)')
check(cfg['license'] == 'apache2' and meta['License-Expression'] == 'Apache-2.0', f"license: {meta['License-Expression']}")
status = [c for c in meta.get_all('Classifier') if c.startswith('Development Status ::')]
check(len(status) == 1 and status[0].split(':: ')[1].split(' ')[0] == cfg['status'], f"settings.ini status = {cfg['status']}, wheel: {status}")
runtime = sorted(r for r in meta.get_all('Requires-Dist') if 'extra ==' not in r)
check(runtime == sorted(cfg['requirements'].split()), f'run-time requirements {runtime} are not settings.ini\'s')
check(meta['Requires-Python'] == '>=' + cfg['min_python'], f"Requires-Python {meta['Requires-Python']}")

if errors: sys.exit('package check failed:\n  ' + '\n  '.join(errors))
print(f'{sdist.name} and {wheel.name} (built from the sdist): {len(modules)} modules, LICENSE, '
      f'{status[0]}, run-time requirements as settings.ini')
