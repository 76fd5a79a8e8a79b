"""End to end: `criteria-cls cv / fold / aggregate / holdout` with params/smoke.yaml, real papermill kernels,
a real MLflow sqlite store in a temp folder."""
import json, os, signal, subprocess, time
from pathlib import Path
import nbformat, numpy as np, pandas as pd
import pytest
from mlflow import MlflowClient
from conftest import EXE, ROOT, run_cli, smoke_overrides, store_env
from criteria_cls.metrics import binary_metrics

COMPARE = ('pooled_oof', 'across_folds', 'per_criterion', 'baseline_tfidf_lr', 'thresholds', 'data_hash', 'split_hash',
           'folds')


def parents(client, name):
    exp = client.get_experiment_by_name(name)
    return client.search_runs([exp.experiment_id], filter_string="tags.kind = 'cv'",
                              order_by=['attributes.start_time ASC'])


def children(client, parent):
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def artifacts(client, run_id, path=''):
    return {a.path for a in client.list_artifacts(run_id, path)}


def numbers(s):
    return {k: s[k] for k in COMPARE}


# tests that read or write the smoke CV's store and reports run one after another on one xdist worker
smoke_store = pytest.mark.xdist_group('smoke')


@smoke_store
def test_cv_runs_logs_and_reports(smoke_cv):
    client, parent, d = smoke_cv['client'], smoke_cv['parent'], smoke_cv['dir']
    assert 'report:' in smoke_cv['stdout']
    assert f"MLflow store: {smoke_cv['env']['MLFLOW_TRACKING_URI']}" in smoke_cv['stdout']
    assert parent.info.status == 'FINISHED'
    kids = children(client, parent)
    k = json.loads((d / 'folds.json').read_text())['params']['folds']
    assert len(kids) == k and all(c.info.status == 'FINISHED' for c in kids)
    for c in kids:
        f = c.data.tags['fold']
        assert {'test_f1', 'test_threshold', 'best_epoch', 'dev_f1'} <= set(c.data.metrics)
        assert {f'report/fold_{f}.ipynb', f'report/fold_{f}.html'} <= artifacts(client, c.info.run_id, 'report')
        assert {'tables/test_predictions.csv', 'tables/history.csv'} <= artifacts(client, c.info.run_id, 'tables')
        assert artifacts(client, c.info.run_id, 'model')
        assert 'train.lr' in c.data.params
        # the precision that ran (`auto` asked): bf16 only where the CPU has native bf16
        from criteria_cls.model import resolve_precision
        assert c.data.params['ran.precision'] == resolve_precision(c.data.params['train.mixed_precision'], 'cpu')
    assert ({'summary/summary.json', 'summary/thresholds.json', 'summary/summary.md'}
            <= artifacts(client, parent.info.run_id, 'summary'))
    assert {'report/report.html', 'report/aggregate.ipynb'} <= artifacts(client, parent.info.run_id, 'report')
    assert d.parent.parent == smoke_cv['tmp'] / 'reports'
    for f in [*(f'fold_{i}.ipynb' for i in range(k)), *(f'fold_{i}.html' for i in range(k)), 'aggregate.html',
              'report.html', 'summary.md', 'thresholds.json']:
        assert (d / f).exists(), f
    html = (d / 'report.html').read_text()
    assert 'data:image/png;base64' in html and 'aggregate_job(' not in html   # figures embedded, code hidden
    # the run says what it is: the profile, what it extends, the overrides as typed (not the store the CLI adds)
    tags, s, given = parent.data.tags, smoke_cv['summary'], smoke_overrides(smoke_cv['tmp'], 'e2e')
    assert json.loads(tags['overrides']) == s['overrides'] == given
    assert json.loads(tags['extends']) == s['extends'] == [str(ROOT / 'params' / 'default.yaml')]
    assert tags['params_file'] == s['params_file'] == str(ROOT / 'params' / 'smoke.yaml')
    line = ('Profile `params/smoke.yaml`, extending `params/default.yaml`; command-line overrides: '
            + ' '.join(f'`{o}`' for o in given) + '.')
    assert (d / 'summary.md').read_text().splitlines()[4] == line
    note = tags['mlflow.note.content']
    assert note.startswith('2-fold CV of minilm-l6 + lora on `') and line in note
    assert f'command-line overrides: <code>{given[0]}</code>' in html


def streams(nb:Path) -> list:
    "The stream outputs (stdout, stderr) of an executed notebook."
    return [o for c in nbformat.read(nb, as_version=4).cells for o in c.get('outputs', []) if o.output_type == 'stream']


@smoke_store
def test_reports_have_no_stderr_and_integers_print_as_integers(smoke_cv):
    "What a stakeholder opens: no red stderr block (progress, warnings), best_epoch 1 not 1.0, the time breakdown."
    d, k = smoke_cv['dir'], smoke_cv['summary']['folds']
    for nb in [*(d / f'fold_{i}.ipynb' for i in range(k)), d / 'aggregate.ipynb']:
        assert [o.text for o in streams(nb) if o.name == 'stderr'] == [], nb
        assert 'Traceback' not in (d / nb.name.replace('.ipynb', '.html')).read_text()
    agg = nbformat.read(d / 'aggregate.ipynb', as_version=4)
    texts = [o.get('data', {}).get('text/plain', '') for c in agg.cells for o in c.get('outputs', [])]
    tables = [t for t in texts if 'best_epoch' in t]
    assert tables and not any('.0 ' in t.split('best_epoch')[1] or t.rstrip().endswith('.0') for t in tables), tables
    assert 'Where the time went' in ''.join(c.source for c in agg.cells)


@smoke_store
def test_cv_prints_the_time_breakdown_and_the_ui_for_its_store(smoke_cv):
    out, uri = smoke_cv['stdout'], smoke_cv['env']['MLFLOW_TRACKING_URI']
    assert f'mlflow ui --backend-store-uri {uri}' in out and 'make mlflow-ui' not in out
    table = out.split('where the time went:\n')[1].splitlines()
    assert table[0].split() == ['seconds', 'start-up', 'data', '&', 'tokens', 'training', 'dev', 'scoring', 'test',
                                'scoring', 'logging', 'HTML', 'other', 'wall']
    k = smoke_cv['summary']['folds']
    rows = {l.split()[1]: [float(x) for x in l.split()[2:]] for l in table[1:1 + k]}
    assert sorted(rows) == [str(i) for i in range(k)]
    for kid in children(smoke_cv['client'], smoke_cv['parent']):
        m, row = kid.data.metrics, rows[kid.data.tags['fold']]
        assert abs(row[-1] - m['time_wall_s']) <= 0.5                                    # wall
        # training: the probe warm start, fine-tuning and the sentence probe
        assert abs(row[2] - m['time_train_s'] - m.get('time_probe_s', 0) - m.get('time_sentence_probe_s', 0)) <= 0.5
        assert m['time_startup_s'] > 0 and m['time_html_s'] > 0 and m['time_data_s'] > 0 and m['time_log_s'] > 0
        assert abs(sum(row[:-1]) - row[-1]) <= 5     # the stages add up to the wall time (each printed rounded)
    assert 'aggregation and CV report:' in out


@smoke_store
def test_summary_is_the_pooled_fold_predictions(smoke_cv):
    "The summary's numbers, recomputed here from each fold's own test predictions file."
    d, s, client, parent = smoke_cv['dir'], smoke_cv['summary'], smoke_cv['client'], smoke_cv['parent']
    preds = pd.concat([pd.read_csv(f) for f in sorted(d.glob('fold_*_test_predictions.csv'))])
    assert len(preds) == len(pd.read_csv(d / 'oof_predictions.csv'))
    pooled = binary_metrics(preds.label, preds.prob, preds.threshold.to_numpy())
    assert abs(s['pooled_oof']['f1']['value'] - pooled['f1']) < 1e-4
    assert parent.data.metrics['oof_f1'] == s['pooled_oof']['f1']['value']   # one stored value, one rounding rule
    per_fold = {int(k): binary_metrics(g.label, g.prob, g.threshold.iloc[0])['f1'] for k, g in preds.groupby('fold')}
    e = s['ensemble']       # what `register` ships: every fold, at the threshold of their pooled dev predictions
    assert e['folds'] == sorted(per_fold) and e['dev_pairs'] > 0 and 'best_fold' not in s
    kids = sorted(children(client, parent), key=lambda r: int(r.data.tags['fold']))
    assert e['run_ids'] == [kid.info.run_id for kid in kids]
    assert json.loads((d / 'thresholds.json').read_text())['ensemble'] == e['threshold']
    assert abs(s['across_folds']['f1']['mean'] - np.mean(list(per_fold.values()))) < 1e-4
    for kid in children(client, parent):
        assert abs(kid.data.metrics['test_f1'] - per_fold[int(kid.data.tags['fold'])]) < 1e-9
    # the fold model folder holds the sentence probe (smoke: MiniLM), and predicting from the folder gives the
    # probabilities the fold logged (fine-tuned model and probe blended, then calibrated): to 1e-5 in fp32; under bf16
    # autocast (`auto` on a CPU with native bf16) other batches round differently, by up to about 1e-2
    from criteria_cls.config import load_params
    from criteria_cls.data import load_table
    from criteria_cls.infer import Predictor
    assert (d / 'fold_0_model' / 'sentence_probe.json').exists()
    pairs = load_table(load_params(ROOT / 'params' / 'smoke.yaml')).pairs
    pairs = pairs.assign(post_id=pairs.post_id.astype(str))
    some = preds[preds.fold == 0].assign(post_id=lambda x: x.post_id.astype(str)).head(12).merge(
        pairs[['post_id', 'criterion_id', 'text']])
    fold0 = Predictor.from_folders([d / 'fold_0_model'])
    got = fold0.predict(some[['text', 'criterion_id']]).probability.to_numpy()
    [kid0] = [c for c in children(client, parent) if c.data.tags['fold'] == '0']
    eps = 1e-5 if kid0.data.params['ran.precision'] == 'no' else 2e-2
    assert len(some) == 12 and np.abs(got - some.prob.to_numpy()).max() < eps
    fold0.scorers[0].probe = None          # the fine-tuned part alone is another model
    assert np.abs(fold0.predict(some[['text', 'criterion_id']]).probability.to_numpy() - got).max() > 2 * eps


@smoke_store
def test_aggregate_again_gives_the_same_summary(smoke_cv):
    r = run_cli(smoke_cv['env'], 'aggregate', '--run-id', smoke_cv['parent'].info.run_id, '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    assert Path(r.stdout.split('report: ')[1].strip()).exists()
    assert numbers(json.loads((smoke_cv['dir'] / 'summary.json').read_text())) == numbers(smoke_cv['summary'])



@smoke_store
def test_calibration_is_fitted_on_dev_and_keeps_every_decision(smoke_cv):
    "Per fold: the calibration logged and saved, the threshold carried through; pooled: summary.json and the parent."
    from criteria_cls.metrics import calibration_metrics
    from criteria_cls.tracking import load_frame
    d, s, client, parent = smoke_cv['dir'], smoke_cv['summary'], smoke_cv['client'], smoke_cv['parent']
    for kid in children(client, parent):
        f, m, method = int(kid.data.tags['fold']), kid.data.metrics, kid.data.params['calibration_method']
        assert method in ('none', 'temperature', 'platt')
        assert {'test_ece', 'test_brier', 'test_ece_raw', 'test_brier_raw', 'dev_brier_before',
                'dev_brier_after'} <= set(m)
        info = json.loads((d / f'fold_{f}_model' / 'threshold.json').read_text())
        cal = json.loads((d / f'fold_{f}_model' / 'calibration.json').read_text())
        assert cal['method'] == method and abs(info['threshold'] - m['test_threshold']) < 1e-12
        assert 'model/calibration.json' in artifacts(client, kid.info.run_id, 'model')   # what `register` ships
        for table in ('dev_predictions', 'test_predictions'):     # calibrated prob, raw prob, calibrated threshold
            t = load_frame(client, kid.info.run_id, table)
            assert (t.threshold == info['threshold']).all() and {'prob', 'prob_raw'} <= set(t.columns)
            assert ((t.prob >= t.threshold) == (t.prob_raw >= info['threshold_raw'])).all(), (f, table)
            if method == 'none': assert (t.prob == t.prob_raw).all()
        test = pd.read_csv(d / f'fold_{f}_test_predictions.csv')
        assert abs(m['test_ece'] - calibration_metrics(test)['ece']) < 1e-9
        assert abs(m['test_brier_raw'] - calibration_metrics(test)['brier_raw']) < 1e-9
    c = s['calibration']
    want = calibration_metrics(pd.read_csv(d / 'oof_predictions.csv'), c['bins'])
    for a, v in c['oof'].items():
        assert abs(v - want[a]) < 1e-4 and parent.data.metrics[f'oof_{a}'] == v, a
    assert sorted(int(k) for k in c['per_fold']) == list(range(s['folds']))
    assert c['roc_auc']['fold_mean'] == s['across_folds']['roc_auc']['mean']
    assert c['pooled_dev']['method'] in ('none', 'temperature', 'platt')     # the ensemble's one map, pooled dev
    md = (d / 'summary.md').read_text()
    assert f"Calibration, one map ({c['pooled_dev']['method']}) fitted on the pooled dev" in md
    assert 'Out-of-fold test pairs, pooled: reliability' in (d / 'aggregate.ipynb').read_text()
    assert 'Test fold: reliability (calibration: ' in (d / 'fold_0.ipynb').read_text()

@smoke_store
def test_failing_fold_marks_runs_failed(smoke_cv):
    tmp, env, client = smoke_cv['tmp'], smoke_cv['env'], smoke_cv['client']
    r = run_cli(env, 'cv', '--params', 'params/smoke.yaml', *smoke_overrides(tmp, 'e2e-fail'),
                'model.backbone=/nonexistent/model-folder', '--quiet')
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert 'Traceback' not in r.stderr
    assert 'fold 0' in r.stderr and 'fold_0.ipynb' in r.stderr and '/nonexistent/model-folder' in r.stderr
    [p3] = parents(client, 'e2e-fail')
    assert p3.info.status == 'FAILED'
    [c3] = children(client, p3)
    assert c3.info.status == 'FAILED' and 'report/fold_0.ipynb' in artifacts(client, c3.info.run_id, 'report')


def test_holdout_on_imhi(tmp_path, root, bench):
    env = store_env(tmp_path)
    r = run_cli(env, 'holdout', '--params', 'params/smoke.yaml', *smoke_overrides(tmp_path, 'e2e-holdout'),
                'data.format=imhi', f'data.path={bench}/imhi_irf/val.csv', f'data.test_path={bench}/imhi_irf/test.csv',
                'data.criteria_ids=null', 'prompt.max_sentences=8', 'prompt.sentence_max_length=48',  # 2,113 pairs
                '--quiet')                                                                       # to score: shorter
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(env['MLFLOW_TRACKING_URI'])
    [run] = client.search_runs([client.get_experiment_by_name('e2e-holdout').experiment_id])
    assert run.info.status == 'FINISHED' and run.data.tags['kind'] == 'holdout'
    test = pd.read_csv(Path(run.data.tags['run_dir']) / 'holdout_test_predictions.csv')
    assert len(test) == 2113                                   # every pair of the IMHI IRF test file, scored once
    m = binary_metrics(test.label, test.prob, test.threshold.to_numpy())
    assert abs(run.data.metrics['test_weighted_f1'] - m['weighted_f1']) < 1e-9
    assert 'report/report.html' in artifacts(client, run.info.run_id, 'report')


@smoke_store
def test_holdout_ensemble_scores_the_fold_ensemble(smoke_cv, tmp_path):
    """`cv.holdout_ensemble`'s test step: the CV's fold ensemble (what `register` ships) scores every test pair once, at
    the threshold tuned on the pooled dev predictions; scoring in chunks changes nothing; the metrics are the pairs'."""
    from criteria_cls.config import load_params
    from criteria_cls.pipeline import ensemble_test_scores
    src, sub = ROOT / 'data' / 'redsm5_demo', tmp_path / 'test_posts'
    sub.mkdir()
    posts = pd.read_csv(src / 'redsm5_posts.csv').iloc[::20]             # 13 posts as a test set
    posts.to_csv(sub / 'redsm5_posts.csv', index=False)
    ann = pd.read_csv(src / 'redsm5_annotations.csv')
    ann[ann.post_id.isin(posts.post_id)].to_csv(sub / 'redsm5_annotations.csv', index=False)
    uri, parent = smoke_cv['env']['MLFLOW_TRACKING_URI'], smoke_cv['parent'].info.run_id
    p = load_params(ROOT / 'params' / 'smoke.yaml', [f'tracking.uri={uri}', f'data.test_path={sub}'])
    preds, m, pred = ensemble_test_scores(p, parent, progress=False, chunk=8)
    s = json.loads((smoke_cv['dir'] / 'summary.json').read_text())
    assert len(pred.scorers) == s['folds'] == 2 and pred.threshold == pytest.approx(s['ensemble']['threshold'])
    assert len(preds) == 3 * len(posts) and set(preds.post_id) == set(posts.post_id)   # A1, A4, A9 of each post
    whole = pred.predict(preds.assign(post=preds.post_id.map(dict(zip(posts.post_id, posts.text)))))
    np.testing.assert_allclose(preds.prob, whole.probability, atol=5e-3)   # bf16 (AVX512-BF16 CPUs): other batches,
                                                                           # other padding, the 3rd decimal moves
    ref = binary_metrics(preds.label, preds.prob, pred.threshold)
    assert m['test_weighted_f1'] == pytest.approx(ref['weighted_f1']) and m['test_n'] == len(preds)
    assert 0 < preds.label.sum() < len(preds) and preds.prob.between(0, 1).all()


def test_outside_the_project_fold_by_fold_kill_and_resume(request, tmp_path):
    """A params file kept outside the project extends params/smoke.yaml by absolute path and runs from a third folder:
    the project's data is found, the store and reports go beside the params file. The CV is set up without running
    folds (as for a scheduler), fold 0 runs with `criteria-cls fold`, fold 1 is killed with SIGKILL inside its notebook,
    then `cv --resume` closes the killed run as KILLED and finishes: the summary is that of the uninterrupted
    smoke CV."""
    exp, work = tmp_path / 'exp', tmp_path / 'work'
    exp.mkdir(); work.mkdir()
    (exp / 'irf.yaml').write_text(f'extends: {ROOT}/params/smoke.yaml\nexperiment: e2e-outside\n')
    env = {k: v for k, v in store_env(tmp_path).items() if k != 'MLFLOW_TRACKING_URI'}
    store = f'sqlite:///{exp}/mlflow.db'
    r = run_cli(env, 'cv', '--params', exp / 'irf.yaml', '--only-folds', '', '--quiet', cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(store)
    [parent] = parents(client, 'e2e-outside')
    d = Path(parent.data.tags['run_dir'])
    assert f'MLflow store: {store}' in r.stdout and f'reports and fold models: {d}' in r.stdout
    assert d.parent.parent == exp / 'reports'                       # outputs beside the params file
    assert json.loads((d / 'folds.json').read_text())['source'] == str(ROOT / 'data' / 'redsm5_demo')  # project data

    fold_env = {**env, 'MLFLOW_TRACKING_URI': store}
    r = run_cli(fold_env, 'fold', '--parent-run-id', parent.info.run_id, '--fold', 0, '--quiet', '--json', cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)['fold'] == 0                     # stdout is the JSON result and nothing else
    assert f'MLflow store: {store}' in r.stderr and 'reports and fold models:' in r.stderr
    assert (d / 'fold_0_model').is_dir()
    k = len(json.loads((d / 'folds.json').read_text())['folds'])
    r = run_cli(fold_env, 'fold', '--parent-run-id', parent.info.run_id, '--fold', k + 3, cwd=work)
    assert r.returncode == 2 and 'does not exist' in r.stderr

    proc = subprocess.Popen([EXE, 'fold', '--parent-run-id', parent.info.run_id, '--fold', '1', '--quiet'], cwd=work,
                            env=fold_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    try:
        while not [c for c in children(client, parent) if c.data.tags['fold'] == '1']:
            assert proc.poll() is None and time.time() - t0 < 600, 'fold 1 ended before it could be killed'
            time.sleep(1)
        time.sleep(8)                      # inside fold 1's notebook
    finally:
        os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    assert not (work / 'mlflow.db').exists() and not (work / 'reports').exists() and not (work / 'mlruns').exists()
    [killed] = [c for c in children(client, parent) if c.data.tags['fold'] == '1']
    assert killed.info.status == 'RUNNING' and client.get_run(parent.info.run_id).info.status == 'RUNNING'

    r = run_cli(env, 'cv', '--resume', parent.info.run_id, '--params', exp / 'irf.yaml', '--quiet', cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'folds [0] already finished' in r.stdout
    assert f'fold 1: child run {killed.info.run_id} was left RUNNING by a process that ended; marked KILLED' in r.stdout
    kids = children(client, parent)
    assert client.get_run(killed.info.run_id).info.status == 'KILLED'
    assert sorted((c.data.tags['fold'], c.info.status) for c in kids) == [('0', 'FINISHED'), ('1', 'FINISHED'),
                                                                          ('1', 'KILLED')]
    finished = {c.info.run_id for c in kids if c.info.status == 'FINISHED'}
    s = json.loads((d / 'summary.json').read_text())
    assert set(s['ensemble']['run_ids']) == finished                  # the ensemble: the finished run of each fold
    assert set(pd.read_csv(d / 'oof_predictions.csv').fold) == {0, 1}
    assert client.get_run(parent.info.run_id).info.status == 'FINISHED'
    assert numbers(s) == numbers(request.getfixturevalue('smoke_cv')['summary'])   # asked last: under xdist
    # another worker may be running the smoke CV meanwhile
