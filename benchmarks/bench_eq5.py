"""Eq. 5 on one delta: the direct low-rank form against the complement form (Basis.complement), in
alternating rounds, for protected rows that fill an input (a capped layer) or not.

    .venv/bin/python benchmarks/bench_eq5.py --rows 1800 --width 1536 --out 6144 --rounds 4

Prints each form's seconds per round, their ratio and the largest difference between the two results.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from rainmerge import projection as P  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1800, help="protected rows (features [rows, width])")
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--out", type=int, default=6144, help="output rows of the delta")
    ap.add_argument("--rounds", type=int, default=4)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    basis = P.protected_basis(torch.randn(a.rows, a.width, generator=g), dtype="float32")
    d0 = torch.randn(a.out, a.width, generator=g)
    print(f"k = {basis.k} of {a.width} ({basis.rule}); delta [{a.out}, {a.width}] float32")
    share = P.COMPLEMENT_SHARE
    times: dict[str, list[float]] = {"direct": [], "complement": []}
    out: dict[str, torch.Tensor] = {}
    try:
        for r in range(a.rounds):
            for form in (("direct", "complement") if r % 2 == 0 else ("complement", "direct")):
                P.COMPLEMENT_SHARE = share if form == "complement" else 0.0
                basis.__dict__.pop("_complement", None)  # the form is chosen (and cached) per basis
                basis.complement()
                d = d0.clone()
                t0 = time.perf_counter()
                P.project_delta_(d, basis)
                times[form].append(round(time.perf_counter() - t0, 4))
                out[form] = d
    finally:
        P.COMPLEMENT_SHARE = share
    basis.__dict__.pop("_complement", None)
    if basis.complement() is None:
        print("(the complement form does not apply here: width - k > COMPLEMENT_SHARE * k; both rows are direct)")
    ratio = min(times["complement"]) / min(times["direct"])
    diff = float((out["direct"] - out["complement"]).abs().max())
    print(f"direct {times['direct']}\ncomplement {times['complement']}\ncomplement / direct {ratio:.3f}; "
          f"largest difference {diff:.2e} (entries up to {float(d0.abs().max()):.1f})")


if __name__ == "__main__":
    main()
