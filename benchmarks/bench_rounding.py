"""The cast of one merged weight to bfloat16: plain (nearest) against compensated rounding (rainmerge.rounding),
in alternating rounds: seconds, peak extra memory, and the identity residual each leaves at the protected
features, relative to ||tau x||.

    .venv/bin/python benchmarks/bench_rounding.py --rows 900 --width 1536 --out 1536 --rounds 2 --device cpu

A weight of scale 0.02 in bfloat16, a task vector at --tau-share of it (default 2 %), projected exactly
(float32 basis); the residual is ||(W_cast - W_LRM) X^T|| / ||tau X^T|| on the features themselves.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from rainmerge.projection import project_delta, protected_basis  # noqa: E402
from rainmerge.rounding import RoundingFactor, compensated_round, feature_norm, protected_gram  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=900, help="protected rows (features [rows, width])")
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--out", type=int, default=1536, help="output rows of the weight")
    ap.add_argument("--tau-share", type=float, default=0.02)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    X = (torch.randn(a.rows, a.width, generator=g, dtype=torch.float64)
         * (torch.rand(a.width, generator=g, dtype=torch.float64) + 0.1)).to(dev)
    b = protected_basis(X, dtype="float32")
    lrm = (torch.randn(a.out, a.width, generator=g) * 0.02).to(torch.bfloat16).to(dev)
    tau = (torch.randn(a.out, a.width, generator=g) * 0.02 * a.tau_share).to(dev)
    merged = lrm.float() + project_delta(tau, b).float()
    blocks = [(slice(None), b)]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {"nearest": [], "factor": [], "compensated": []}
    for _ in range(a.rounds):
        sync(); t = time.perf_counter(); near = merged.to(torch.bfloat16); sync()
        times["nearest"].append(time.perf_counter() - t)
        t = time.perf_counter(); f = RoundingFactor.of(protected_gram(blocks, a.width, dev)); sync()
        times["factor"].append(time.perf_counter() - t)
        t = time.perf_counter(); comp = compensated_round(merged, f, torch.bfloat16); sync()
        times["compensated"].append(time.perf_counter() - t)
    tx = feature_norm(tau, blocks)
    res = {k: feature_norm(v, blocks, lrm) / tx for k, v in (("nearest", near), ("compensated", comp))}
    change = float(torch.linalg.vector_norm(comp.float() - merged) / torch.linalg.vector_norm(merged - lrm.float()))
    extra_mb = (a.width**2 * 4 + a.out * a.width * (4 + 2)) / 2**20  # factor U + working copy + output
    best = {k: min(v) for k, v in times.items()}
    print(f"shape out {a.out} x width {a.width}, {a.rows} protected rows (rank {b.rank}), device {dev}")
    print(f"nearest     {best['nearest']:.4f} s   residual/||tau x|| {res['nearest']:.3e}")
    print(f"compensated {best['compensated']:.4f} s (+ factor {best['factor']:.4f} s per input and layer)   "
          f"residual/||tau x|| {res['compensated']:.3e}   ratio {res['compensated'] / res['nearest']:.2f}")
    print(f"compensated moves the weights by {change:.3f} of ||delta||; extra memory ~{extra_mb:.0f} MiB")


if __name__ == "__main__":
    main()
