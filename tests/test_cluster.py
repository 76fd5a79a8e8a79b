"""The Ray engine end to end: a real Ray cluster (a head and two worker nodes, each its own `ray start` process tree
on loopback) and a real MLflow tracking server on PostgreSQL (`.ci/tracking_server.sh`); the smoke CV run through
them with the data in a folder the worker nodes cannot see, one worker node killed mid-fold, and the tracking server
restarted while a later fold runs."""
import json, os, re, shutil, signal, socket, subprocess, sys, tempfile, time
from contextlib import ExitStack
from pathlib import Path
import psutil, pytest, torch
from mlflow import MlflowClient
from conftest import EXE, ROOT, smoke_overrides
from criteria_cls.config import InputError
from criteria_cls.pipeline import run_cv
from fixtures import free_port

BIN = Path(sys.executable).parent
SERVER = ROOT / '.ci' / 'tracking_server.sh'
COMPARE = ('pooled_oof', 'across_folds', 'per_criterion', 'baseline_tfidf_lr', 'thresholds', 'data_hash', 'split_hash',
           'folds')


def tree(pid:int) -> list:
    "Process `pid` and all its descendants (those still there)."
    try: p = psutil.Process(pid)
    except psutil.NoSuchProcess: return []
    try: return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess: return [p]


def kill_tree(pid:int):
    "SIGKILL process `pid` and every descendant: what a node that loses power or is OOM-killed looks like."
    for p in reversed(tree(pid)):
        try: p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess: pass


def _cmd(p) -> str:
    try: return ' '.join(p.cmdline())
    except psutil.Error: return ''


def notebooks(pid:int) -> list:
    "The papermill processes (one per fold notebook) in the process tree of `pid` (a Ray node)."
    return [p for p in tree(pid) if 'papermill' in _cmd(p)]


def runs_papermill(pid:int) -> bool:
    "Whether a fold notebook runs in the process tree of `pid` (a Ray node)."
    return bool(notebooks(pid))


def restart_server(c:dict, node:int, cv:subprocess.Popen) -> dict|None:
    """Once a fold notebook runs on node `node`: stop the tracking server; when something calls it (a socket on its
    port takes the call and drops it), start it again on the same folder (its PostgreSQL data) and port. The fold, its
    Ray worker's pid, whether the caller was a process of that node, when the server was down and when up again."""
    while cv.poll() is None and not (nbs := notebooks(node)): time.sleep(0.5)
    if cv.poll() is not None: return None
    nb, d, port = nbs[0], str(c['base'] / 'tracking'), int(c['uri'].rsplit(':', 1)[1])
    fold, worker = int(re.search(r'fold_(\d+)\.ipynb', _cmd(nb))[1]), nb.ppid()
    subprocess.run(['bash', str(SERVER), 'stop', d], env=c['env'], check=True, timeout=120)
    t_down, alive = time.time(), [nb.is_running()]
    with pytest.raises(ConnectionRefusedError): socket.create_connection(('127.0.0.1', port), 2)
    with socket.create_server(('127.0.0.1', port)) as s:
        s.settimeout(300); call, peer = s.accept()
        caller = next((k.pid for k in psutil.net_connections('tcp') if k.laddr and tuple(k.laddr) == peer), None)
        call.close(); t_call = time.time()
    r = subprocess.run(['bash', str(SERVER), 'start', d, str(port)], env=c['env'], capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0 and r.stdout.strip() == c['uri'], r.stderr
    alive.append(nb.is_running())
    return {'fold': fold, 'worker': worker, 'from_node': caller in {p.pid for p in tree(node)}, 'down': t_down,
            'called': t_call, 'up': time.time(), 'alive': alive}


class Cluster:
    "Ray nodes as separate process trees (`ray start --block`), each with its own temp dir; all killed on exit."

    def __init__(self, env:dict, logs:Path):
        self.env, self.logs, self.nodes, self.dirs, self.how = env, logs, {}, [], {}

    def start(self, name:str, *args, hide:Path|None=None) -> subprocess.Popen:
        "Start node `name`; with `hide`, in a mount namespace where an empty folder covers `hide` (another disk)."
        self.how[name] = (args, hide)
        temp = tempfile.mkdtemp(prefix=f'ray{name}_', dir='/tmp'); self.dirs.append(temp)
        cmd = [str(BIN / 'ray'), 'start', '--block', '--temp-dir', temp, '--object-store-memory', str(80 * 2**20),
               '--disable-usage-stats', '--include-log-monitor=false', *args]   # no log pushing: less idle CPU
        if hide: cmd = ['unshare', '--mount', '--propagation', 'private', 'sh', '-c',
                        f'mount -t tmpfs none {hide} && exec "$@"', 'sh', *cmd]
        log = open(self.logs / f'ray_{name}.log', 'w')
        self.nodes[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self.nodes[name]

    def ready(self, name:str, tries:int=2):
        "Wait until node `name` runs; one that timed out starting (Ray gives a node 30 s on a loaded machine) restarts."
        for i in range(tries):
            try: return wait_started(self.nodes[name], self.logs / f'ray_{name}.log')
            except AssertionError:
                if i == tries - 1: raise
                kill_tree(self.nodes[name].pid); self.nodes[name].wait(30)
                self.start(name, *self.how[name][0], hide=self.how[name][1])

    def close(self):
        for p in self.nodes.values(): kill_tree(p.pid)
        for p in self.nodes.values(): p.wait(30)
        for d in self.dirs: shutil.rmtree(d, ignore_errors=True)


def wait_started(proc:subprocess.Popen, log:Path, limit:float=240):
    "Wait until `ray start --block` says its node runs (registered with the head); fail with its log if it exits."
    t0 = time.time()
    while time.time() - t0 < limit:
        if 'Ray runtime started' in log.read_text(errors='replace'): return
        assert proc.poll() is None, f'ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}'
        time.sleep(0.5)
    raise AssertionError(f'{log}: no Ray node after {limit} s')


@pytest.fixture
def cluster_env(tmp_path):
    "A tracking server on PostgreSQL and a Ray cluster (head without CPUs for folds, two 1-CPU worker nodes)."
    base = Path(tempfile.mkdtemp(prefix='cl_', dir='/tmp')); base.chmod(0o711)   # the `postgres` user goes through
    hidden = base / 'hidden'; hidden.mkdir()                       # the data: the worker nodes see an empty folder
    shutil.copytree(ROOT / 'data' / 'redsm5_demo', hidden / 'redsm5_demo')
    port, ray_port = free_port(), free_port()
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'PYTHON': sys.executable, 'HF_HUB_OFFLINE': '1',
           'TRANSFORMERS_OFFLINE': '1'}
    env.pop('MLFLOW_RUN_ID', None)
    # the local smoke CV's torch threads (Ray would give each 1-CPU task 1): the same sums, the same 4th decimals
    env['OMP_NUM_THREADS'] = str(torch.get_num_threads())
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        server = subprocess.Popen(['bash', str(SERVER), 'start', str(base / 'tracking'), str(port)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stack.callback(subprocess.run, ['bash', str(SERVER), 'stop', str(base / 'tracking')], env=env, timeout=60)
        cl = Cluster(env, tmp_path); stack.callback(cl.close)
        cl.start('h', '--head', '--port', str(ray_port), '--num-cpus', '0', '--node-ip-address', '127.0.0.1',
                 '--include-dashboard=false')
        address = f'127.0.0.1:{ray_port}'
        cl.ready('h')                                  # a worker node gives up on a head that is still starting
        for name in ('a', 'b'):
            cl.start(name, '--address', address, '--num-cpus', '1', '--node-ip-address', '127.0.0.1', hide=hidden)
        for name in ('a', 'b'): cl.ready(name)
        out, err = server.communicate(timeout=180)
        assert server.returncode == 0, err
        yield {'uri': out.strip(), 'address': address, 'data': hidden / 'redsm5_demo', 'cluster': cl, 'env': env,
               'base': base}


def start_cv(c:dict, tmp:Path, *args) -> subprocess.Popen:
    "`criteria-cls cv` of the smoke profile on the Ray engine, from folder `tmp`, with the data in the hidden folder."
    env = {**c['env'], 'MLFLOW_TRACKING_URI': c['uri']}
    cmd = [EXE, 'cv', '--params', ROOT / 'params' / 'smoke.yaml', *smoke_overrides(tmp, 'e2e-ray'),
           f"data.path={c['data']}", '--engine', 'ray', '--address', c['address'], '--quiet', *args]
    return subprocess.Popen(list(map(str, cmd)), cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_ray_engine_survives_a_killed_node_and_matches_local(cluster_env, tmp_path, request):
    c, nodes = cluster_env, cluster_env['cluster'].nodes
    client = MlflowClient(c['uri'])
    # a fold asking for a GPU on this CPU-only cluster: refused before any run exists (in process: no CLI start-up)
    with pytest.raises(InputError, match=r'has the 1 CPU\(s\) and 1 GPU\(s\) a fold asks for'):
        run_cv(ROOT / 'params' / 'smoke.yaml', [f"tracking.uri={c['uri']}", *smoke_overrides(tmp_path, 'e2e-ray'),
                                                'run.engine=ray', f"run.address={c['address']}", 'run.num_gpus=1'])
    assert client.get_experiment_by_name('e2e-ray') is None
    # the smoke CV, one fold at a time; the node running the first fold is killed a few seconds into it, then the
    # tracking server (and its PostgreSQL) restarted while the next fold notebook runs on the surviving node
    t0, proc = time.time(), start_cv(c, tmp_path, '--jobs', '1')
    killed = restart = None
    try:
        while proc.poll() is None and killed is None:
            busy = [n for n in ('a', 'b') if runs_papermill(nodes[n].pid)]
            if busy:
                time.sleep(4); kill_tree(nodes[busy[0]].pid); killed = busy[0]
            time.sleep(0.5)
        if killed: restart = restart_server(c, nodes['b' if killed == 'a' else 'a'].pid, proc)
        out, err = proc.communicate(timeout=900)
    finally:
        kill_tree(proc.pid)                       # the CLI (the Ray driver), should the test fail before it ends
    assert proc.returncode == 0, err[-3000:]
    assert killed is not None, 'no fold notebook was seen running on a worker node'
    survivor = 'b' if killed == 'a' else 'a'
    assert nodes[killed].poll() is not None and nodes[survivor].poll() is None
    # the server was really down (refusing connections) while the fold's notebook ran, before and after, and the
    # fold's processes on that node called it meanwhile
    assert restart is not None, 'no fold notebook was seen running on the surviving node'
    down = restart['up'] - restart['down']
    assert down > 0 and restart['alive'] == [True, True] and restart['from_node'], restart
    print(f"Ray engine CV with a node killed and the tracking server down {down:.0f} s during fold {restart['fold']} "
          f"(called after {restart['called'] - restart['down']:.0f} s): {time.time() - t0:.0f} s")
    exp = client.get_experiment_by_name('e2e-ray')
    [parent] = client.search_runs([exp.experiment_id], filter_string="tags.kind = 'cv'")
    kids = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    finished = sorted(int(r.data.tags['fold']) for r in kids if r.info.status == 'FINISHED')
    lost = [r for r in kids if r.info.status != 'FINISHED']
    assert parent.info.status == 'FINISHED' and finished == [0, 1], [(r.data.tags, r.info.status) for r in kids]
    # the killed attempt's run is closed (not left RUNNING), and says why
    assert len(lost) == 1 and lost[0].info.status == 'KILLED' and 'Ray ran it again' in lost[0].data.tags['closed_by']
    # the fold that ran through the restart is the one that finished: its run began before and ended after it
    [through] = [r for r in kids if r.info.status == 'FINISHED' and r.data.tags['fold'] == str(restart['fold'])]
    assert through.data.tags['pid'] == str(restart['worker'])
    assert through.info.start_time < restart['down'] * 1000 and through.info.end_time > restart['up'] * 1000
    # the workers fetched the data from the parent run (their disk shows an empty folder there) and checked it
    for r in kids:
        if r.info.status == 'FINISHED': assert json.loads(r.data.tags['inputs'])['data.path'] == 'fetched'
    # the reports folder rebuilt from the fold runs' artifacts; the same numbers as the local engine
    d = Path(parent.data.tags['run_dir'])
    assert d.parent.parent == tmp_path / 'reports'
    for f in ('fold_0.ipynb', 'fold_1.html', 'fold_0_test_predictions.csv', 'fold_1_model', 'report.html'):
        assert (d / f).exists(), f
    s = json.loads((d / 'summary.json').read_text())
    # the local engine's smoke CV, asked for only now: under xdist another worker runs it while this one runs Ray
    smoke_cv = request.getfixturevalue('smoke_cv')
    assert {k: s[k] for k in COMPARE} == {k: smoke_cv['summary'][k] for k in COMPARE}
