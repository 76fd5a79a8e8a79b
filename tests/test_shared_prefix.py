"Shared-prefix training on SmolLM2-135M (LLaMA architecture, fp32): the same loss and gradients as separate pairs."
import numpy as np, pytest, torch
from conftest import ROOT
from criteria_cls.config import load_params, seed_everything
from criteria_cls.data import load_table
from criteria_cls.model import build_model
from criteria_cls.tasks import pair_task, shared_task, shares_prefix
from criteria_cls.train import _StepState, train_step


@pytest.fixture(scope='module')
def smol():
    "SmolLM2-135M with LoRA on every projection of every layer, dropout off (so both runs compute the same thing)."
    p = load_params(ROOT / 'params' / 'smollm2.yaml', ['model.dropout=0.0', 'prompt.max_length=512',
                                                         'train.shared_prefix=true',
                                                         'train.neg_per_pos=null'])   # every pair in both forms
    seed_everything(0)
    model, tok = build_model(p, 'cpu')
    with torch.no_grad():    # LoRA's B starts at zero: move it so that the adapter's gradients are not trivially equal
        for n, w in model.named_parameters():
            if 'lora_B' in n: w.normal_(0, 0.02)
    t = load_table(p)
    posts = t.pairs.post_id.drop_duplicates().tolist()[:3]
    return p, model.eval(), tok, t.pairs[t.pairs.post_id.isin(posts)].reset_index(drop=True), t.criteria


def grads(model):
    return {n: w.grad.clone() for n, w in model.named_parameters() if w.requires_grad and w.grad is not None}


def test_prompts_are_the_separate_prompts(smol):
    p, model, tok, pairs, crit = smol
    sh, sep = shared_task(p, tok, pairs, crit), pair_task(p, tok, pairs)
    assert shares_prefix(p, model)
    assert [sh.units[r]['input_ids'] + sh.suffixes[c]['input_ids'] for r, c in zip(sh.rows, sh.cols)] == \
           [u['input_ids'] for u in sep.units]
    assert len({tuple(sh.units[r]['input_ids']) for r in sh.rows}) == 3  # one prefix per post, for all nine criteria


def test_same_loss_and_gradients(smol):
    p, model, tok, pairs, crit = smol
    sh, sep = shared_task(p, tok, pairs, crit), pair_task(p, tok, pairs)
    out = []
    for task, group in ((sh, list(range(len(sh)))), (sep, list(range(len(sep))))):
        model.zero_grad()
        epoch = task.epoch(p.train, 0)
        w = task.class_weights('balanced', epoch)
        loss = train_step(model, group, task, _StepState(micro=len(group)), w, active=epoch.active)
        out.append((loss, grads(model)))
    (l1, g1), (l2, g2) = out
    assert abs(l1 - l2) < 1e-5, (l1, l2)
    assert g1.keys() == g2.keys() and len(g1) > 100                                # every LoRA matrix and the head
    worst = max((g1[n] - g2[n]).abs().max().item() for n in g1)
    assert worst < 1e-5, worst


def test_same_scores(smol):
    p, model, tok, pairs, crit = smol
    np.testing.assert_allclose(shared_task(p, tok, pairs, crit).score(model), pair_task(p, tok, pairs).score(model),
                               atol=1e-5)
