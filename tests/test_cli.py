"The installed `criteria-cls` command, run as a user runs it: a subprocess, its stdout, stderr and exit status."
import json, shutil, subprocess, sys
from pathlib import Path
from conftest import ROOT, run_cli, store_env

EXE = shutil.which('criteria-cls', path=str(Path(sys.executable).parent)) or 'criteria-cls'


def cli(*args, cwd=None):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_data_on_redsm5_sample(root, bench):
    r = cli('data', '--params', root / 'params/default.yaml', f'data.path={bench}/redsm5_sample', '--json', cwd=root)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s['posts'], s['pairs'], s['criteria']) == (17, 153, 9)
    assert s['length_unit'] == 'tokens'  # the backbone's tokenizer, loaded offline
    pos = {c['name']: c['positive'] for c in s['per_criterion']}
    assert pos['SLEEP_ISSUES'] >= 1 and sum(pos.values()) == s['positive']


def test_data_on_imhi_test(root, bench):
    r = cli('data', '--params', root / 'params/default.yaml', 'data.format=imhi',
            f'data.path={bench}/imhi_irf/test.csv', '--json', cwd=root)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s['posts'], s['criteria'], s['pairs'], s['positive']) == (1057, 2, 2113, 1366)


def _bad(tmp, root, *overrides):
    r = cli('data', '--params', root / 'params/default.yaml', *overrides, cwd=tmp)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert 'Traceback' not in r.stderr and r.stdout == ''
    assert r.stderr.startswith('criteria-cls data: error: ')
    return r.stderr


def test_bad_inputs_exit_2_without_traceback(tmp_path, root):
    (tmp_path / 'redsm5_posts.csv').write_text('post_id,body\np1,hello\n')
    (tmp_path / 'redsm5_annotations.csv').write_text(
        'post_id,sentence_id,sentence_text,DSM5_symptom,status,explanation\n')
    assert 'missing column(s) text. Found columns: post_id, body' in _bad(tmp_path, root, f'data.path={tmp_path}')
    assert 'not found' in _bad(tmp_path, root, f'data.path={tmp_path}/nowhere')
    assert "unknown params key 'cv.fold'" in _bad(tmp_path, root, 'cv.fold=3')
    (tmp_path / 'p.csv').write_bytes(b'post_id,text,criterion_id,label\np1,caf\xe9,A1,1\n')
    assert 'not UTF-8' in _bad(tmp_path, root, 'data.format=pairs', f'data.path={tmp_path}/p.csv')
    (tmp_path / 'bad.yaml').write_text('data: [oops\n')
    r = cli('data', '--params', tmp_path / 'bad.yaml', cwd=tmp_path)
    assert r.returncode == 2 and 'malformed YAML' in r.stderr and 'Traceback' not in r.stderr
    assert list(tmp_path.glob('*.tmp')) == []  # nothing half-written


def test_data_json_is_json_only_and_tables_keep_columns_apart(root, bench):
    imhi = ['data.format=imhi', f'data.path={bench}/imhi_irf/test.csv', '--words']
    r = cli('data', '--params', root / 'params/default.yaml', *imhi, cwd=root)
    assert r.returncode == 0, r.stderr
    rows = [l.split() for l in r.stdout.splitlines() if 'risk_of_' in l and 'note:' not in l]
    assert rows == [['risk_of_thwarted_belongingness', '784', '1057'],
                    ['risk_of_perceived_burdensomeness', '582', '1056']]
    r = cli('data', '--params', root / 'params/default.yaml', *imhi, '--json', cwd=root)
    s = json.loads(r.stdout)                                     # nothing but the JSON document on stdout
    assert s['notes'] and all(f'warning: {n}' in r.stderr for n in s['notes'])


def test_data_notes_and_clear_messages(tmp_path, root):
    "Missing pairs, repeated rows and criteria without data are noted; a semicolon CSV and an empty posts file say so."
    crit = ''.join(f'  - id: C{i}\n    name: N{i}\n    description: criterion {i}\n' for i in (1, 2, 3))
    (tmp_path / 'crit.yaml').write_text('criteria:\n' + crit)
    (tmp_path / 'p.csv').write_text('post_id,text,criterion_id,label\n' + ''.join(
        f'p{i},post number {i},C1,{int(i < 3)}\n' + (f'p{i},post number {i},C2,{int(i % 2)}\n' if i != 4 else '')
        for i in range(6)) + 'p0,post number 0,C1,1\n')
    pairs = ['data.format=pairs', f'data.path={tmp_path}/p.csv', f'data.criteria={tmp_path}/crit.yaml']
    r = cli('data', '--params', root / 'params/default.yaml', *pairs, '--json', '--words', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    notes = json.loads(r.stdout)['notes']
    assert notes == [f'{tmp_path}/p.csv: line 13: exact repeat of earlier rows, dropped',
                     '1 of 6 posts lack pairs for some criteria (1 (post, criterion) pairs absent; e.g. post p4 has '
                     'none for C2): absent pairs are neither trained on nor scored',
                     f'criteria C3 of the criteria file {tmp_path}/crit.yaml have no pairs in the data: left out']
    (tmp_path / 'semi.csv').write_text('post_id;text;criterion_id;label\np1;tired, so tired;C1;1\n')
    err = _bad(tmp_path, root, *pairs[:1], f'data.path={tmp_path}/semi.csv', pairs[2])
    assert 'separated by semicolons, not commas' in err
    (tmp_path / 'redsm5_posts.csv').write_text('post_id,text\n')
    (tmp_path / 'redsm5_annotations.csv').write_text(
        'post_id,sentence_id,sentence_text,DSM5_symptom,status,explanation\n')
    assert 'the posts file has no posts' in _bad(tmp_path, root, f'data.path={tmp_path}')


def _logged_cv(client, exp, tmp:Path, preds, data_hash:str, name:str) -> str:
    "A finished CV parent run as `aggregate` leaves it (tags, params.yaml, oof_predictions), without training."
    from criteria_cls import tracking
    from criteria_cls.config import load_params, save_params
    rid = tracking.start_run(client, exp, name, tags={'kind': 'cv', 'data_hash': data_hash, 'run_dir': str(tmp / name)})
    p = load_params(ROOT / 'params/default.yaml', ['metrics.bootstrap=200'])
    tracking.log_artifact(client, rid, save_params(p, tmp / 'params.yaml'))
    tracking.log_frame(client, rid, preds, 'oof_predictions')
    tracking.end_run(client, rid)
    return rid


def test_compare_two_runs_and_refuse_other_data(tmp_path):
    "`compare RUN_A RUN_B`: the table on stdout and the report in B's folder; runs over other data: exit 2."
    import numpy as np, pandas as pd
    from criteria_cls import tracking
    uri = f'sqlite:///{tmp_path}/mlflow.db'
    client = tracking.get_client(uri)
    exp = tracking.ensure_experiment(client, 'compare', tracking.artifact_location(uri, f'{tmp_path}/mlruns'))
    rng = np.random.default_rng(0)
    a = pd.DataFrame({'post_id': np.repeat(np.arange(40), 3), 'criterion_id': ['A1', 'A2', 'A3'] * 40})
    a = a.assign(label=rng.integers(0, 2, len(a)), prob=rng.random(len(a)), threshold=0.5)
    b = a.assign(prob=0.5 * a.label + 0.5 * rng.random(len(a)))          # the label leaks into B's scores
    ra, rb, other = (_logged_cv(client, exp, tmp_path, df, h, n)
                     for df, h, n in ((a, 'h1', 'run-a'), (b, 'h1', 'run-b'), (b, 'h2', 'run-other')))
    env = store_env(tmp_path)
    r = run_cli(env, 'compare', ra, rb, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = {l.split()[0]: l.split() for l in r.stdout.splitlines()[4:]}
    assert list(rows) == ['metric', 'F1', 'ROC-AUC', 'PR-AUC'] and rows['ROC-AUC'][-1] == '100.0%', r.stdout
    report = tmp_path / 'run-b' / f'compare_{ra[:8]}.html'
    assert report.exists() and f'report: {report} (attached to run B {rb}' in r.stderr, r.stderr
    r = run_cli(env, 'compare', ra, other, cwd=tmp_path, timeout=300)
    assert (r.returncode, r.stdout) == (2, ''), (r.returncode, r.stdout, r.stderr)
    assert 'Traceback' not in r.stderr
    assert (f'criteria-cls compare: error: run A {ra} (run-a) and run B {other} (run-other) scored different data: '
            f'data hash h1 (A) against h2 (B)') in r.stderr, r.stderr
