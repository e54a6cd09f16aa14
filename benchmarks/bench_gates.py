"""How often the IF gain gate passes on simulated paired records: a merge with no real gain (false
promotion rate) and with a real gain (power), for the paired-interval gate and the old point gate.

    .venv/bin/python benchmarks/bench_gates.py --sims 1000 --prompts 176 500 --gain 0.0 0.05

Records come from rainmerge.eval.stats.simulate_if_units (its comment says how they are calibrated).
Prints, per (prompts, gain): the pass rate of `lower bound >= margin` (95% paired bootstrap) for each
--margin, and of the old gate `point delta >= 0.02`, with the mean paired standard error.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from rainmerge.eval.stats import paired_bootstrap, paired_se, ratio, simulate_if_units  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sims", type=int, default=1000)
    ap.add_argument("--prompts", type=int, nargs="+", default=[176, 500])
    ap.add_argument("--gain", type=float, nargs="+", default=[0.0, 0.05])
    ap.add_argument("--margin", type=float, nargs="+", default=[0.0, 0.01])
    ap.add_argument("--old-margin", type=float, default=0.02)
    ap.add_argument("--resamples", type=int, default=2000)
    a = ap.parse_args()
    print(f"{'prompts':>7} {'gain':>5} {'SE':>7} " + " ".join(f"{'new>=' + str(m):>10}" for m in a.margin)
          + f" {'old>=' + str(a.old_margin):>10}  seconds")
    for n in a.prompts:
        for g in a.gain:
            t0 = time.perf_counter()
            rng = np.random.default_rng(12345)
            new = np.zeros(len(a.margin))
            old, se = 0, []
            for s in range(a.sims):
                c, r = simulate_if_units(n, g, rng)
                iv = paired_bootstrap(c, r, n_resamples=a.resamples, seed=s)
                new += [iv.lo >= m for m in a.margin]
                old += ratio(c) - ratio(r) >= a.old_margin
                se.append(paired_se(c, r))
            print(f"{n:>7} {g:>5.2f} {np.mean(se):>7.4f} " + " ".join(f"{x / a.sims:>10.3f}" for x in new)
                  + f" {old / a.sims:>10.3f}  {time.perf_counter() - t0:.1f}", flush=True)


if __name__ == "__main__":
    main()
