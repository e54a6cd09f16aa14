"""Peak host RSS of loading the LRM for float32 CPU forwards: rainmerge.context.load_reasoning_model
(bf16 as stored, upcast per parameter) vs from_pretrained(dtype=float32) (the bf16->fp32 transient).

    python benchmarks/bench_load_rss.py bench-work/qwen2.5-0.5b-L4 --rounds 2

Each load runs in a fresh child (alternating), peak RSS from os.wait4; the import baseline (a child
that imports the same modules and loads nothing) is subtracted, and the result is divided by the
size of one model in float32 (what the forwards need).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, torch
from transformers import AutoModelForCausalLM
from rainmerge.config import load_config
from rainmerge.context import load_reasoning_model, open_models
work, mode = sys.argv[1], sys.argv[2]
cfg = load_config(None, {"base": work + "/base", "instruct": work + "/instruct", "reasoning": work + "/reasoning",
                         "output": work + "/out-rss", "device": "cpu", "method": "task_arithmetic"})
ctx = open_models(cfg.models_spec(), cfg.runtime())
if mode == "rainmerge":
    m = load_reasoning_model(ctx)
elif mode == "float32_load":
    m = AutoModelForCausalLM.from_pretrained(work + "/reasoning", dtype=torch.float32, attn_implementation="sdpa")
if mode != "imports":
    assert all(p.dtype == torch.float32 for p in m.parameters())
    print(sum(p.numel() * 4 for p in m.parameters()))
"""


def peak(mode: str, work: str) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen([sys.executable, "-c", CHILD, work, mode], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(p.stderr.read()[-2000:])
    return usage.ru_maxrss / 2**20, p.stdout.read().strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", help="a trio folder made by bench_merge.py (bf16)")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    res: dict[str, list[float]] = {"imports": [], "rainmerge": [], "float32_load": []}
    fp32_bytes = 0
    for r in range(a.rounds):
        for mode in res:
            gib, out = peak(mode, a.work)
            res[mode].append(gib)
            fp32_bytes = int(out) if out else fp32_bytes
            print(f"round {r + 1} {mode:<13} peak RSS {gib:.3f} GiB", flush=True)
    med = {m: statistics.median(v) for m, v in res.items()}
    one = fp32_bytes / 2**30
    print(f"\none model in float32: {one:.3f} GiB; import baseline {med['imports']:.3f} GiB (median of {a.rounds})")
    for m in ("rainmerge", "float32_load"):
        print(f"  {m:<13} peak {med[m]:.3f} GiB, above imports {med[m] - med['imports']:.3f} GiB = "
              f"{(med[m] - med['imports']) / one:.2f}x the float32 model")
    print(f"  ratio rainmerge/float32_load (above imports): "
          f"{(med['rainmerge'] - med['imports']) / (med['float32_load'] - med['imports']):.2f}")


if __name__ == "__main__":
    main()
