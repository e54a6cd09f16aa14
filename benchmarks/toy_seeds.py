"""Issue 27: the toy's claim over whole builds (seeds), on held-out phrasings and topics, with paired intervals.

    python benchmarks/toy_seeds.py run --root /tmp/toy-study --seeds 0 1 2 3   # build + heldout + compare each
    python benchmarks/toy_seeds.py table --root /tmp/toy-study [--more ROOT ...]  # the README table

On a shared 2-core machine the four builds ran as concurrent runs, one seed each (`run --root /tmp/toy-study-sN
--seeds N --threads 1`), and `table --root ... --more ...` gathers them.

Per seed: `python -m rainmerge.toy build --seed N` (timed), `python -m rainmerge.toy heldout` (600 more held-out
prompts), then `python -m rainmerge.eval compare` on that trio with configs/toy.yaml (its strength, stage 1/2 and
gates) and the paired intervals the promotion gates use (rainmerge/product/gates.py) for RAIN and task
arithmetic against the LRM, and RAIN against task arithmetic. Summaries: ROOT/seedN/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
METHODS = ["lrm", "itm", "task_arithmetic", "rain"]


def _overrides(trio: Path) -> dict[str, str]:
    return {"base.path": str(trio / "base"), "instruct.path": str(trio / "instruct"),
            "reasoning.path": str(trio / "reasoning"),
            "reasoning_calibration.path": str(trio / "data" / "reasoning_calibration.json"),
            "instruction_calibration.path": str(trio / "data" / "instruction_calibration.jsonl")}


def _gates(config: str):
    import yaml

    from rainmerge.product.pipeline_config import PromotionGates

    return PromotionGates(**yaml.safe_load(Path(config).read_text())["promotion"])


def run_seed(root: Path, seed: int, config: str, n_extra: int, threads: int | None = None) -> dict:
    from rainmerge.compare import compare
    from rainmerge.eval.stats import paired_bootstrap
    from rainmerge.product.gates import decide, intervals

    trio = root / f"seed{seed}"
    py = sys.executable
    if not (trio / "manifest.json").is_file():
        t0 = time.time()
        subprocess.run([py, "-m", "rainmerge.toy", "build", "--out", str(trio), "--seed", str(seed), "--quiet",
                        *(["--threads", str(threads)] if threads else [])], check=True)
        print(f"seed {seed}: built in {time.time() - t0:.0f} s", flush=True)
    if not (trio / "data" / "eval_instructions_extra.jsonl").is_file():
        subprocess.run([py, "-m", "rainmerge.toy", "heldout", "--toy", str(trio), "--n", str(n_extra)], check=True)
    t0 = time.time()
    rows = compare(config, trio / "compare", METHODS, None, None, "cpu", False, _overrides(trio))
    compare_s = time.time() - t0
    by = {r["model"]: r for r in rows}
    gates = _gates(config)
    out: dict = {"seed": seed, "compare_seconds": round(compare_s, 1),
                 "build_seconds": json.loads((trio / "manifest.json").read_text())["build_seconds"],
                 "trio_mb": round(sum(f.stat().st_size for f in trio.rglob("*") if f.is_file()
                                      and "compare" not in f.parts) / 2**20, 1),
                 "metrics": {m: {k: v for k, v in r.items() if isinstance(v, float)} for m, r in by.items()}}
    for m in ("rain", "task_arithmetic"):
        ivs = intervals(by[m], by["lrm"], gates)
        d = decide(by[m], by["lrm"], None, gates)
        out[m] = {"intervals": {k: iv.as_dict() for k, iv in ivs.items()}, "promote": d.promote,
                  "reasons": d.reasons}
    iv = paired_bootstrap(by["rain"]["paired"][gates.metric], by["task_arithmetic"]["paired"][gates.metric],
                          level=gates.confidence, n_resamples=gates.bootstrap_resamples, seed=gates.seed)
    out["rain_vs_task_arithmetic"] = iv.as_dict()
    (trio / "summary.json").write_text(json.dumps(out, indent=1))
    print(f"seed {seed}: rain {'PROMOTE' if out['rain']['promote'] else 'REJECT'}; "
          + "; ".join(out["rain"]["reasons"]), flush=True)
    return out


def _ci(d: dict, scale: float = 100) -> str:
    return f"{scale * d['delta']:+.1f} [{scale * d['lo']:+.1f}, {scale * d['hi']:+.1f}]"


def _ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):+.1f} ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:+.1f}"


def table(roots: list[Path]) -> str:
    sums = sorted((json.loads(p.read_text()) for r in roots for p in r.glob("seed*/summary.json")),
                  key=lambda s: s["seed"])
    lines = ["| build | LRM → RAIN IF inst strict | RAIN − LRM IF [95% CI] | TA − LRM IF [95% CI] | RAIN − TA IF "
             "[95% CI] | RAIN − LRM reasoning [95% CI] | well-formed LRM / RAIN / TA | RAIN verdict (toy gates) |",
             "|---|---|---|---|---|---|---|---|"]
    cols: dict[str, list[float]] = {k: [] for k in ("gain", "ta", "rvt", "reas", "wf")}
    for s in sums:
        m, r, t = s["metrics"], s["rain"]["intervals"], s["task_arithmetic"]["intervals"]
        fails = [x[5:].split()[0] for x in s["rain"]["reasons"] if x.startswith("FAIL")]
        verdict = "promote" if s["rain"]["promote"] else "reject (" + ", ".join(fails) + ")"
        lines.append(
            f"| seed {s['seed']} | {100 * m['lrm']['if_inst_strict']:.1f} → {100 * m['rain']['if_inst_strict']:.1f} | "
            f"{_ci(r['if_inst_strict'])} | {_ci(t['if_inst_strict'])} | {_ci(s['rain_vs_task_arithmetic'])} | "
            f"{_ci(r['reasoning_acc'])} | {100 * m['lrm']['think_well_formed']:.1f} / "
            f"{100 * m['rain']['think_well_formed']:.1f} / {100 * m['task_arithmetic']['think_well_formed']:.1f} | "
            f"{verdict} |")
        cols["gain"].append(100 * r["if_inst_strict"]["delta"])
        cols["ta"].append(100 * t["if_inst_strict"]["delta"])
        cols["rvt"].append(100 * s["rain_vs_task_arithmetic"]["delta"])
        cols["reas"].append(100 * r["reasoning_acc"]["delta"])
        cols["wf"].append(100 * m["rain"]["think_well_formed"])
    if sums:
        lines.append(f"| mean ± s.d. ({len(sums)} builds) | | {_ms(cols['gain'])} | {_ms(cols['ta'])} | "
                     f"{_ms(cols['rvt'])} | {_ms(cols['reas'])} | RAIN {statistics.mean(cols['wf']):.1f} | "
                     f"{sum(s['rain']['promote'] for s in sums)} of {len(sums)} promoted |")
    models = ["| build | model | IF inst strict | IF prompt strict | reasoning | well-formed | truncated | malformed "
              "| L_think |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in sums:
        for name in METHODS:
            x = s["metrics"][name]
            models.append(f"| seed {s['seed']} | {name} | " + " | ".join(
                f"{100 * x.get(k, float('nan')):.1f}" for k in ("if_inst_strict", "if_prompt_strict", "reasoning_acc",
                                                              "think_well_formed", "truncation_rate",
                                                              "malformed_rate"))
                + f" | {x.get('l_think', float('nan')):.4f} |")
    cost = [f"seed {s['seed']}: build {s['build_seconds']:.0f} s, compare {s['compare_seconds']:.0f} s, trio "
            f"{s['trio_mb']} MB" for s in sums]
    return "\n".join(lines + [""] + models + [""] + cost)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["run", "table"])
    ap.add_argument("--root", default="/tmp/toy-study")
    ap.add_argument("--more", nargs="*", default=[], help="table: more roots whose seed*/summary.json to include "
                    "(builds run concurrently in separate roots)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--config", default=str(REPO / "configs" / "toy.yaml"))
    ap.add_argument("--n-extra", type=int, default=600)
    ap.add_argument("--threads", type=int, help="torch threads per build (default: the builder's)")
    a = ap.parse_args()
    root = Path(a.root)
    if a.cmd == "run":
        root.mkdir(parents=True, exist_ok=True)
        for seed in a.seeds:
            run_seed(root, seed, a.config, a.n_extra, a.threads)
    print(table([root, *map(Path, a.more)]))


if __name__ == "__main__":
    main()
