"""GPU check: a few QLoRA (4-bit NF4 + LoRA) and QDoRA (4-bit NF4 + DoRA) training steps on a CUDA machine.

Runs on SmolLM2-135M (packaged, offline) and on klyang/MentaLLaMA-chat-7B when it is already in the
local Hugging Face cache; prints peak GPU memory and mean step time for each. Needs a CUDA GPU and
bitsandbytes (`pip install 'bitsandbytes>=0.45'`).

    HF_HUB_OFFLINE=1 python tests/gpu/check_qlora_dora.py [--steps 4] [--max-length 512] [--skip-7b]

Exits 0 when every check passed, 1 when one failed, 2 when there is no CUDA GPU or bitsandbytes.
"""
from __future__ import annotations
import argparse, gc, os, sys, time
from pathlib import Path

os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
MENTALLAMA = 'klyang/MentaLLaMA-chat-7B'


def _pairs(n:int):
    "Small real pairs from the ReDSM5 sample when present, else made-up ones."
    import pandas as pd, yaml
    root = Path(__file__).resolve().parents[2]
    crit = pd.DataFrame(yaml.safe_load((root/'data/criteria/dsm5_mdd.yaml').read_text())['criteria'])
    sample = root.parent/'shared/benchmarks/redsm5_sample/redsm5_posts.csv'
    posts = pd.read_csv(sample) if sample.exists() else pd.DataFrame(
        {'post_id': [f'p{i}' for i in range(8)], 'text': ["I can't sleep, I'm exhausted and nothing is fun anymore. " * 20] * 8})
    pairs = posts.merge(crit.rename(columns={'id': 'criterion_id'}), how='cross').head(n).reset_index(drop=True)
    pairs['label'] = [i % 2 for i in range(len(pairs))]
    return pairs


def check(backbone:str, dora:bool, steps:int, max_length:int, batch_size:int) -> dict:
    "Build the 4-bit model for `backbone`, run `steps` optimizer steps, return memory and timing."
    import numpy as np, torch
    from criteria_cls.config import load_params
    from criteria_cls.model import build_model
    from criteria_cls.prompt import PromptEncoder, make_collator
    from criteria_cls.train import pair_inputs, train_step, _StepState
    p = load_params(None, [f'model.backbone={backbone}', 'model.peft=qlora', 'model.gradient_checkpointing=true',
                           f'prompt.max_length={max_length}', f'train.batch_size={batch_size}',
                           f'train.effective_batch_size={batch_size}'])
    p.model['use_dora'] = dora  # QDoRA: DoRA on the 4-bit model (see criteria_cls.model.peft_config)
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    model, tok = build_model(p, 'cuda')
    load_s = time.perf_counter() - t
    assert model.peft_config['default'].use_dora == dora
    assert any('4bit' in type(m).__name__ for m in model.modules()), "no 4-bit layers: quantization did not apply"
    pairs = _pairs(batch_size * (steps + 1))
    enc = pair_inputs(PromptEncoder.from_params(tok, p), pairs)
    y = pairs.label.to_numpy()
    params = [w for w in model.parameters() if w.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    state, collate, times, losses = _StepState(micro=batch_size), make_collator(tok), [], []
    model.train()
    for s in range(steps + 1):
        g = list(range(s * batch_size, (s + 1) * batch_size))
        torch.cuda.synchronize(); t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        losses.append(train_step(model, g, enc, y, collate, state, None, 'bf16'))
        torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
        torch.cuda.synchronize(); times.append(time.perf_counter() - t)
    out = {'backbone': backbone, 'adapter': 'QDoRA' if dora else 'QLoRA', 'load_s': round(load_s, 1),
           'step_s': round(float(np.mean(times[1:])), 3), 'peak_gib': round(torch.cuda.max_memory_allocated() / 2**30, 2),
           'loss_first': round(losses[0], 4), 'loss_last': round(losses[-1], 4), 'micro_batch': state.micro}
    assert all(np.isfinite(losses)), f"non-finite loss: {losses}"
    del model, opt; gc.collect(); torch.cuda.empty_cache()
    return out


def in_hf_cache(repo:str) -> bool:
    try:
        from huggingface_hub import snapshot_download
        snapshot_download(repo, local_files_only=True); return True
    except Exception: return False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=4)
    ap.add_argument('--max-length', type=int, default=512)
    ap.add_argument('--batch-size', type=int, default=4)
    ap.add_argument('--skip-7b', action='store_true', help="don't run MentaLLaMA-7B even when cached")
    a = ap.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("No CUDA GPU here: QLoRA/QDoRA (bitsandbytes 4-bit NF4) only run on CUDA. Nothing checked.", file=sys.stderr)
        return 2
    import importlib.util
    if importlib.util.find_spec('bitsandbytes') is None:
        print("bitsandbytes is not installed: pip install 'bitsandbytes>=0.45'", file=sys.stderr)
        return 2
    print(f"GPU: {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB; "
          f"torch {torch.__version__}", flush=True)
    runs = [('smollm2-135m', False), ('smollm2-135m', True)]
    if a.skip_7b: print(f"{MENTALLAMA}: skipped (--skip-7b)")
    elif in_hf_cache(MENTALLAMA): runs += [(MENTALLAMA, False), (MENTALLAMA, True)]
    else: print(f"{MENTALLAMA}: not in the local Hugging Face cache, skipped (pre-download with `hf download {MENTALLAMA}`)")
    failed = 0
    for backbone, dora in runs:
        try:
            r = check(backbone, dora, a.steps, a.max_length, a.batch_size)
            print(f"OK   {r['backbone']:<28} {r['adapter']:<6} peak {r['peak_gib']:6.2f} GiB  step {r['step_s']:.3f} s  "
                  f"(batch {a.batch_size} x {a.max_length} tokens, load {r['load_s']} s, "
                  f"loss {r['loss_first']} -> {r['loss_last']})", flush=True)
        except Exception as e:
            failed += 1
            print(f"FAIL {backbone:<28} {'QDoRA' if dora else 'QLoRA':<6} {type(e).__name__}: {e}", flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
