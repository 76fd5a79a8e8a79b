"""A first-time user's trial, replayed: their own small dataset and a params file that extends the project's, run
from a folder outside the repository: `cv` → the `register` command cv printed, run as printed → `screen` the
registered model → `make serve` it (as the README says), ask with the data's field names and for every criterion
→ stop it with Ctrl-C (SIGINT to its process group): a clean exit."""
import csv, json, os, random, shlex, signal, shutil, subprocess, sys, urllib.error, urllib.request
from pathlib import Path
from fixtures import free_port, wait_ready
import pandas as pd
from conftest import ROOT

VENV_BIN = Path(sys.executable).parent
CRITERIA = {'W': ('WORRY', 'The person worries excessively about many things and cannot control the worry.'),
            'R': ('RESTLESS', 'The person feels restless, keyed up or on edge.'),
            'S': ('SLEEP', 'The person has trouble falling or staying asleep.')}
SAY = {'W': ['I cannot stop worrying about everything that could go wrong.', 'My mind races with worst cases.',
             'Every small thing turns into a huge worry for me.', 'I fear that something terrible will happen.'],
       'R': ['I feel so restless that I cannot sit still.', 'I am always on edge and jumpy.',
             'My legs keep bouncing and I pace around the flat.', 'I feel keyed up all the time.'],
       'S': ['I lie awake until 4am most nights.', 'I wake up at 3am and never get back to sleep.',
             'Falling asleep takes me hours every night.', 'I barely sleep anymore.']}
PLAIN = ['Work was busy this week.', 'I made pasta for dinner.', 'My cat knocked over a plant.',
         'We watched a film on Sunday.', 'The bus was late again.', 'I started reading a new book.']
POST = 'I cannot stop worrying about my exams. I lie awake until 4am most nights.'


def write_trial(home:Path, n:int=36, seed:int=0) -> Path:
    "A generic pairs CSV of `n` posts and three anxiety criteria, and a params file extending params/smoke.yaml."
    rng, rows = random.Random(seed), []
    for i in range(n):
        has = {c: (i + k) % 3 == 0 or rng.random() < 0.25 for k, c in enumerate(CRITERIA)}
        text = ' '.join(rng.sample(PLAIN, 2) + [rng.choice(SAY[c]) for c in CRITERIA if has[c]])
        rows += [{'post_id': f'p{i:02d}', 'text': text, 'criterion_id': c, 'label': int(has[c]), 'description': d}
                 for c, (_, d) in CRITERIA.items()]
    with open(home / 'pairs.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, list(rows[0])); w.writeheader(); w.writerows(rows)
    (home / 'anxiety.yaml').write_text(f"extends: {ROOT / 'params' / 'smoke.yaml'}\nexperiment: anxiety-trial\n"
                                       "data: {format: pairs, path: pairs.csv, criteria: null, criteria_ids: null}\n")
    return home / 'anxiety.yaml'


def user_env() -> dict:
    "A user's shell: no store in the environment; the venv's commands found on PATH."
    env = {k: v for k, v in os.environ.items() if not k.startswith('MLFLOW_')}
    return {**env, 'PATH': f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", 'NO_PROXY': '127.0.0.1,localhost',
            'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'}


def run(argv, cwd, timeout=900):
    "A command as the user types it; `argv[0]` found on the user's PATH; no traceback, exit 0."
    exe = shutil.which(argv[0], path=user_env()['PATH']) or argv[0]
    r = subprocess.run([exe, *map(str, argv[1:])], capture_output=True, text=True, cwd=cwd, env=user_env(),
                       timeout=timeout)
    assert r.returncode == 0 and 'Traceback' not in r.stderr, (argv[:2], r.returncode, r.stderr[-3000:])
    return r


def ask(url, body):
    "POST JSON: (status, parsed body)."
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(req, timeout=120) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e: return e.code, json.loads(e.read() or b'{}')


def serve(model:str, store:str, cwd:Path, port:int):
    "`make serve` as the README says, from `cwd`, in its own process group (as a terminal's foreground job)."
    make = [shutil.which('make') or 'make', '-s', '-C', str(ROOT), 'serve', f'VENV={VENV_BIN.parent}',
            f'MODEL={model}', f'PORT={port}', f'STORE={store}']
    return subprocess.Popen(make, cwd=cwd, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def test_the_trial_replayed(tmp_path):
    home, work = tmp_path / 'anxiety', tmp_path / 'work'       # the data and params here; the user works there
    home.mkdir(); work.mkdir()
    params = write_trial(home)
    # cv (its two folds side by side), from a folder that is neither the repository nor the params file's:
    # the small dev parts say so
    out = run(['criteria-cls', 'cv', '--params', params, '--jobs', '2', '--quiet'], work).stdout
    assert 'warning: small dev parts: fold 0 has ' in out and 'a larger cv.dev_fraction' in out, out
    [store] = [l.split('MLflow store: ')[1] for l in out.splitlines() if l.startswith('MLflow store: ')]
    assert store == f"sqlite:///{home / 'mlflow.db'}"                         # beside the params file
    d = Path(out.split('notebooks and summary: ')[1].splitlines()[0])
    for page in ('fold_0.html', 'report.html'):                                # the note and the glossary
        html = (d / page).read_text()
        assert 'Small data.' in html and 'What the numbers mean' in html and 'PR-AUC' in html, page
    assert 'The misclassified pairs, to read' in (d / 'fold_0.html').read_text()
    oof = pd.read_csv(d / 'oof_predictions.csv', dtype={'post_id': str})
    texts = pd.read_csv(home / 'pairs.csv', dtype={'post_id': str}).drop_duplicates('post_id')
    assert oof.text.tolist() == oof.post_id.map(dict(zip(texts.post_id, texts.text))).tolist()
    # the register command cv printed, run as printed, in the folder the user is in
    [line] = [l for l in out.splitlines() if l.startswith('register it: ')]
    reg = run(shlex.split(line[len('register it: '):]), work)
    model = json.loads(reg.stdout)['uri']
    assert model.startswith('models:/') and store in reg.stderr
    # screen the registered model (its store named as the register command named it); no mlflow.db left here
    scr = run(['criteria-cls', 'screen', '--model', model, '--tracking-uri', store, '--post', POST, '--json'], work)
    screened = [json.loads(l) for l in scr.stdout.splitlines()]
    assert [r['criterion_id'] for r in screened] == list(CRITERIA)
    assert not (work / 'mlflow.db').exists(), sorted(p.name for p in work.iterdir())
    # serve it; ask with the data's field name (text), then with the post alone (every criterion)
    port = free_port()
    proc = serve(model, store, work, port)
    try:
        wait_ready(proc, f'http://127.0.0.1:{port}', 180)
        url = f'http://127.0.0.1:{port}/invocations'
        status, got = ask(url, {'dataframe_records': [{'text': POST, 'criterion_id': 'S'}]})
        assert status == 200, got
        [one] = got['predictions']
        assert (one['row'], one['criterion_id']) == (1, 'S')
        assert abs(one['probability'] - screened[2]['probability']) < 1e-5
        status, got = ask(url, {'dataframe_records': [{'text': POST}]})
        assert status == 200, got
        assert [(r['row'], r['criterion_id']) for r in got['predictions']] == [(1, c) for c in CRITERIA]
        assert all(abs(r['probability'] - s['probability']) < 1e-5 for r, s in zip(got['predictions'], screened))
        # a bad row: a one-line 400 naming it, not the request table
        status, got = ask(url, {'dataframe_records': [{'text': POST, 'criterion_id': 'S'}, {'text': POST,
                                                                                             'criterion_id': 'A1'}]})
        assert status == 400 and got['message'] == "row 2: unknown criterion_id 'A1' (the model knows W, R, S)", got
    finally:
        if proc.poll() is None: os.killpg(proc.pid, signal.SIGINT)                 # Ctrl-C in its terminal
        try: log, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL); log, _ = proc.communicate(timeout=10)
    # make dies of the SIGINT it was sent (a shell shows 130) once the server has shut down, or exits 0
    assert proc.returncode in (0, 130, -signal.SIGINT), (proc.returncode, log[-3000:])
    assert 'Finished server process' in log, log[-3000:]
    for noise in ('Traceback', 'make: ***', 'Aborted!'): assert noise not in log, log[-3000:]
