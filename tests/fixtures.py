"Test helpers shared by the notebooks' tests (imported with `sys.path`) and by pytest."
import socket, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / 'shared' / 'benchmarks'


def tiny_fold(folder, overrides=(), pairs:int=48, steps:int=3, params=ROOT / 'params' / 'default.yaml'):
    "A fold trained for a few steps on demo posts and saved as a fold model folder: `(folder, FoldResult, test pairs)`."
    from criteria_cls.config import load_params
    from criteria_cls.data import load_table
    from criteria_cls.artifacts import save_fold_model
    from criteria_cls.train import train_fold
    p = load_params(params, [f'train.max_steps={steps}', f'train.max_train_pairs={pairs}', 'train.epochs=1',
                             'train.batch_size=8', 'train.effective_batch_size=8', *overrides])
    t = load_table(p)
    ids = t.pairs.post_id.drop_duplicates().tolist()
    part = lambda a, b: t.pairs[t.pairs.post_id.isin(ids[a:b])].reset_index(drop=True)
    r = train_fold(p, part(0, 12), part(12, 16), part(16, 20), progress=False)
    return save_fold_model(folder, r.model, r.tokenizer, p, r.threshold, t.criteria, {'fold': 0}), r, part(16, 20)


def needs_benchmarks(name:str=''):
    """`../shared/benchmarks/<name>` when it is there; else None after printing why the test is skipped.

    Under `CI=true` a missing `name` while `../shared/benchmarks` itself exists is an error, not a skip."""
    import os
    path = BENCH / name
    if path.exists(): return path
    if os.environ.get('CI') == 'true' and BENCH.exists():
        raise FileNotFoundError(f'{path} is missing although {BENCH} is there (CI=true): the test cannot be skipped')
    print(f'skipped: needs ../shared/benchmarks/{name}: real benchmark data not present at {path}')
    return None


def free_port() -> int:
    "A free TCP port on loopback."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def wait_ready(proc, base:str, limit:float=180):
    "Wait until the server `proc` started answers `base + '/ping'`; fail with its output if it exits first."
    t0 = time.time()
    while time.time() - t0 < limit:
        if proc.poll() is not None:
            raise AssertionError(f'server exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}')
        try:
            with urllib.request.urlopen(base + '/ping', timeout=2) as r:
                if r.status == 200: return
        except Exception: time.sleep(1)
    raise AssertionError(f'server not ready after {limit} s')
