"`criteria-cls predict | screen | register | bench`, run as a user runs them: subprocesses, stdout, stderr, exit codes."
import json, os, pty, subprocess
import numpy as np, pandas as pd
import pytest
from conftest import EXE, run_cli
POST = 'I lie awake until 4am every night, then sleep through my alarms and feel exhausted.'
pytestmark = pytest.mark.xdist_group('smoke')   # the smoke CV's store: one xdist worker, in order


@pytest.fixture(scope='module')
def model(smoke_cv):
    "The smoke CV's fold 0 (its model folder, its child run), the parent run and its fold ensemble, the store's env."
    from criteria_cls.infer import Predictor
    kids = smoke_cv['client'].search_runs([smoke_cv['parent'].info.experiment_id],
                                          filter_string=f"tags.mlflow.parentRunId = '{smoke_cv['parent'].info.run_id}'")
    run = {int(r.data.tags['fold']): r for r in kids}
    folder = smoke_cv['dir'] / 'fold_0_model'
    ens = smoke_cv['summary']['ensemble']      # what a CV run stands for: every fold, one pooled-dev threshold
    return {'folder': folder, 'run_id': run[0].info.run_id, 'parent_id': smoke_cv['parent'].info.run_id,
            'env': smoke_cv['env'],
            'tmp': smoke_cv['tmp'], 'predictor': Predictor.from_folders([folder]),
            'ensemble': Predictor.from_folders([smoke_cv['dir'] / f'fold_{k}_model' for k in ens['folds']],
                                               ens['threshold'], meta={'calibration': ens['calibration']}),
            'criteria': ['A1', 'A4', 'A9'], 'ens': ens}


def cli(m, *args, input=None):
    return run_cli(m['env'], *args, cwd=m['tmp'], input=input, timeout=600)


def ok(r):
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Traceback' not in r.stderr
    return r.stdout


def bad(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr[-3000:])
    assert 'Traceback' not in r.stderr and r.stdout == ''
    for n in needles: assert n in r.stderr, r.stderr
    return r.stderr


def test_predict_one_pair(model):
    r = json.loads(ok(cli(model, 'predict', '--model', model['folder'], '--post', POST, '--criterion', 'A4')))
    want = model['predictor'].predict([{'post': POST, 'criterion_id': 'A4'}]).iloc[0]
    assert set(r) == {'criterion_id', 'probability', 'label', 'threshold', 'model'}
    assert r['criterion_id'] == 'A4' and r['model'] == str(model['folder'])
    assert abs(r['probability'] - want.probability) < 1e-6
    assert r['label'] == want.label and r['threshold'] == want.threshold
    res = cli(model, 'predict', '--model', f"runs:/{model['run_id']}", '--post', POST, '--criterion', 'A4', '--json')
    r = json.loads(ok(res))                                      # --json: stdout is the JSON line and nothing else
    assert f"MLflow store: {model['env']['MLFLOW_TRACKING_URI']}" in res.stderr
    assert r['criterion_id'] == 'A4' and abs(r['probability'] - want.probability) < 1e-6
    # the smoke model has one output per trained criterion: a criterion text of the caller's is an error naming them
    bad(cli(model, 'predict', '--model', model['folder'], '--post', POST,
            '--criterion-text', 'The person sleeps badly.'),
        'scores only the criteria it was trained with: A1, A4, A9')


def test_predict_files(model):
    tmp = model['tmp']
    rows = [{'post_id': f'p{i}', 'post': f'{POST} ({i})', 'criterion_id': c}
            for i, c in enumerate(['A1', 'A4', 'A9', 'A1'])]
    (tmp / 'in.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    ok(cli(model, 'predict', '--model', model['folder'], '--input', tmp / 'in.jsonl', '--output', tmp / 'out.jsonl'))
    got = [json.loads(l) for l in (tmp / 'out.jsonl').read_text().splitlines()]
    want = model['predictor'].predict(rows)
    assert [g['post_id'] for g in got] == ['p0', 'p1', 'p2', 'p3']
    assert [g['criterion_id'] for g in got] == ['A1', 'A4', 'A9', 'A1']
    np.testing.assert_allclose([g['probability'] for g in got], want.probability.values, atol=1e-6)
    # CSV in (a post spanning lines), CSV out
    (tmp / 'in.csv').write_text('post_id,post,criterion_id\nq1,"first line\nsecond line",A4\nq2,short,A9\n')
    ok(cli(model, 'predict', '--model', model['folder'], '--input', tmp / 'in.csv', '--output', tmp / 'out.csv'))
    out = pd.read_csv(tmp / 'out.csv')
    assert out.post_id.tolist() == ['q1', 'q2']
    assert set(out.columns) == {'post_id', 'criterion_id', 'probability', 'label', 'threshold'}
    want = model['predictor'].predict([{'post': 'first line\nsecond line', 'criterion_id': 'A4'},
                                       {'post': 'short', 'criterion_id': 'A9'}])
    np.testing.assert_allclose(out.probability.values, want.probability.values, atol=1e-6)


def test_predict_bad_input_exits_2_and_writes_nothing(model):
    tmp = model['tmp']
    (tmp / 'bad.csv').write_text('post_id,post,criterion_id\nq1,"a post\nover two lines",A1\nq2,,A4\n'
                                 'q3,fine,Z9\nq4,"too",A1,extra\n')
    err = bad(cli(model, 'predict', '--model', model['folder'], '--input', tmp / 'bad.csv',
                  '--output', tmp / 'bad_out.jsonl'),
              "line 4: missing or empty 'post'", "line 5: unknown criterion_id 'Z9'", 'line 6: expected 3 fields',
              'nothing written')
    assert err.startswith('criteria-cls predict: error: ')
    assert not (tmp / 'bad_out.jsonl').exists() and not list(tmp.glob('.bad_out*'))
    bad(cli(model, 'predict', '--model', model['folder'], '--input', tmp / 'missing.jsonl',
            '--output', tmp / 'x.jsonl'), 'not found')
    bad(cli(model, 'predict', '--model', model['folder'], '--post', POST, '--criterion', 'B7'),
        "unknown criterion_id 'B7'")
    bad(cli(model, 'predict', '--model', tmp / 'no_such_model', '--post', POST, '--criterion', 'A1'), 'not found')
    bad(cli(model, 'predict', '--model', 'runs:/0123456789abcdef', '--post', POST, '--criterion', 'A1'),
        'no MLflow run')
    bad(cli(model, 'predict', '--model', model['folder'], '--post', POST), '--criterion')


def test_screen_from_stdin_and_argument(model):
    lines = ok(cli(model, 'screen', '--model', model['folder'], input=POST)).splitlines()
    got = [json.loads(l) for l in lines]
    assert [g['criterion_id'] for g in got] == model['criteria']
    want = model['predictor'].screen(POST)
    np.testing.assert_allclose([g['probability'] for g in got], want.probability.values, atol=1e-6)
    assert got[1]['name'] == 'SLEEP_ISSUES'
    # the smoke model scores sentences: each decision comes with its best sentence, a sentence of the post
    assert all(len(g['evidence']) == 1 and g['evidence'][0]['sentence'] in POST for g in got)
    post2 = POST + ' Nothing is fun anymore.'
    two = [json.loads(l)
           for l in ok(cli(model, 'screen', '--model', model['folder'], '--evidence', 2, input=post2)).splitlines()]
    both = sorted([POST, 'Nothing is fun anymore.'])
    assert all(sorted(e['sentence'] for e in g['evidence']) == both for g in two), two
    assert [e['score'] for e in two[0]['evidence']] == sorted((e['score'] for e in two[0]['evidence']), reverse=True)
    bad(cli(model, 'screen', '--model', model['folder'], '--evidence', -1, input=POST), 'at least 1')
    bad(cli(model, 'screen', '--model', model['folder'], input='   '), 'empty')


def test_register_the_cv_then_load_by_alias_in_a_new_process(model):
    "The CV run that `criteria-cls cv` made, registered: its fold ensemble, loaded back by alias; one fold by name."
    res = cli(model, 'register', '--run-id', model['parent_id'], '--name', 'cli-test-model', '--json')
    r = json.loads(ok(res))
    assert r['uri'] == 'models:/cli-test-model@champion' and r['version'] == 1
    e = model['ens']
    # it says what it registers, and that this smoke run (train.max_steps=3) is no model to rely on
    pid = model['parent_id']
    what = (f"ensemble of {len(e['folds'])} fold models, threshold {e['threshold']:.2f} tuned on the pooled "
            f"out-of-fold dev predictions ({e['dev_pairs']} dev pairs)")
    assert f"registering run {pid}: {what}" in res.stderr
    assert f"registered cli-test-model version 1 as @champion from run {pid}: {what}" in res.stderr
    assert 'params file' in res.stderr and 'smoke.yaml' in res.stderr and 'optimizer steps' in res.stderr
    assert 'warning: this looks like a smoke-test run (train.max_steps=3' in res.stderr
    assert '@champion all the same' in res.stderr
    assert r['warning'].startswith('this looks like a smoke-test run')
    got = json.loads(ok(cli(model, 'predict', '--model', r['uri'], '--post', POST, '--criterion', 'A4')))
    want = model['ensemble'].predict([{'post': POST, 'criterion_id': 'A4'}]).iloc[0]
    assert abs(got['probability'] - want.probability) < 1e-6 and abs(got['threshold'] - e['threshold']) < 1e-4
    # one fold by name: the CV run with --fold 0 scores as fold 0's folder, at that fold's own threshold
    got = json.loads(ok(cli(model, 'predict', '--model', f'runs:/{pid}', '--fold', '0', '--post', POST,
                            '--criterion', 'A4')))
    want = model['predictor'].predict([{'post': POST, 'criterion_id': 'A4'}]).iloc[0]
    assert abs(got['probability'] - want.probability) < 1e-6 and got['threshold'] == want.threshold
    bad(cli(model, 'predict', '--model', 'models:/cli-test-model@nobody', '--post', POST, '--criterion', 'A4'),
        'cannot load models:/cli-test-model@nobody')
    bad(cli(model, 'register', '--run-id', 'fffffffffffffffff'), 'no MLflow run')


def test_bench(model):
    b = json.loads(ok(cli(model, 'bench', '--model', model['folder'], '--n', 12, '--posts', 2, '--json')))
    assert b['pairs'] == 12 and b['posts'] == 2 and b['criteria'] == 3
    assert 0 < b['latency_ms']['p50'] <= b['latency_ms']['p95'] <= b['latency_ms']['p99']
    assert b['throughput_pairs_s'] > 0
    assert b['screen_prefix_reuse'] is False
    bad(cli(model, 'bench'), '--model')


def at_terminal(m, *args):
    "Run `criteria-cls` with stdout on a pseudo-terminal, as at a shell; (exit status, screen text, stderr)."
    master, slave = pty.openpty()
    r = subprocess.run([EXE, *map(str, args)], stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                       text=True, cwd=m['tmp'], env=m['env'], timeout=600)
    os.close(slave)
    out = b''
    while True:
        try: chunk = os.read(master, 65536)
        except OSError: break
        if not chunk: break
        out += chunk
    os.close(master)
    return r.returncode, out.decode().replace('\r\n', '\n'), r.stderr


def test_screen_and_predict_at_a_terminal_print_a_table(model):
    rc, out, err = at_terminal(model, 'screen', '--model', model['folder'], '--post', POST)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"model {model['folder']}: minilm-l6 + lora") and out.count(str(model['folder'])) == 1
    assert lines[1].split() == ['criterion', 'name', 'probability', 'decision', 'threshold', 'top', 'sentence']
    want = model['predictor'].screen(POST)
    assert [l.split()[:3] for l in lines[2:]] == [[c, n, f'{p:.3f}'] for c, n, p in zip(want.criterion_id, want.name,
                                                                                      want.probability)]
    assert [l.split()[3] for l in lines[2:]] == ['match' if y else 'no' for y in want.label]
    rc, out, err = at_terminal(model, 'predict', '--model', model['folder'], '--post', POST, '--criterion', 'A4')
    assert rc == 0, err
    assert out.splitlines()[2].split()[:2] == ['A4', 'SLEEP_ISSUES'] and len(out.splitlines()) == 3
    rc, out, err = at_terminal(model, 'screen', '--model', model['folder'], '--post', POST, '--json')
    assert [json.loads(l)['criterion_id'] for l in out.splitlines()] == model['criteria']   # --json: JSON lines anyway


def test_bench_train_json_is_json_only(model, root):
    r = cli(model, 'bench', 'train', '--params', root / 'params/smoke.yaml', '--n', 16, '--steps', 1, '--json')
    b = json.loads(ok(r))                                        # the whole of stdout is one JSON document
    assert b['ours']['pairs_per_s'] > 0 and b['ours_padded']['pairs_per_s'] > 0
