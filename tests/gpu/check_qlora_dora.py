"""GPU check: QLoRA/QDoRA steps on SmolLM2-135M; memory and speed of a 7B LLaMA, separate pairs vs shared prompt prefix.

1. SmolLM2-135M (packaged, offline) with QLoRA (4-bit NF4 + LoRA) and QDoRA (4-bit NF4 + DoRA), gradient checkpointing
   on, separate pairs: load time, peak GPU memory, mean step time, first and last loss.
2. A 7B model of MentaLLaMA-chat-7B's architecture (LLaMA-2-7B): klyang/MentaLLaMA-chat-7B when it is already in the
   local Hugging Face cache (unless --random-7b), else built from its config WITH RANDOM WEIGHTS (nothing is
   downloaded), saved in bf16 to a temp folder with the SmolLM2 tokenizer (or --tokenizer DIR) and the config's
   vocab_size set to that tokenizer's. Random weights measure memory and speed only. With QLoRA, then with plain LoRA
   on bf16 weights, the same pairs train as separate prompts (`pair_task`) and with each post's prompt start run once
   for all its criteria (`shared_task`, train.shared_prefix), bf16 autocast, gradient checkpointing off (shared
   prefixes can't recompute layers): pairs/s of each mode, their ratio, peak memory.

Pairs: every criterion of the first posts of the ReDSM5 sample (shared/benchmarks/redsm5_sample, beside or inside the
checkout, or --sample CSV), else of made-up long posts (--long-posts forces those); labels are made up. Needs a CUDA GPU
and bitsandbytes (`pip install 'bitsandbytes>=0.45'`).

    HF_HUB_OFFLINE=1 python tests/gpu/check_qlora_dora.py [--steps 3] [--warmup 1] [--max-length 512]
        [--posts-per-step 2] [--batch-size 6] [--long-posts] [--skip-135m] [--skip-7b] [--skip-lora-bf16] [--random-7b]
        [--json PATH]

Exits 0 when every check passed, 1 when one failed, 2 when there is no CUDA GPU or bitsandbytes.
"""
from __future__ import annotations
import argparse, gc, json, math, os, sys, tempfile, time, traceback
from pathlib import Path

os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
ROOT = Path(__file__).resolve().parents[2]
MENTALLAMA = 'klyang/MentaLLaMA-chat-7B'
SAMPLE = Path('shared/benchmarks/redsm5_sample/redsm5_posts.csv')
# LLaMA-2-7B, the architecture of MentaLLaMA-chat-7B (vocab_size is replaced by the tokenizer's)
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)
TINY = dict(LLAMA2_7B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4)
RANDOM_NOTE = "7B rows with weights=random: a randomly initialised LLaMA-2-7B; they measure memory and speed only"
_SENTENCES = ["I can't sleep more than three or four hours a night and I wake up more tired than when I went to bed.",
              "Nothing I used to love feels like anything anymore, not music, not games, not even seeing my friends.",
              "I've lost a lot of weight because I just forget to eat, or I look at food and feel sick.",
              "Every small mistake at work feels like proof that I'm worthless and that everyone would be better off "
              "without me.",
              "I can't concentrate on a page of a book, I read the same line over and over and nothing goes in.",
              "Some days I can't get out of bed at all, my whole body feels heavy, like I'm moving through water.",
              "My family keeps asking what's wrong and I don't know how to tell them that I feel empty all the time.",
              "I've started thinking about death a lot, not planning anything, just wishing I could stop existing "
              "for a while.",
              "I snap at people for no reason and then hate myself for it for the rest of the day.",
              "It has been like this for months now, and I don't remember the last time I felt okay."]


def _long_posts(n:int, chars:int=3000):
    "`n` made-up posts of about `chars` characters (longer than a 512-token prompt), each a different mix."
    import pandas as pd
    texts = []
    for i in range(n):
        s, j = [], 0
        while sum(map(len, s)) < chars: s.append(_SENTENCES[(i * 3 + j * (i % 4 + 1)) % len(_SENTENCES)]); j += 1
        texts.append(' '.join(s))
    return pd.DataFrame({'post_id': [f'long{i}' for i in range(n)], 'text': texts})


def pairs_and_criteria(n_posts:int, long_posts:bool=False, sample:str|None=None) -> tuple:
    "`(pairs, criteria, source)`: every criterion of `n_posts` posts (post-major order), made-up 0/1 labels."
    import pandas as pd, yaml
    crit = pd.DataFrame(yaml.safe_load((ROOT / 'data/criteria/dsm5_mdd.yaml').read_text())['criteria'])
    crit = crit.rename(columns={'id': 'criterion_id'})[['criterion_id', 'name', 'description']]
    csv = None if long_posts else next((c for c in ([Path(sample)] if sample else [ROOT / SAMPLE, ROOT.parent / SAMPLE])
                                        if c.exists()), None)
    if csv is None: posts, src = _long_posts(n_posts), 'made-up long posts'
    else:
        posts, src = pd.read_csv(csv)[['post_id', 'text']], f'ReDSM5 sample ({csv})'
        reps = math.ceil(n_posts / len(posts))
        if reps > 1:
            posts = pd.concat([posts.assign(post_id=posts.post_id.astype(str) + f'#{k}') for k in range(reps)])
            src += f', its {len(posts) // reps} posts repeated'
    pairs = posts.head(n_posts).merge(crit, how='cross')
    pairs['label'] = [int(i % 3 == 0) for i in range(len(pairs))]
    return pairs, crit, src


def make_params(backbone:str, peft:str, a, *, dora:bool=False, dtype:str='auto', checkpointing:bool=False,
                shared:bool=False, precision:str='bf16'):
    "Params of one configuration (pair head, every pair, the batch sizes of `a`)."
    from criteria_cls.config import load_params
    yes = lambda b: 'true' if b else 'false'
    return load_params(None, [f'model.backbone={backbone}', f'model.peft={peft}', f'model.use_dora={yes(dora)}',
                              f'model.dtype={dtype}', f'model.gradient_checkpointing={yes(checkpointing)}',
                              'model.head=pair', 'model.top_layers=null',
                              f'prompt.max_length={a.max_length}', f'train.batch_size={a.batch_size}',
                              f'train.effective_batch_size={a.batch_size}', 'train.neg_per_pos=null',
                              f'train.shared_prefix={yes(shared)}', f'train.mixed_precision={precision}'])


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _free():
    import torch
    gc.collect()
    if _cuda(): torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()


def _gib(x) -> float: return round(x / 2**30, 2)


def time_mode(p, model, tok, pairs, crit, shared:bool, a, precision:str) -> dict:
    "Train `a.warmup + a.steps` optimizer steps of `a.posts_per_step` posts x every criterion; time the last `a.steps`."
    import numpy as np, torch
    from criteria_cls.tasks import pair_task, shared_task, shares_prefix
    from criteria_cls.train import _StepState, make_optimizer, train_mode, train_step
    if shared:
        why = []
        if not shares_prefix(p, model, why.append): raise RuntimeError(f"shared prefix refused: {' '.join(why)}")
        task = shared_task(p, tok, pairs, crit)
    else: task = pair_task(p, tok, pairs)
    C, k, n = len(crit), a.posts_per_step, a.warmup + a.steps
    assert len(task) == (len(pairs) // C if shared else len(pairs)), (len(task), len(pairs))
    # the same pairs in both modes: step s trains posts s*k .. s*k+k-1 with all their criteria
    groups = [list(range(s * k, (s + 1) * k)) if shared else list(range(s * k * C, (s + 1) * k * C)) for s in range(n)]
    if shared: tokens = sum(len(task.units[i]['input_ids']) + sum(len(x['input_ids']) for x in task.suffixes)
                            for g in groups for i in g)
    else: tokens = sum(len(task.units[i]['input_ids']) for g in groups for i in g)
    epoch = task.epoch(p.train, p.seed)
    weights = task.class_weights(p.train.class_weight, epoch)
    params, opt, sched = make_optimizer(model, p.train, n)
    state = _StepState(micro=(a.shared_batch or k) if shared else a.batch_size)
    cuda = next(model.parameters()).device.type == 'cuda'
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    _free(); train_mode(model)
    times, losses = [], []
    for g in groups:
        sync(); t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        losses.append(train_step(model, g, task, state, weights, precision, active=epoch.active))
        torch.nn.utils.clip_grad_norm_(params, p.train.max_grad_norm); opt.step(); sched.step()
        sync(); times.append(time.perf_counter() - t)
    assert all(np.isfinite(losses)), f"non-finite loss: {losses}"
    step_s = float(np.mean(times[a.warmup:]))
    out = {'mode': 'shared' if shared else 'separate', 'pairs_per_step': k * C, 'micro': state.micro,
           'micro_unit': 'posts' if shared else 'pairs', 'tokens_per_pair': round(tokens / (n * k * C), 1),
           'step_s': round(step_s, 3), 'pairs_per_s': round(k * C / step_s, 2),
           'peak_gib': _gib(torch.cuda.max_memory_allocated()) if cuda else None,
           'reserved_gib': _gib(torch.cuda.max_memory_reserved()) if cuda else None,
           'loss_first': round(losses[0], 4), 'loss_last': round(losses[-1], 4), 'backoffs': len(state.backoffs)}
    model.zero_grad(set_to_none=True); del opt, sched, params
    return out


def run_config(rows:list, info:dict, p, modes:tuple, pairs, crit, a, device:str, precision:str, checks=None):
    "Build the model of params `p` once, time each mode on it, append one row per mode to `rows`."
    import torch
    from criteria_cls.model import build_model
    base = dict(info, status='FAIL', error=None)
    _free(); torch.manual_seed(0)
    try:
        t = time.perf_counter()
        model, tok = build_model(p, device, n_criteria=len(crit))
        base.update(load_s=round(time.perf_counter() - t, 1),
                    model_gib=_gib(torch.cuda.memory_allocated()) if _cuda() else None)
        if checks: checks(model)
    except Exception as e:
        traceback.print_exc()
        for m in modes: rows.append(dict(base, mode=m, error=f"{type(e).__name__}: {e}")); _say(rows[-1])
        return
    for m in modes:
        try: r = dict(base, status='OK', **time_mode(p, model, tok, pairs, crit, m == 'shared', a, precision))
        except Exception as e:
            traceback.print_exc(); r = dict(base, mode=m, error=f"{type(e).__name__}: {e}")
        sep = next((x for x in rows if x['status'] == 'OK' and x['mode'] == 'separate' and x['model'] == info['model']
                    and x['adapter'] == info['adapter']), None)
        if m == 'shared' and r['status'] == 'OK' and sep:
            r['x_separate'] = round(r['pairs_per_s'] / sep['pairs_per_s'], 2)
        rows.append(r); _say(r)
    del model, tok; _free()


def _say(r:dict):
    head = f"{r['status']:<4} {r['model']:<20} {r['weights']:<8} {r['adapter']:<10} {r.get('mode', ''):<8}"
    if r['status'] != 'OK': print(f"{head} {r['error']}", flush=True); return
    peak = '' if r['peak_gib'] is None else f"peak {r['peak_gib']:.2f} GiB, "
    ratio = f" ({r['x_separate']}x separate)" if r.get('x_separate') else ''
    print(f"{head} {r['pairs_per_step']} pairs/step, micro-batch {r['micro']} {r['micro_unit']}, "
          f"{r['tokens_per_pair']} tokens/pair: "
          f"step {r['step_s']:.3f} s, {r['pairs_per_s']} pairs/s{ratio}, {peak}load {r['load_s']} s, "
          f"loss {r['loss_first']} -> {r['loss_last']}", flush=True)


def _4bit(dora:bool):
    def check(model):
        assert model.backbone.peft_config['default'].use_dora == dora
        assert any('4bit' in type(m).__name__ for m in model.modules()), "no 4-bit layers: quantization did not apply"
    return check


def tokenizer_for_7b(path:str|None):
    "`(tokenizer, what)`: `path`'s tokenizer, else SmolLM2-135M's from its packaged backbone."
    from transformers import AutoTokenizer
    from criteria_cls.config import load_params
    from criteria_cls.model import load_tokenizer
    if path: return AutoTokenizer.from_pretrained(path), f"the tokenizer of {path}"
    return (load_tokenizer(load_params(None, ['model.backbone=smollm2-135m'])),
            "SmolLM2-135M's tokenizer (packaged backbone)")


def random_llama(folder, shape:dict, tok, device:str, dtype) -> dict:
    "Save a randomly initialised LLaMA of `shape` (vocab_size: the tokenizer's) and `tok` to `folder`; what it made."
    import torch
    from transformers import LlamaConfig, LlamaModel
    from criteria_cls.backbones import quiet_hf
    cfg = LlamaConfig(**dict(shape, vocab_size=len(tok)), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    t = time.perf_counter(); torch.manual_seed(0)
    with torch.device(device): m = LlamaModel._from_config(cfg, dtype=dtype)
    n = sum(w.numel() for w in m.parameters())
    with quiet_hf(): m.save_pretrained(folder); tok.save_pretrained(folder)
    del m; _free()
    return {'params_b': round(n / 1e9, 3), 'vocab_size': len(tok), 'seconds': round(time.perf_counter() - t, 1)}


def table(rows:list) -> str:
    "The summary: one line per row."
    cols = [('model', 'model'), ('weights', 'weights'), ('adapter', 'adapter'), ('mode', 'mode'),
            ('pairs/step', 'pairs_per_step'), ('micro', 'micro'), ('tok/pair', 'tokens_per_pair'), ('step s', 'step_s'),
            ('pairs/s', 'pairs_per_s'), ('x sep', 'x_separate'), ('peak GiB', 'peak_gib'), ('load s', 'load_s'),
            ('loss', 'loss'), ('status', 'status')]
    def cell(r, k):
        if k == 'loss': return f"{r['loss_first']}->{r['loss_last']}" if r['status'] == 'OK' else ''
        if k == 'micro' and r.get('micro') is not None: return f"{r['micro']} {r['micro_unit']}"
        v = r.get(k)
        return '' if v is None else str(v)
    cells = [[h for h, _ in cols]] + [[cell(r, k) for _, k in cols] for r in rows]
    w = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = ['  '.join(c.ljust(w[i]) for i, c in enumerate(line)).rstrip() for line in cells]
    return '\n'.join([lines[0], '-' * len(lines[0])] + lines[1:])


def in_hf_cache(repo:str) -> bool:
    try:
        from huggingface_hub import snapshot_download
        snapshot_download(repo, local_files_only=True); return True
    except Exception: return False


def run_7b(rows:list, a, pairs, crit, device:str, precision:str, shape:dict, label:str, configs:list):
    "The 7B (or, dry run, tiny) rows: real MentaLLaMA weights when cached, else a random model saved to a temp folder."
    import torch
    real = not a.cpu_dry_run and not a.random_7b and in_hf_cache(MENTALLAMA)
    with tempfile.TemporaryDirectory(prefix='random-llama-', dir=a.workdir) as d:
        if real:
            backbone, weights = MENTALLAMA, 'real'
            print(f"{label}: {MENTALLAMA} from the local Hugging Face cache (real weights)", flush=True)
        else:
            try:
                tok, what = tokenizer_for_7b(a.tokenizer)
                made = random_llama(d, shape, tok, device, torch.bfloat16 if device == 'cuda' else torch.float32)
            except Exception as e:
                traceback.print_exc()
                for adapter, _, _ in configs:
                    rows.append({'model': label, 'weights': 'random', 'adapter': adapter, 'mode': 'both',
                                 'status': 'FAIL',
                                 'error': f"building the random model: {type(e).__name__}: {e} (set --tokenizer DIR?)"})
                    _say(rows[-1])
                return
            backbone, weights = d, 'random'
            print(f"{label}: RANDOM WEIGHTS, built from the LLaMA-2-7B config (MentaLLaMA-chat-7B's architecture)"
                  if not a.cpu_dry_run else f"{label}: tiny random LLaMA ({shape['num_hidden_layers']} layers, hidden "
                  f"{shape['hidden_size']}) for the CPU dry run", flush=True)
            print(f"  {made['params_b']}B parameters, made and saved in {made['seconds']} s to {d}; "
                  f"{what}: vocab_size set to "
                  f"{made['vocab_size']} (LLaMA-2's is {LLAMA2_7B['vocab_size']})."
                  + ("" if a.cpu_dry_run else " Random weights: these rows measure memory and speed only."), flush=True)
        for adapter, peft, dtype in configs:
            p = make_params(backbone, peft, a, dtype=dtype, shared=True, precision=precision)
            run_config(rows, {'model': label, 'weights': weights, 'adapter': adapter}, p, ('separate', 'shared'), pairs,
                       crit, a, device, precision, _4bit(False) if peft == 'qlora' else None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--steps', type=int, default=3, help="timed optimizer steps per row")
    ap.add_argument('--warmup', type=int, default=1, help="untimed optimizer steps before them")
    ap.add_argument('--max-length', type=int, default=512)
    ap.add_argument('--posts-per-step', type=int, default=2, help="posts per optimizer step, each with every criterion")
    ap.add_argument('--batch-size', type=int, default=6, help="separate pairs: pairs per micro-batch")
    ap.add_argument('--shared-batch', type=int, default=0,
                    help="shared prefix: posts per micro-batch (0: all of a step)")
    ap.add_argument('--long-posts', action='store_true', help="made-up long posts even when the ReDSM5 sample is there")
    ap.add_argument('--sample', help="the ReDSM5 sample's redsm5_posts.csv (default: shared/benchmarks/redsm5_sample)")
    ap.add_argument('--tokenizer', help="folder of the random 7B model's tokenizer (default: SmolLM2-135M's)")
    ap.add_argument('--workdir', help="where the random 7B model is saved (default: the temp folder; needs ~14 GB)")
    ap.add_argument('--skip-135m', action='store_true', help="don't run the SmolLM2-135M QLoRA/QDoRA checks")
    ap.add_argument('--skip-7b', action='store_true', help="don't run the 7B rows")
    ap.add_argument('--skip-lora-bf16', action='store_true', help="7B: QLoRA only, not plain LoRA on bf16 weights")
    ap.add_argument('--random-7b', action='store_true', help=f"random 7B weights even when {MENTALLAMA} is cached")
    ap.add_argument('--json', help="write the rows as JSON to this file")
    # the 7B code paths on a tiny model, CPU
    ap.add_argument('--cpu-dry-run', action='store_true', help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    import torch
    if a.cpu_dry_run:
        torch.set_num_threads(1)
        device, precision = 'cpu', 'no'
        steps_note = "CPU dry run: tiny random LLaMA, LoRA in fp32, timings mean nothing"
        a.steps, a.warmup = 1, 0
    else:
        if not torch.cuda.is_available():
            print("No CUDA GPU here: QLoRA/QDoRA (bitsandbytes 4-bit NF4) and the 7B timings only run on CUDA. "
                  "Nothing checked.", file=sys.stderr)
            return 2
        import importlib.util
        if importlib.util.find_spec('bitsandbytes') is None:
            print("bitsandbytes is not installed: pip install 'bitsandbytes>=0.45'", file=sys.stderr)
            return 2
        device, precision = 'cuda', 'bf16'
        dev = torch.cuda.get_device_properties(0)
        steps_note = f"GPU: {dev.name}, {dev.total_memory / 2**30:.0f} GiB; torch {torch.__version__}"
    pairs, crit, src = pairs_and_criteria(a.posts_per_step * (a.warmup + a.steps), a.long_posts, a.sample)
    print(f"{steps_note}\npairs: {src}, {a.posts_per_step} posts x {len(crit)} criteria per step, "
          f"{a.warmup} warm-up + {a.steps} "
          f"timed steps, prompt.max_length {a.max_length}, precision {precision}", flush=True)
    rows = []
    if a.cpu_dry_run:
        run_7b(rows, a, pairs, crit, device, precision, TINY, 'tiny-llama', [('LoRA fp32', 'lora', 'float32')])
    else:
        if a.skip_135m: print("smollm2-135m: skipped (--skip-135m)")
        for dora in ([] if a.skip_135m else [False, True]):
            p = make_params('smollm2-135m', 'qlora', a, dora=dora, checkpointing=True)
            run_config(rows, {'model': 'smollm2-135m', 'weights': 'packaged', 'adapter': 'QDoRA' if dora else 'QLoRA'},
                       p, ('separate',), pairs, crit, a, device, precision, _4bit(dora))
        if a.skip_7b: print("7B: skipped (--skip-7b)")
        else:
            big = torch.cuda.get_device_properties(0).total_memory / 2**30 > 60
            if not big and not a.skip_lora_bf16: print("7B LoRA bf16: skipped (less than 60 GiB of GPU memory)")
            configs = [('QLoRA', 'qlora', 'auto')] + ([('LoRA bf16', 'lora', 'bfloat16')]
                                                      if big and not a.skip_lora_bf16 else [])
            run_7b(rows, a, pairs, crit, device, precision, LLAMA2_7B, 'llama2-7b', configs)
    print('\n' + table(rows))
    if any(r['weights'] == 'random' for r in rows): print(RANDOM_NOTE if not a.cpu_dry_run else steps_note)
    print("x sep: shared-prefix pairs/s over separate-pairs pairs/s, same pairs, same model; micro: micro-batch "
          "(separate: pairs, shared: posts); peak: max GPU memory allocated during that mode's steps")
    if a.json:
        Path(a.json).write_text(json.dumps([dict(r, device=steps_note.split(';')[0], data=src) for r in rows],
                                           indent=1))
        print(f"rows written to {a.json}")
    return 1 if any(r['status'] != 'OK' for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
