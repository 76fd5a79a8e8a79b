"End to end: `criteria-cls cv / fold / aggregate / holdout` with params/smoke.yaml, real papermill kernels, a real MLflow sqlite store in a temp folder."
import json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from mlflow import MlflowClient

EXE = shutil.which('criteria-cls', path=str(Path(sys.executable).parent)) or 'criteria-cls'
COMPARE = ('pooled_oof', 'across_folds', 'per_criterion', 'baseline_tfidf_lr', 'thresholds', 'data_hash', 'split_hash', 'folds')


@pytest.fixture
def store(tmp_path):
    env = {**os.environ, 'MLFLOW_TRACKING_URI': f'sqlite:///{tmp_path}/mlflow.db', 'HF_HUB_OFFLINE': '1'}
    env.pop('MLFLOW_RUN_ID', None)
    return tmp_path, env, MlflowClient(env['MLFLOW_TRACKING_URI'])


def cli(env, root, *args, timeout=900):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=root, env=env, timeout=timeout)


def overrides(tmp, name):
    return [f'experiment={name}', f'report.dir={tmp}/reports', f'tracking.artifact_location={tmp}/mlruns']


def parent_of(client, name):
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.kind = 'cv'", order_by=['attributes.start_time ASC'])
    return runs


def children(client, parent):
    return client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def artifacts(client, run_id, path=''):
    return {a.path for a in client.list_artifacts(run_id, path)}


def summary(d):
    s = json.loads((Path(d) / 'summary.json').read_text())
    return {k: s[k] for k in COMPARE}


def test_cv_resume_and_failure(store, root):
    tmp, env, client = store
    env['MLFLOW_RUN_ID'] = 'inherited-and-must-not-leak'
    # 1. an uninterrupted CV
    r = cli(env, root, 'cv', '--params', 'params/smoke.yaml', *overrides(tmp, 'e2e'), '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'report:' in r.stdout and 'make mlflow-ui' in r.stdout
    [parent] = parent_of(client, 'e2e')
    assert parent.info.status == 'FINISHED'
    kids = children(client, parent)
    k = json.loads((Path(parent.data.tags['run_dir']) / 'folds.json').read_text())['params']['folds']
    assert len(kids) == k and all(c.info.status == 'FINISHED' for c in kids)
    for c in kids:
        f = c.data.tags['fold']
        assert {'test_f1', 'test_threshold', 'best_epoch', 'dev_f1'} <= set(c.data.metrics)
        assert {f'report/fold_{f}.ipynb', f'report/fold_{f}.html'} <= artifacts(client, c.info.run_id, 'report')
        assert {'tables/test_predictions.csv', 'tables/history.csv'} <= artifacts(client, c.info.run_id, 'tables')
        assert artifacts(client, c.info.run_id, 'model')
        assert 'train.lr' in c.data.params
    assert {'summary/summary.json', 'summary/thresholds.json', 'summary/summary.md'} <= artifacts(client, parent.info.run_id, 'summary')
    assert {'report/report.html', 'report/aggregate.ipynb'} <= artifacts(client, parent.info.run_id, 'report')
    assert 'oof_f1' in parent.data.metrics and 'baseline_oof_f1' in parent.data.metrics
    d = Path(parent.data.tags['run_dir'])
    assert d.parent.parent == tmp / 'reports'
    for f in [*(f'fold_{i}.ipynb' for i in range(k)), *(f'fold_{i}.html' for i in range(k)), 'aggregate.html', 'report.html', 'summary.md', 'thresholds.json']:
        assert (d / f).exists(), f
    html = (d / 'report.html').read_text()
    assert 'data:image/png;base64' in html and 'aggregate_job(' not in html   # figures embedded, code hidden
    full = summary(d)

    # 2. `aggregate` on a finished CV gives the same summary again
    r = cli(env, root, 'aggregate', '--run-id', parent.info.run_id, '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    assert Path(r.stdout.split('report: ')[1].strip()).exists() and summary(d) == full

    # 3. the same CV set up without running folds (as for a scheduler), fold 0 run on its own with
    #    `criteria-cls fold`, then stopped; `--resume` runs the rest and ends with the same summary
    r = cli(env, root, 'cv', '--params', 'params/smoke.yaml', *overrides(tmp, 'e2e-resume'), '--only-folds', '', '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    [p2] = parent_of(client, 'e2e-resume')
    r = cli(env, root, 'fold', '--parent-run-id', p2.info.run_id, '--fold', 0, '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)['fold'] == 0
    r = cli(env, root, 'fold', '--parent-run-id', p2.info.run_id, '--fold', k + 3)
    assert r.returncode == 2 and 'does not exist' in r.stderr
    p2 = client.get_run(p2.info.run_id)
    assert p2.info.status == 'RUNNING' and not (Path(p2.data.tags['run_dir']) / 'summary.json').exists()
    r = cli(env, root, 'cv', '--resume', p2.info.run_id, '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'already finished' in r.stdout
    p2 = client.get_run(p2.info.run_id)
    assert p2.info.status == 'FINISHED'
    assert len(children(client, p2)) == k
    assert summary(p2.data.tags['run_dir']) == full

    # 4. a failing fold: the fold and the parent are FAILED, the message names the fold and its notebook
    r = cli(env, root, 'cv', '--params', 'params/smoke.yaml', *overrides(tmp, 'e2e-fail'), 'model.backbone=/nonexistent/model-folder', '--quiet')
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert 'Traceback' not in r.stderr
    assert 'fold 0' in r.stderr and 'fold_0.ipynb' in r.stderr and '/nonexistent/model-folder' in r.stderr
    [p3] = parent_of(client, 'e2e-fail')
    assert p3.info.status == 'FAILED'
    [c3] = children(client, p3)
    assert c3.info.status == 'FAILED' and 'report/fold_0.ipynb' in artifacts(client, c3.info.run_id, 'report')


def test_holdout_on_imhi(store, root, bench):
    tmp, env, client = store
    r = cli(env, root, 'holdout', '--params', 'params/smoke.yaml', *overrides(tmp, 'e2e-holdout'), 'data.format=imhi',
            f'data.path={bench}/imhi_irf/val.csv', f'data.test_path={bench}/imhi_irf/test.csv', 'data.criteria_ids=null', '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    exp = client.get_experiment_by_name('e2e-holdout')
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == 'FINISHED' and run.data.tags['kind'] == 'holdout'
    assert 0 <= run.data.metrics['test_weighted_f1'] <= 1
    assert 'report/report.html' in artifacts(client, run.info.run_id, 'report')
