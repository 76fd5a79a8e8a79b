"Shared fixtures: offline Hugging Face, the project root, the read-only benchmarks in ../shared, one smoke CV per run."
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / 'shared' / 'benchmarks'
EXE = shutil.which('criteria-cls', path=str(Path(sys.executable).parent)) or 'criteria-cls'


@pytest.fixture
def root(): return ROOT


@pytest.fixture
def bench():
    "The real benchmark data in ../shared/benchmarks (the test is skipped, with this reason, where it is absent)."
    if not BENCH.exists(): pytest.skip(f'needs ../shared/benchmarks: real benchmark data not present at {BENCH}')
    return BENCH


def store_env(tmp:Path) -> dict:
    "The environment of a `criteria-cls` subprocess whose MLflow store is a fresh sqlite file in `tmp`."
    env = {**os.environ, 'MLFLOW_TRACKING_URI': f'sqlite:///{tmp}/mlflow.db', 'HF_HUB_OFFLINE': '1',
           'TRANSFORMERS_OFFLINE': '1'}
    env.pop('MLFLOW_RUN_ID', None)
    return env


def run_cli(env, *args, cwd=ROOT, input=None, timeout=1200):
    "Run `criteria-cls` as a user does: a subprocess; returns the CompletedProcess."
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, input=input,
                          timeout=timeout)


def smoke_overrides(tmp:Path, experiment:str) -> list:
    "Overrides that keep a smoke run's experiment, reports and artifacts inside `tmp`."
    return [f'experiment={experiment}', f'report.dir={tmp}/reports', f'tracking.artifact_location={tmp}/mlruns']


if os.environ.get('PYTEST_XDIST_WORKER'):
    # two test workers share the cores: one thread each (the CLI subprocesses and kernels inherit it)
    for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ.setdefault(var, '1')


def _run_smoke_cv(tmp:Path) -> dict:
    "Run the smoke CV into `tmp`; what the tests need to find it again, as JSON-able values."
    env = store_env(tmp)
    env['MLFLOW_RUN_ID'] = 'inherited-and-must-not-leak'
    r = run_cli(env, 'cv', '--params', 'params/smoke.yaml', *smoke_overrides(tmp, 'e2e'), '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    return {'tmp': str(tmp), 'stdout': r.stdout}


@pytest.fixture(scope='session')
def smoke_cv(tmp_path_factory):
    """One real `criteria-cls cv --params params/smoke.yaml` for the whole test run, in a fresh store.

    Under pytest-xdist the first worker to ask runs it (a file lock in the run's shared temp folder); the others
    wait for it and read the same store."""
    from filelock import FileLock
    from mlflow import MlflowClient
    shared = tmp_path_factory.getbasetemp().parent if os.environ.get('PYTEST_XDIST_WORKER') \
        else tmp_path_factory.getbasetemp()
    record = shared / 'smoke_cv.json'
    with FileLock(str(record) + '.lock'):
        if not record.exists():
            record.write_text(json.dumps(_run_smoke_cv(tmp_path_factory.mktemp('smoke_cv'))))
    rec = json.loads(record.read_text())
    tmp = Path(rec['tmp'])
    env = store_env(tmp)
    client = MlflowClient(env['MLFLOW_TRACKING_URI'])
    exp = client.get_experiment_by_name('e2e')
    [parent] = client.search_runs([exp.experiment_id], filter_string="tags.kind = 'cv'")
    d = Path(parent.data.tags['run_dir'])
    return {'tmp': tmp, 'env': env, 'client': client, 'parent': parent, 'dir': d, 'stdout': rec['stdout'],
            'summary': json.loads((d / 'summary.json').read_text())}
