"""Prepared GPU run (not yet run): the evaluation loader's placement on a real GPU. A random-weight model of
a shipped shape is saved once (bf16 safetensors), then loaded in a fresh process per mode:

    old         the loader before issue 22: from_pretrained(dtype=bf16) on the host, then .to("cuda")
    one-gpu     rainmerge.eval.engines.hf.load, kind padded, no map: from_pretrained(device_map="cuda")
    device-map  the same with gpu_memory [free memory]: accelerate's map, nothing on the host
    too-small   gpu_memory [1GiB]: the fit check must stop it before any weight is read

Per mode: load seconds, peak host RSS (the point: one-gpu and device-map should stay far below the model's
bytes, old near or above them), peak GPU memory, and a greedy 32-token continuation of fixed ids, which
must be identical across the loading modes.

    timeout 480 .venv/bin/python benchmarks/gpu_eval_placement.py --json gpu-eval-placement.json
    .venv/bin/python benchmarks/gpu_eval_placement.py --device cpu --tiny --json /tmp/gep.json   # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

MODES = ("old", "one-gpu", "device-map", "too-small")
TINY = dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False)


class _Ids:
    eos_token_id, pad_token_id = None, 0


def save_random(shape: dict, folder: Path, device: str) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(shape)
    cfg = AutoConfig.for_model(kw.pop("model_type"), **kw)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    return n


def one_mode(mode: str, folder: str, device: str) -> dict:
    from transformers import AutoModelForCausalLM

    from rainmerge.eval.engines import EngineConfig
    from rainmerge.eval.engines.hf import load

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    free = int(torch.cuda.mem_get_info()[0]) if device == "cuda" else 0
    t0 = time.perf_counter()
    out: dict = {"mode": mode}
    try:
        if mode == "old":
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device).eval()
        else:
            mem = {"device-map": [f"{max(free, 2**30) // 2**20}MiB"], "too-small": ["1GiB"]}.get(mode)
            cfg = EngineConfig(kind="padded", dtype="bfloat16", gpu_memory=mem)
            model, _ = load(folder, device, tokenizer=_Ids(), cfg=cfg, kv_tokens=1024)
    except Exception as exc:  # too-small: the fit check's error, and how long it took to say so
        out.update(error=f"{type(exc).__name__}: {str(exc)[:300]}", seconds=time.perf_counter() - t0)
        return out | _mem(device)
    out["seconds"] = time.perf_counter() - t0
    out["device_map"] = {str(k): str(v) for k, v in (getattr(model, "hf_device_map", None) or {}).items()}
    ids = torch.arange(1, 17).unsqueeze(0).to(next(model.parameters()).device)
    with torch.inference_mode():
        gen = model.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=0)
    out["continuation"] = gen[0, 16:].tolist()
    return out | _mem(device)


def _mem(device: str) -> dict:
    out = {"host_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device == "cuda":
        out["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--shape", default="qwen2.5-7b", help="a rainmerge.synthetic.SHAPES name")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer toy shape (CPU smoke run)")
    ap.add_argument("--json", required=True)
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.mode:  # child: one mode, one fresh process (its peak RSS is its own)
        print(json.dumps(one_mode(a.mode, a.folder, a.device)))
        return 0
    from rainmerge.synthetic import SHAPES

    shape = TINY if a.tiny else SHAPES[a.shape]
    results: dict = {"shape": "tiny" if a.tiny else a.shape, "device": a.device, "modes": []}
    with tempfile.TemporaryDirectory(prefix="gep-") as tmp:
        results["model_gib"] = save_random(shape, Path(tmp), a.device) / 2**30
        if a.device == "cuda":
            torch.cuda.empty_cache()
        for mode in MODES:
            p = subprocess.run([sys.executable, __file__, "--device", a.device, "--json", a.json, "--mode", mode,
                                "--folder", tmp], capture_output=True, text=True)
            row = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else {
                "mode": mode, "error": p.stderr[-500:]}
            results["modes"].append(row)
            print(json.dumps(row))
            Path(a.json).write_text(json.dumps(results, indent=2))
    conts = {r["mode"]: r.get("continuation") for r in results["modes"] if "continuation" in r}
    results["same_continuation"] = len({json.dumps(c) for c in conts.values()}) == 1
    Path(a.json).write_text(json.dumps(results, indent=2))
    print(f"model {results['model_gib']:.2f} GiB; same greedy continuation across loads: {results['same_continuation']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
