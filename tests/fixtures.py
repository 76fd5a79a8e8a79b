"Test helpers shared by the notebooks' tests (imported with `sys.path`) and by pytest."
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / 'shared' / 'benchmarks'


def tiny_fold(folder, overrides=(), pairs:int=48, steps:int=3, params=ROOT / 'params' / 'default.yaml'):
    "A fold trained for a few steps on demo posts and saved as a fold model folder: `(folder, FoldResult, test pairs)`."
    from criteria_cls.config import load_params
    from criteria_cls.data import load_table
    from criteria_cls.model import save_fold_model
    from criteria_cls.train import train_fold
    p = load_params(params, [f'train.max_steps={steps}', f'train.max_train_pairs={pairs}', 'train.epochs=1',
                             'train.batch_size=8', 'train.effective_batch_size=8', *overrides])
    t = load_table(p)
    ids = t.pairs.post_id.drop_duplicates().tolist()
    part = lambda a, b: t.pairs[t.pairs.post_id.isin(ids[a:b])].reset_index(drop=True)
    r = train_fold(p, part(0, 12), part(12, 16), part(16, 20), progress=False)
    return save_fold_model(folder, r.model, r.tokenizer, p, r.threshold, t.criteria, {'fold': 0}), r, part(16, 20)
