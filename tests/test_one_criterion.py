"""One criterion, the commonest shape in this field ('Does the poster suffer from depression?'), in every data
format: the loaders, folds and holdout parts in process for each, `criteria-cls cv` for one; tiny data written here."""
import json
from pathlib import Path
import pandas as pd, pytest
from conftest import ROOT, run_cli, smoke_overrides, store_env

QUESTION = 'Does the poster suffer from depression?'
SAD = ['I have felt empty and hopeless for weeks', 'nothing matters anymore and I cry every night',
       'I cannot get out of bed, everything feels pointless', 'I feel worthless and so very tired of it all']
FINE = ['went hiking with friends, lovely weather', 'new recipe turned out great, the kids loved it',
        'finished the marathon, legs sore but happy', 'our team won the league, celebrating tonight']
CRITERIA = 'criteria:\n  - id: DEP\n    name: DEPRESSION\n    description: The poster suffers from depression.\n'


def posts(start:int, n:int) -> list:
    "`(post_id, text, label)` for n posts; every third one depressed."
    return [(f'q{i:03d}', f'{(SAD if i % 3 == 0 else FINE)[i % 4]} (day {i}).', int(i % 3 == 0))
            for i in range(start, start + n)]


def write(fmt:str, d:Path, name:str, rows:list) -> Path:
    "The rows as a dataset of format `fmt` under `d`; its path."
    if fmt == 'redsm5':
        f = d / name; f.mkdir()
        (f / 'redsm5_posts.csv').write_text('post_id,text\n' + ''.join(f'{p},"{t}"\n' for p, t, _ in rows))
        ann = ''.join(f'{p},{p}_1,"{t}",DEPRESSION,1,sad\n' for p, t, y in rows if y)
        head = 'post_id,sentence_id,sentence_text,DSM5_symptom,status,explanation\n'
        (f / 'redsm5_annotations.csv').write_text(head + ann)
        return f
    f = d / f'{name}.csv'
    if fmt == 'redsm5_single':
        f.write_text('post_id,text,labels\n' + ''.join(f'{p},"{t}",{"DEPRESSION" if y else ""}\n' for p, t, y in rows))
    elif fmt == 'pairs':
        f.write_text('post_id,text,criterion_id,description,label\n' +
                     ''.join(f'{p},"{t}",DEP,The poster suffers from depression.,{y}\n' for p, t, y in rows))
    else:   # IMHI: the prompt split over post and question; the answer's first word is the label
        q = f'" Question: The answer to the question: ""{QUESTION}"" is "'
        f.write_text('post,question,response\n' +
                     ''.join(f'"Post: {t}",{q},"{"yes" if y else "no"}. Reasoning: ..."\n' for _, t, y in rows))
    return f


def params_for(fmt:str, d:Path, extra=()) -> tuple:
    "The smoke params on a one-criterion dataset of format `fmt` written under `d`, and the override strings."
    from criteria_cls.config import load_params
    (d / 'criteria.yaml').write_text(CRITERIA)
    data = ['data.format=' + fmt, f'data.path={write(fmt, d, "train", posts(0, 18))}', 'data.criteria_ids=null',
            f'data.criteria={d / "criteria.yaml"}', *extra]
    return load_params(ROOT / 'params' / 'smoke.yaml', data), data


@pytest.mark.parametrize('fmt', ['redsm5', 'redsm5_single', 'pairs', 'imhi'])
def test_one_criterion_in_every_format(fmt, tmp_path):
    "Each loader reads the one criterion (in process), folds are stratified on its label, the holdout parts are apart."
    from criteria_cls.data import load_table
    from criteria_cls.jobs import holdout_parts
    from criteria_cls.splits import fold_pairs, folds_from_params
    test = tmp_path / 'held'; test.mkdir()
    p, _ = params_for(fmt, tmp_path, [f'data.test_path={write(fmt, test, "test", posts(100, 9))}'])
    t = load_table(p)
    assert (t.pairs.post_id.nunique(), t.pairs.criterion_id.nunique(), int(t.pairs.label.sum())) == (18, 1, 6)
    doc = folds_from_params(t, p)
    ids = [q for q, _, _ in posts(0, 18)]
    if fmt != 'imhi': assert sorted(q for f in doc['folds'] for q in f['test']) == ids   # IMHI ids hash the text
    assert [len(f['test']) for f in doc['folds']] == [9, 9]
    assert [int(fold_pairs(t, doc, k)['test'].label.sum()) for k in (0, 1)] == [3, 3]  # stratified: 3 positives each
    parts = holdout_parts(p, t)
    assert (parts['test'].post_id.nunique(), int(parts['test'].label.sum())) == (9, 3)
    assert not set(parts['test'].post_id) & (set(parts['train'].post_id) | set(parts['dev'].post_id))


def test_one_criterion_cv_through_the_cli(tmp_path):
    "One format end to end as a user runs it: `data`, then `cv --jobs 2` (the holdout CLI is tested on IMHI)."
    _, data = params_for('redsm5', tmp_path)
    env = store_env(tmp_path)
    r = run_cli(env, 'data', '--params', 'params/smoke.yaml', *data, '--json', '--words')
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert (s['posts'], s['criteria'], s['positive'], s['splittable']) == (18, 1, 6, True)
    r = run_cli(env, 'cv', '--params', 'params/smoke.yaml', *data, *smoke_overrides(tmp_path, 'one'), '--jobs', 2,
                '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Traceback' not in r.stderr
    d = Path(r.stdout.split('notebooks and summary: ')[1].split('\n')[0])
    summary = json.loads((d / 'summary.json').read_text())
    assert len(summary['per_criterion']) == 2 and summary['folds'] == 2       # the criterion and ALL
    [crit] = [v for k, v in summary['per_criterion'].items() if k != 'ALL']
    assert crit['support'] == 6                                  # every positive post tested once
    tested = [pd.read_csv(d / f'fold_{k}_test_predictions.csv') for k in (0, 1)]
    assert [int(t.label.sum()) for t in tested] == [3, 3]
