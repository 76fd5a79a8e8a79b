"""`criteria-cls tune` killed mid-trial and rerun: the study goes on, the dead trial retried, no finished trial lost;
then more trials in two worker processes (`--jobs 2`) on the same storage."""
import os, signal, subprocess, time
import optuna, yaml
from mlflow import MlflowClient
from conftest import EXE, ROOT, run_cli, store_env
from criteria_cls.config import extends_chain, load_params

# the smoke profile made smaller still: one step on 16 pairs, short posts, no probe or sentence pieces
TINY = {'experiment': 'tune-e2e', 'train': {'max_steps': 1, 'max_train_pairs': 16}, 'prompt': {'max_length': 64},
        'model': {'sentence_probe': [], 'segments': 'post', 'post_score': 'features', 'warm_start': 'none'}}


def _wait_for(log, text:str, proc, timeout:float=300):
    "Wait until `text` appears in the file `log` written by `proc`; fail with the log if it ends or times out first."
    t0 = time.time()
    while text not in log.read_text():
        assert proc.poll() is None, f'tune ended (rc {proc.returncode}) before "{text}":\n{log.read_text()[-3000:]}'
        assert time.time() - t0 < timeout, f'no "{text}" after {timeout} s:\n{log.read_text()[-3000:]}'
        time.sleep(0.5)


def test_tune_killed_mid_trial_continues_on_rerun(tmp_path):
    params, space = tmp_path / 'mine.yaml', tmp_path / 'space.yaml'
    params.write_text(yaml.safe_dump({'extends': str(ROOT / 'params' / 'smoke.yaml'), **TINY}))
    space.write_text('train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}\n')
    env, args = store_env(tmp_path), ['tune', '--params', params, '--space', space, '--trials', 2, '--quiet']
    log = tmp_path / 'first.log'
    with open(log, 'w') as f:
        proc = subprocess.Popen([EXE, *map(str, args)], stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try: _wait_for(log, 'trial 1, fold 1/2:', proc)                   # trial 0 done, trial 1 half way
    finally: os.kill(proc.pid, signal.SIGKILL); proc.wait()
    storage = f'sqlite:///{tmp_path}/optuna.db'
    [name] = optuna.study.get_all_study_names(storage)
    before = optuna.load_study(study_name=name, storage=storage).trials
    assert [t.state.name for t in before] == ['COMPLETE', 'RUNNING'], log.read_text()[-2000:]

    r = run_cli(env, *args)                                              # the same command again
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'trial 1 was left running by process' in r.stderr, r.stderr[-2000:]
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert [t.state.name for t in trials] == ['COMPLETE', 'FAIL', 'COMPLETE']   # two complete, the killed one failed
    assert trials[2].system_attrs['failed_trial'] == 1 and trials[2].params == before[1].params  # ... and retried
    assert (trials[0].datetime_complete, trials[0].value) == (before[0].datetime_complete, before[0].value)  # not rerun
    assert trials[0].user_attrs['base'] and trials[0].params == {'train.lr': 3e-3}     # the base profile is trial 0

    d = tmp_path / 'studies' / name                                     # beside the params file
    best, p = max(trials[::2], key=lambda t: t.value), load_params(d / 'best.yaml')
    assert extends_chain(d / 'best.yaml')[0] == params and p.train.lr == best.params['train.lr']
    assert (p.train.max_steps, p.experiment) == (1, 'tune-e2e') and (d / 'study.html').stat().st_size > 10_000
    assert f'best params: {d / "best.yaml"}' in r.stdout

    client = MlflowClient(env['MLFLOW_TRACKING_URI'])
    exp = client.get_experiment_by_name('tune-e2e').experiment_id
    [study] = client.search_runs([exp], "tags.kind = 'study'")
    kids = {k.info.run_name: k for k in client.search_runs([exp], f"tags.mlflow.parentRunId = '{study.info.run_id}'")}
    assert study.info.status == 'FINISHED' and study.data.tags['study'] == name
    assert {n: k.info.status for n, k in kids.items()} == {'trial-0': 'FINISHED', 'trial-1': 'KILLED',
                                                           'trial-2': 'FINISHED'}
    assert kids['trial-2'].data.tags['retry_of'] == '1'
    folds = client.get_metric_history(kids['trial-2'].info.run_id, 'dev_f1_fold')
    assert sorted(m.step for m in folds) == [0, 1]                     # its folds, as steps

    # more trials, two worker processes side by side on the one storage (--jobs 2): the study grows, nothing rerun
    r = run_cli(env, *args[:-3], '--trials', 4, '--jobs', 2, '--quiet')
    assert r.returncode == 0, r.stderr[-3000:]
    after = optuna.load_study(study_name=name, storage=storage).trials
    new = [t for t in after[3:] if t.state.name == 'COMPLETE']
    assert [t.state.name for t in after[:3]] == ['COMPLETE', 'FAIL', 'COMPLETE'] and len(new) >= 2, after
    assert [(t.datetime_complete, t.value) for t in after[:3:2]] == [(t.datetime_complete, t.value) for t in trials[::2]]
    # run by the worker processes, not by the earlier commands (which of the two runs which trial is up to the
    # workers' start-up: a worker that starts late may find the study already grown)
    assert not {t.user_attrs['pid'] for t in new} & {t.user_attrs['pid'] for t in after[:3]}, [t.user_attrs for t in new]
