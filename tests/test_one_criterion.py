"""One criterion, the commonest shape in this field ('Does the poster suffer from depression?'), in every data
format, through `criteria-cls cv` and `holdout`: tiny data written here, the smoke profile."""
import json
from pathlib import Path
import pandas as pd, pytest
from conftest import run_cli, smoke_overrides, store_env

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


@pytest.mark.parametrize('fmt', ['redsm5', 'redsm5_single', 'pairs', 'imhi'])
def test_one_criterion_cv_and_holdout(fmt, tmp_path):
    (tmp_path / 'criteria.yaml').write_text(CRITERIA)
    data = ['data.format=' + fmt, f'data.path={write(fmt, tmp_path, "train", posts(0, 18))}', 'data.criteria_ids=null',
            f'data.criteria={tmp_path / "criteria.yaml"}']
    env = store_env(tmp_path)
    r = run_cli(env, 'data', '--params', 'params/smoke.yaml', *data, '--json', '--words')
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert (s['posts'], s['criteria'], s['positive'], s['splittable']) == (18, 1, 6, True)

    out = smoke_overrides(tmp_path, f'one-{fmt}')
    r = run_cli(env, 'cv', '--params', 'params/smoke.yaml', *data, *out, '--jobs', 2, '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Traceback' not in r.stderr
    d = Path(r.stdout.split('notebooks and summary: ')[1].split('\n')[0])
    summary = json.loads((d / 'summary.json').read_text())
    assert len(summary['per_criterion']) == 2 and summary['folds'] == 2       # the criterion and ALL
    [crit] = [v for k, v in summary['per_criterion'].items() if k != 'ALL']
    assert crit['support'] == 6                                  # every positive post tested once
    folds = json.loads((d / 'folds.json').read_text())['folds']
    ids = [p for p, _, _ in posts(0, 18)]
    if fmt != 'imhi': assert sorted(p for f in folds for p in f['test']) == ids   # IMHI ids hash the text
    assert [len(f['test']) for f in folds] == [9, 9]
    tested = [pd.read_csv(d / f'fold_{k}_test_predictions.csv') for k in (0, 1)]
    assert [int(t.label.sum()) for t in tested] == [3, 3]       # stratified on the one label: 3 positives each

    test = ['data.test_path=' + str(write(fmt, tmp_path, 'test', posts(100, 9)))]
    out = smoke_overrides(tmp_path, f'one-{fmt}-holdout')
    r = run_cli(env, 'holdout', '--params', 'params/smoke.yaml', *data, *test, *out, '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'test F1' in r.stdout and 'Traceback' not in r.stderr
