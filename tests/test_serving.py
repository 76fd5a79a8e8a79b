"""`make serve` (what the README says to run) on a registered criteria-cls model, from a shell where the venv is not
activated: answers equal `Predictor`'s, bad requests get a 4xx with a message."""
import json, os, shutil, signal, subprocess, sys, urllib.error, urllib.request
from pathlib import Path
from fixtures import free_port, wait_ready
import numpy as np
import pytest

NAME = 'serve-test-criteria-cls'
ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)
PAIRS = [{'post': 'I lie awake until 4am every night and sleep through my alarms.', 'criterion_id': 'A4'},
         {'post': 'Great leg day today, new squat record!', 'criterion_id': 'A9'},
         {'post': 'Everything is my fault, I ruin whatever I touch.', 'criterion_id': 'A1'}]
pytestmark = pytest.mark.xdist_group('smoke')   # the smoke CV's store: one xdist worker, in order


@pytest.fixture(scope='module')
def registered(smoke_cv):
    "The smoke CV's parent run, as `criteria-cls cv` made it, registered as NAME@champion (its fold ensemble)."
    from criteria_cls.registry import load_predictor, register
    uri = smoke_cv['env']['MLFLOW_TRACKING_URI']
    register(smoke_cv['parent'].info.run_id, uri, NAME, 'champion', log=lambda m: None)
    return {'uri': uri, 'tmp': smoke_cv['tmp'], 'predictor': load_predictor(f'models:/{NAME}@champion', uri),
            'folds': [smoke_cv['dir'] / f'fold_{k}_model' for k in smoke_cv['summary']['ensemble']['folds']]}


def post(url, body, timeout=120):
    "POST JSON; returns (status, parsed body)."
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read() or b'{}')


def test_serve_invocations(registered):
    port = free_port()
    base = f'http://127.0.0.1:{port}'
    # a fresh shell: the venv's bin is not on PATH (mlflow execs `uvicorn` from PATH: `make serve` sees to it)
    path = os.pathsep.join(d for d in os.environ.get('PATH', '').split(os.pathsep) if d and Path(d) != Path(VENV_BIN))
    env = {**{k: v for k, v in os.environ.items() if k not in ('VIRTUAL_ENV', 'MLFLOW_TRACKING_URI')}, 'PATH': path,
           'NO_PROXY': '127.0.0.1,localhost'}
    make = [shutil.which('make') or 'make', '-s', '-C', str(ROOT), 'serve']
    proc = subprocess.Popen([*make, f'MODEL=models:/{NAME}@champion', f'PORT={port}', f"STORE={registered['uri']}"],
                            env=env, cwd=registered['tmp'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        wait_ready(proc, base, 150)
        url = base + '/invocations'
        # good rows, in two request formats; the scores of the fold ensemble: the mean of the fold folders, each
        # under the ensemble's one calibration
        from criteria_cls.infer import Predictor
        pred = registered['predictor']
        want = Predictor.from_folders(registered['folds'], pred.threshold,
                                      meta={'calibration': pred.meta['calibration']}).predict(PAIRS)
        np.testing.assert_allclose(registered['predictor'].predict(PAIRS).probability.values, want.probability.values,
                                   atol=1e-6)
        for body in ({'dataframe_records': PAIRS},
                     {'dataframe_split': {'columns': ['post', 'criterion_id', 'criterion'],
                                          'data': [[r['post'], r['criterion_id'], r.get('criterion')]
                                                   for r in PAIRS]}}):
            status, got = post(url, body)
            assert status == 200, got
            rows = got['predictions']
            assert [r['criterion_id'] for r in rows] == ['A4', 'A9', 'A1']
            np.testing.assert_allclose([r['probability'] for r in rows], want.probability.values, atol=1e-6)
            assert [r['label'] for r in rows] == want.label.tolist()
            assert all(r['threshold'] == registered['predictor'].threshold for r in rows)
            # the evidence: the best sentence of each row's post, with its score
            assert all(json.loads(r['evidence'])[0]['sentence'] in p['post'] for r, p in zip(rows, PAIRS)), rows
        # a missing column
        status, got = post(url, {'dataframe_records': [{'criterion_id': 'A1'}]})
        assert 400 <= status < 500, (status, got)
        assert 'post' in got.get('message', ''), got
        # an unknown criterion id: the message names it and the known ids
        status, got = post(url, {'dataframe_records': [{'post': 'I feel low.', 'criterion_id': 'Z9'}]})
        assert 400 <= status < 500, (status, got)
        assert "unknown criterion_id 'Z9'" in got.get('message', '') and 'A1, A4, A9' in got['message'], got
        # a criterion of the caller's own: the smoke model has one output per trained criterion, and says which
        status, got = post(url, {'dataframe_records': [{'post': 'I feel low.', 'criterion_id': 'own',
                                                        'criterion': 'Low.'}]})
        assert 400 <= status < 500, (status, got)
        assert 'scores only the criteria it was trained with: A1, A4, A9' in got.get('message', ''), got
        # an empty post
        status, got = post(url, {'dataframe_records': [{'post': '', 'criterion_id': 'A1'}]})
        assert 400 <= status < 500 and "missing or empty 'post'" in got.get('message', ''), (status, got)
        # not JSON at all
        req = urllib.request.Request(url, data=b'post=hello', headers={'Content-Type': 'application/json'})
        with pytest.raises(urllib.error.HTTPError) as e: urllib.request.urlopen(req, timeout=60)
        assert 400 <= e.value.code < 500
        # the server is still healthy after the errors
        status, got = post(url, {'dataframe_records': PAIRS[:1]})
        assert status == 200 and len(got['predictions']) == 1
    finally:
        try: os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError: pass
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL); proc.wait(timeout=10)
