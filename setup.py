"Package metadata comes from settings.ini, the project's single source of it."
from configparser import ConfigParser
from pathlib import Path
import setuptools

here = Path(__file__).parent
cfg = ConfigParser(delimiters=['='])
cfg.read(here/'settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

licenses = {'apache2': 'Apache-2.0'}  # settings.ini's (nbdev's) name -> SPDX expression (license classifiers are deprecated)
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()
lic = licenses[cfg['license']]
# settings.ini's `status` is the classifier's own number (3: '3 - Alpha')
status = next((s for s in statuses if s.split(' ')[0] == cfg['status'].strip()), None)
if status is None: raise ValueError(f"settings.ini: status = {cfg['status']!r}, expected one of 1..{len(statuses)}")
min_python = cfg['min_python']

def _reqs(key): return cfg.get(key, '').split()

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=(here/'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    author=cfg['author'], author_email=cfg['author_email'],
    url=cfg['git_url'],
    license_expression=lic, license_files=['LICENSE'],
    keywords=cfg['keywords'],
    classifiers=['Development Status :: ' + status,
                 'Intended Audience :: Developers', 'Natural Language :: ' + cfg['language']] +
                ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]],
    packages=setuptools.find_packages(include=[cfg['lib_path'], cfg['lib_path'] + '.*']),
    include_package_data=True,
    python_requires='>=' + min_python,
    install_requires=_reqs('requirements'),
    extras_require={'dev': _reqs('dev_requirements'), 'docs': _reqs('docs_requirements'),
                    'demo': _reqs('demo_requirements')},
    zip_safe=False,
)
