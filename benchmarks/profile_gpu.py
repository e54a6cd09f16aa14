"""Where a Stage-1/Stage-2 forward's time goes on the GPU: per-sample wall time of a plain forward, the
feature-hooked forward and the attention-statistics forward, then torch.profiler's top ops of each.

    python benchmarks/profile_gpu.py --shape qwen2.5-1.5b --samples 12 --json profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def main() -> None:
    from rainmerge import stages
    from rainmerge.attention import alignment_leakage
    from rainmerge.config import load_config
    from rainmerge.context import load_reasoning_model, open_models
    from rainmerge.features import decoder_body
    from rainmerge.synthetic import write_calibration_of_length, write_random_trio

    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2.5-1.5b")
    ap.add_argument("--samples", type=int, default=12)
    ap.add_argument("--words", type=int, default=900)
    ap.add_argument("--work", default="bench-work/profile")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--json", default="profile.json")
    a = ap.parse_args()
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    trio = write_random_trio(work, a.shape, a.layers, device=a.device, link_base=True)
    r_cal, i_cal = write_calibration_of_length(work / "calib", a.samples, a.samples, a.words)
    cfg = load_config(None, {"base": str(trio["base"]), "instruct": str(trio["instruct"]),
                             "reasoning": str(trio["reasoning"]), "reasoning_calibration": str(r_cal),
                             "instruction_calibration": str(i_cal), "output": str(work / "out"), "method": "rain",
                             "device": a.device, "hash_inputs": False})
    ctx = open_models(cfg.models_spec(), cfg.runtime())
    cal = stages.encode_calibration(ctx, cfg.calibration_spec())
    model = load_reasoning_model(ctx)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out: dict = {"shape": a.shape, "samples": a.samples}

    def per_sample(label, fn, samples):
        fn(samples[:2])  # warm-up
        sync()
        t0 = time.time()
        fn(samples)
        sync()
        dt = time.time() - t0
        toks = sum(len(s.input_ids) for s in samples)
        out[label] = {"ms_per_sample": round(1e3 * dt / len(samples), 2), "tokens_per_s": round(toks / dt, 1)}
        print(f"{label:<28} {json.dumps(out[label])}", flush=True)

    def plain(samples):
        with torch.no_grad():
            for s in samples:
                decoder_body(model)(input_ids=torch.tensor([s.input_ids], device=dev), use_cache=False)

    layers = list(ctx.layers)
    feats = lambda samples: stages.stage1_features(ctx, model, samples, False)  # noqa: E731
    attn = lambda samples: alignment_leakage(model, samples, layers, ctx.arch.num_heads, progress=False)  # noqa: E731
    per_sample("plain_forward_reasoning", plain, cal.reasoning)
    per_sample("stage1_features", feats, cal.reasoning)
    per_sample("plain_forward_instruction", plain, cal.instruction)
    per_sample("stage2_attention", attn, cal.instruction)
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    for label, fn, samples in (("stage1_features", feats, cal.reasoning[:4]), ("stage2_attention", attn, cal.instruction[:4]),
                               ("plain_forward", plain, cal.reasoning[:4])):
        with profile(activities=acts) as prof:
            fn(samples)
            sync()
        ka = prof.key_averages()
        cpu = ka.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=50)
        out[f"profile_{label}_cpu"] = cpu
        print(f"== {label}: top self-CPU ops (4 samples)\n{cpu}", flush=True)
        if dev.type == "cuda":
            gpu = ka.table(sort_by="self_cuda_time_total", row_limit=10, max_name_column_width=50)
            out[f"profile_{label}_cuda"] = gpu
            print(f"== {label}: top self-CUDA ops\n{gpu}", flush=True)
    Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
