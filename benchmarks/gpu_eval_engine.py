"""Prepared GPU run (not yet run): decode throughput and memory of the in-process continuous-batching
engine vs today's padded `model.generate`, on random-weight 1.5B and 7B shapes, at the real configs'
budgets.

    timeout 540 .venv/bin/python benchmarks/gpu_eval_engine.py --json gpu-eval-engine.json
    # CPU smoke run of the same code path (tests/test_gpu_eval_engine_smoke.py):
    .venv/bin/python benchmarks/gpu_eval_engine.py --device cpu --tiny --json /tmp/gee.json

Nothing to download: each model is drawn with random weights from its shape (rainmerge.synthetic.SHAPES,
bf16 on the GPU); prompts are random token ids of --prompt-len. EOS is an id past the vocabulary, so
every sequence decodes its whole --decode-tokens: tokens/s is pure decode+prefill throughput.

Per shape and budget (4,096: today's configs; 32,768: the reasoning default of issue 21):
  * the KV cache the engine sizes (rainmerge.eval.engines.inprocess.size_cache) for --concurrency
    sequences of prompt + budget, capped by --kv-cache-gib: how many sequences fit, and its GiB;
  * inprocess: that many sequences decoding --decode-tokens each (the cache still sized for the full
    budget), wall, tokens/s, peak GPU memory;
  * padded: `model.generate` at batch --batch (configs' batch_size 16), same prompts and tokens, wall,
    tokens/s, peak GPU memory (the padded path allocates KV for prompt + decode tokens only, so its
    memory at the full budget is given as the analytic KV size of batch x (prompt + budget)).
The JSON is rewritten after each measurement; --time-limit (default 480 s) is checked before each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from rainmerge.eval.engines import EngineConfig, SamplingParams  # noqa: E402
from rainmerge.eval.engines.inprocess import ContinuousEngine, kv_bytes_per_token, size_cache  # noqa: E402
from rainmerge.synthetic import SHAPES  # noqa: E402

TINY = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False)


class _Ids:
    """The engine needs only EOS and pad ids at the token level (no text is decoded here). EOS is an id
    past the vocabulary, which no logit can pick: every sequence decodes exactly its budget."""

    def __init__(self, vocab: int):
        self.eos_token_id, self.pad_token_id = vocab, vocab - 1


def random_model(shape: dict[str, Any], device: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(shape)
    cfg = AutoConfig.for_model(kw.pop("model_type"), **kw, max_position_embeddings=40960)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.generation_config.eos_token_id = None  # the stop id comes from _Ids
    return model.eval()


def _mem(device: str) -> dict[str, float]:
    out = {"host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device == "cuda":
        out["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_inprocess(model, vocab: int, prompts: list[list[int]], decode: int, cfg: EngineConfig, budget: int,
                  device: str) -> dict[str, Any]:
    eng = ContinuousEngine(cfg, "", device, model=model, tokenizer=_Ids(vocab))
    # the cache sized for prompt + the real budget (as an evaluation at that budget gets it), each
    # sequence stopped after `decode` tokens: the memory is the real one, the timing affordable
    n = size_cache(cfg, model.config, model.dtype.itemsize, len(prompts[0]), budget).max_requests_per_batch
    params = [SamplingParams(max_new_tokens=decode)] * n
    _sync(device)
    t = time.perf_counter()
    toks = sum(len(out.generated_tokens) for _, out in eng.generate_ids(prompts[:n], params, cache_budget=budget))
    _sync(device)
    wall = time.perf_counter() - t
    return {"sequences": n, "tokens": toks, "wall_s": wall, "tokens_per_s": toks / wall,
            "kv_cache_gib": eng.last_sizing.gib, "kv_blocks": eng.last_sizing.num_blocks, **_mem(device)}


@torch.inference_mode()
def run_padded(model, vocab: int, prompts: list[list[int]], decode: int, batch: int, device: str) -> dict[str, Any]:
    ids = _Ids(vocab)
    _sync(device)
    t, toks = time.perf_counter(), 0
    for b in range(0, len(prompts), batch):
        x = torch.tensor(prompts[b:b + batch], device=device)
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=decode, do_sample=False,
                             eos_token_id=ids.eos_token_id, pad_token_id=ids.pad_token_id)
        toks += (out.shape[1] - x.shape[1]) * x.shape[0]
    _sync(device)
    wall = time.perf_counter() - t
    return {"sequences": len(prompts), "tokens": toks, "wall_s": wall, "tokens_per_s": toks / wall, **_mem(device)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="a 2-layer toy shape (CPU smoke run)")
    ap.add_argument("--shapes", nargs="+", default=["qwen2.5-1.5b", "qwen2.5-7b"])
    ap.add_argument("--budgets", nargs="+", type=int, default=[4096, 32768])
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--decode-tokens", type=int, default=256, help="tokens each sequence decodes in the timing")
    ap.add_argument("--concurrency", type=int, default=64, help="in-process sequences in flight (cache permitting)")
    ap.add_argument("--kv-cache-gib", type=float, default=30.0, help="cap on the in-process KV cache")
    ap.add_argument("--batch", type=int, default=16, help="padded batch (the real configs' batch_size)")
    ap.add_argument("--time-limit", type=float, default=480.0)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu --tiny for the smoke run")
    if a.tiny:
        a.shapes, a.budgets = ["tiny"], [64]
        a.prompt_len, a.decode_tokens, a.concurrency, a.batch = min(a.prompt_len, 12), min(a.decode_tokens, 8), 6, 4
    start = time.monotonic()
    res: dict[str, Any] = {"args": vars(a), "device": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu",
                           "torch": torch.__version__, "shapes": {}, "no_time_left": []}
    out = Path(a.json)

    def save() -> None:
        out.write_text(json.dumps(res, indent=2))

    for name in a.shapes:
        shape = TINY if name == "tiny" else SHAPES[name]
        if time.monotonic() - start > a.time_limit:
            res["no_time_left"].append(name)
            continue
        t = time.perf_counter()
        model = random_model(shape, a.device)
        row: dict[str, Any] = {"build_s": time.perf_counter() - t, "params": sum(p.numel() for p in model.parameters()),
                               "kv_bytes_per_token": kv_bytes_per_token(model.config, model.dtype.itemsize)}
        res["shapes"][name] = row
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(0, shape["vocab_size"] - 2, (a.concurrency, a.prompt_len), generator=g).tolist()
        cfg = EngineConfig(max_concurrency=a.concurrency, kv_cache_gib=a.kv_cache_gib)
        for budget in a.budgets:
            for engine in ("padded", "inprocess"):
                key = f"{engine}@{budget}"
                if engine == "padded" and budget != a.budgets[0]:
                    # padded does the same work per token at any budget; its KV grows with the budget
                    row[key] = {"kv_gib_at_budget": a.batch * (a.prompt_len + budget) * row["kv_bytes_per_token"] / 2**30}
                    continue
                if time.monotonic() - start > a.time_limit:
                    res["no_time_left"].append(f"{name}:{key}")
                    continue
                # untimed warm-up of the same path (kernels, allocator, lazy imports)
                if engine == "padded":
                    run_padded(model, shape["vocab_size"], prompts[:2], 2, 2, a.device)
                else:
                    run_inprocess(model, shape["vocab_size"], prompts[:2], 2, cfg.model_copy(
                        update={"max_concurrency": 2}), a.prompt_len, a.device)
                _mem(a.device)
                if engine == "padded":
                    r = run_padded(model, shape["vocab_size"], prompts[:a.batch * max(1, a.concurrency // a.batch)],
                                   a.decode_tokens, a.batch, a.device)
                    r["kv_gib_at_budget"] = a.batch * (a.prompt_len + budget) * row["kv_bytes_per_token"] / 2**30
                else:
                    r = run_inprocess(model, shape["vocab_size"], prompts, a.decode_tokens, cfg, budget, a.device)
                row[key] = r
                print(f"{name} {key}: {r['tokens']} tokens in {r['wall_s']:.1f} s = {r['tokens_per_s']:.0f} tok/s, "
                      f"{r['sequences']} sequences" + (f", GPU peak {r['gpu_peak_gib']:.1f} GiB" if 'gpu_peak_gib' in r
                                                       else ""), flush=True)
                save()
        del model
        if a.device == "cuda":
            torch.cuda.empty_cache()
    save()


if __name__ == "__main__":
    main()
