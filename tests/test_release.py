"""The model a CV releases is chosen without the test folds: after every fold's test scores and test labels change,
`register` ships the same fold models at the same threshold."""
import hashlib, shutil, sqlite3, tempfile
from contextlib import closing
from pathlib import Path
import pandas as pd
import pytest
pytestmark = pytest.mark.xdist_group('smoke')   # reads the smoke CV's store: one xdist worker, in order

TEST_METRICS = ('f1', 'precision', 'recall', 'accuracy', 'weighted_f1', 'roc_auc', 'pr_auc')


def copy_store(src:Path, dst:Path) -> str:
    "A copy of the sqlite store and artifacts in `src`, in `dst`: its runs point at the copied artifacts (the URI)."
    old, new = (src / 'mlruns').resolve().as_uri(), (dst / 'mlruns').resolve().as_uri()
    shutil.copytree(src / 'mlruns', dst / 'mlruns')
    with closing(sqlite3.connect(src / 'mlflow.db')) as a, closing(sqlite3.connect(dst / 'mlflow.db')) as b:
        a.backup(b)
        b.execute('UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)', (old, new))
        b.execute('UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)', (old, new))
        b.commit()
        assert b.execute('SELECT count(*) FROM runs WHERE artifact_uri LIKE ?', (old + '%',)).fetchone() == (0,)
    return f'sqlite:///{dst}/mlflow.db'


def released(store:str, name:str, version:int) -> dict:
    "`predictor.json` of a registered version (which fold folders, which threshold, what it is) and its files."
    from criteria_cls.registry import _registered, pyfunc_members
    with tempfile.TemporaryDirectory() as td:
        cfg, folders = pyfunc_members(_registered(f'models:/{name}/{version}', store, td))
        files = {str(f.relative_to(folders[0].parent)): hashlib.sha256(f.read_bytes()).hexdigest()
                 for d in folders for f in sorted(d.rglob('*')) if f.is_file()}
        return {**cfg, 'files': files}


def test_register_never_reads_a_test_score(smoke_cv, tmp_path):
    from mlflow import MlflowClient
    from criteria_cls import tracking
    from criteria_cls.metrics import Calibration, best_threshold
    from criteria_cls.registry import ensemble_calibration, ensemble_threshold, register
    store, pid = copy_store(smoke_cv['tmp'], tmp_path), smoke_cv['parent'].info.run_id
    client = MlflowClient(store)
    kids = tracking.latest_fold_runs(client, pid)
    before = register(pid, store, 'release-test', alias=None, log=lambda m: None)
    # what it ships: every fold, at the threshold of the pooled dev predictions (recomputed here from their tables)
    dev = pd.concat([tracking.load_frame(client, r.info.run_id, 'dev_predictions') for r in kids.values()])
    ps = smoke_cv['parent'].data.params
    cal = ensemble_calibration(dev, ps['metrics.calibration'], int(ps['seed']))    # one calibration for all folds
    thr = best_threshold(dev.label, cal.apply(dev.prob_raw), float(ps['metrics.threshold_step']), ps['metrics.select'])
    before_thr = float(before['tags']['threshold'])
    assert before['tags']['members'] == ', '.join(f'fold_{k}' for k in sorted(kids)) and len(kids) == 2
    assert before['tags']['threshold'] == f'{thr:.4f}' == f"{smoke_cv['summary']['ensemble']['threshold']:.4f}"
    assert before['tags']['what'] == (f'ensemble of 2 fold models, threshold {thr:.2f} tuned on the pooled '
                                      f'out-of-fold dev predictions ({len(dev)} dev pairs)')

    # every test score changes (the fold a choice by test F1 would take now scores worst), every test label flips
    f1 = {k: r.data.metrics['test_f1'] for k, r in kids.items()}
    was_best = max(f1, key=f1.get)
    for k, r in kids.items():
        tracking.log_metrics(client, r.info.run_id, {**{f'test_{m}': float(k != was_best) for m in TEST_METRICS},
                                                     'test_threshold': 0.99})
        test = tracking.load_frame(client, r.info.run_id, 'test_predictions')
        tracking.log_frame(client, r.info.run_id, test.assign(label=1 - test.label), 'test_predictions')
        again = tracking.load_frame(client, r.info.run_id, 'test_predictions')
        assert (again.label == 1 - test.label).all() and len(again) > 0
    oof = tracking.load_frame(client, pid, 'oof_predictions')
    tracking.log_frame(client, pid, oof.assign(label=1 - oof.label), 'oof_predictions')
    tracking.log_metrics(client, pid, {f'oof_{m}': 0.0 for m in TEST_METRICS})
    now = {k: client.get_run(r.info.run_id).data.metrics['test_f1'] for k, r in kids.items()}
    assert max(now, key=now.get) != was_best

    after = register(pid, store, 'release-test', alias=None, log=lambda m: None)
    assert after['version'] == before['version'] + 1
    for t in ('members', 'threshold', 'dev_pairs', 'what'): assert after['tags'][t] == before['tags'][t], t
    assert after['tags']['cv_f1'] == '0.0000' != before['tags']['cv_f1']     # what it reports did change
    a, b = released(store, 'release-test', before['version']), released(store, 'release-test', after['version'])
    assert (a['members'], a['threshold'], a['files']) == (b['members'], b['threshold'], b['files'])
    same = ('kind', 'folds', 'dev_pairs', 'threshold', 'select', 'calibration')
    assert {k: a['meta'][k] for k in same} == {k: b['meta'][k] for k in same}

    # the dev predictions are what it is tuned on: every positive at 0.3 and negative at 0.1 (before calibration)
    # moves it between the two
    for r in kids.values():
        d = tracking.load_frame(client, r.info.run_id, 'dev_predictions')
        tracking.log_frame(client, r.info.run_id, d.assign(prob_raw=0.1 + 0.2 * d.label), 'dev_predictions')
    e = ensemble_threshold(client, list(kids.values()))
    c = Calibration.from_dict(e['calibration'])
    assert c.apply(0.1) < e['threshold'] <= c.apply(0.3) and e['threshold'] != before_thr
