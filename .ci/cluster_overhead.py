#!/usr/bin/env python3
"""The smoke CV on the local engine and on the Ray engine, side by side in one run: where the extra seconds go.

Usage: python .ci/cluster_overhead.py   (from the project root; about 5 minutes on 2 cores)
Starts a tracking server on PostgreSQL (.ci/tracking_server.sh) and a Ray head + two 1-CPU worker nodes on
loopback (as tests/test_cluster.py does, the data hidden from the workers), runs `criteria-cls cv` of
params/smoke.yaml with `--jobs 1` on each engine, prints the wall times, the per-fold stages and whether the
summary numbers agree; stops everything at the end."""
import json, os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests'))
from mlflow import MlflowClient                                   # noqa: E402
from conftest import EXE, smoke_overrides                         # noqa: E402
from fixtures import free_port                                    # noqa: E402
from test_cluster import COMPARE, SERVER, Cluster                 # noqa: E402

STAGES = ('time_fetch_s', 'time_startup_s', 'time_job_s', 'time_html_s', 'time_upload_s', 'time_wall_s')


def cv(env, tmp, exp, *args) -> tuple:
    "Run the smoke CV; `(wall seconds, stdout, its summary, {fold: metrics})`."
    t0 = time.time()
    r = subprocess.run([EXE, 'cv', '--params', str(ROOT / 'params' / 'smoke.yaml'), *smoke_overrides(tmp, exp),
                        '--quiet', '--jobs', '1', *args], cwd=tmp, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(env['MLFLOW_TRACKING_URI'])
    e = client.get_experiment_by_name(exp)
    [parent] = client.search_runs([e.experiment_id], filter_string="tags.kind = 'cv'")
    kids = client.search_runs([e.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    s = json.loads((Path(parent.data.tags['run_dir']) / 'summary.json').read_text())
    return wall, r.stdout, s, {int(k.data.tags['fold']): k.data.metrics for k in kids}


def main():
    base = Path(tempfile.mkdtemp(prefix='clo_', dir='/tmp')); base.chmod(0o711)
    hidden = base / 'hidden'; hidden.mkdir()
    shutil.copytree(ROOT / 'data' / 'redsm5_demo', hidden / 'redsm5_demo')
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHON': sys.executable, 'HF_HUB_OFFLINE': '1',
           'TRANSFORMERS_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}   # one thread per fold on both engines
    env.pop('MLFLOW_RUN_ID', None)
    cl, port, ray_port, t = Cluster(env, base), free_port(), free_port(), {}
    try:
        t0 = time.time()
        uri = subprocess.run(['bash', str(SERVER), 'start', str(base / 'tracking'), str(port)], env=env, check=True,
                             capture_output=True, text=True).stdout.strip()
        t['tracking server start (PostgreSQL initdb + mlflow server)'] = time.time() - t0
        t0 = time.time()
        cl.start('h', '--head', '--port', str(ray_port), '--num-cpus', '0', '--node-ip-address', '127.0.0.1',
                 '--include-dashboard=false')
        cl.ready('h')
        for n in ('a', 'b'):
            cl.start(n, '--address', f'127.0.0.1:{ray_port}', '--num-cpus', '1', '--node-ip-address', '127.0.0.1',
                     hide=hidden)
        for n in ('a', 'b'): cl.ready(n)
        t['Ray cluster start (head, then two worker nodes)'] = time.time() - t0
        (base / 'local').mkdir(); (base / 'ray').mkdir()
        lw, lout, ls, lf = cv({**env, 'MLFLOW_TRACKING_URI': f'sqlite:///{base}/local/mlflow.db'}, base / 'local',
                              'local', f'data.path={hidden}/redsm5_demo')
        rw, rout, rs, rf = cv({**env, 'MLFLOW_TRACKING_URI': uri}, base / 'ray', 'ray',
                              f'data.path={hidden}/redsm5_demo', '--engine', 'ray', '--address', f'127.0.0.1:{ray_port}')
    finally:
        cl.close()
        subprocess.run(['bash', str(SERVER), 'stop', str(base / 'tracking')], env=env)
        shutil.rmtree(base, ignore_errors=True)
    for k, v in t.items(): print(f'{k:<58}{v:7.1f} s')
    print(f"{'smoke CV wall time, local engine (sqlite store)':<58}{lw:7.1f} s")
    print(f"{'smoke CV wall time, Ray engine (tracking server)':<58}{rw:7.1f} s")
    agg = lambda out: float(re.search(r'aggregation and CV report: (\d+) s', out).group(1))
    ship = re.search(r'inputs for the workers on the parent run: .*\(([\d.]+) s\)', rout)
    print(f"{'aggregation (local / Ray)':<58}{agg(lout):7.0f} / {agg(rout):.0f} s")
    print(f"{'inputs attached to the parent run (Ray, driver)':<58}{float(ship.group(1)) if ship else float('nan'):7.1f} s")
    print(f"{'per fold, seconds':<22}" + ''.join(f'{s[5:-2]:>10}' for s in STAGES))
    for name, f in (('local', lf), ('ray', rf)):
        for k in sorted(f):
            print(f'{name + " fold " + str(k):<22}' + ''.join(f"{f[k].get(s, float('nan')):10.1f}" for s in STAGES))
    same = {k: ls[k] for k in COMPARE} == {k: rs[k] for k in COMPARE}
    print(f"summary.json numbers equal ({', '.join(COMPARE)}): {same}; pooled F1 local "
          f"{ls['pooled_oof']['f1']['value']} Ray {rs['pooled_oof']['f1']['value']}")


if __name__ == '__main__':
    main()
