"""Issue 27: the toy's claim over whole builds (seeds), on held-out phrasings and topics, with paired intervals.

    python benchmarks/toy_seeds.py run --root /tmp/toy-study --seeds 0 1 2 3   # build, dev sweep, held-out
    python benchmarks/toy_seeds.py table --root /tmp/toy-study [--more ROOT ...]  # the README table

Per seed (ROOT/seedN):
1. `python -m rainmerge.toy build --seed N` (timed; the shipped recipe unless --recipe), `heldout` (600 more
   held-out prompts; with --n-extra-problems, that many more sums) and `devset` (300 prompts in the calibration
   part's wording and topics + 100 sums, or --dev-problems).
2. Strength, per method, on the dev set only (the rule below, fixed before the v3.1 builds ran): RAIN and task
   arithmetic are each merged at every strength of GRID and evaluated on the dev set; a strength is eligible
   when its dev evaluation passes the toy gates other than the IF margin (reasoning, truncation, malformed,
   paired against the LRM) and keeps >= 99 % of think blocks well-formed; each method takes its eligible
   strength with the highest dev IF (ties: the smaller); with none eligible, the smallest strength.
3. Held-out: the LRM, the ITM, RAIN and task arithmetic at their chosen strengths, and task arithmetic at
   RAIN's strength, on the build's held-out sets (800 format prompts in held-out phrasings/topics, 200 sums and
   --n-extra-problems more), with the paired intervals the promotion gates use (rainmerge/product/gates.py).
The claim the issue asks about holds on a build when RAIN is >= 99 % well-formed, its reasoning interval's lower
bound is >= -2 points, and the lower bounds of its IF gain over the LRM and over task arithmetic (each at its
chosen strength) are above 0. The toy gates' verdict (with their 5-point margin) is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
GRID = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
MERGES = ("rain", "task_arithmetic")


def _overrides(trio: Path) -> dict[str, str]:
    return {"base.path": str(trio / "base"), "instruct.path": str(trio / "instruct"),
            "reasoning.path": str(trio / "reasoning"),
            "reasoning_calibration.path": str(trio / "data" / "reasoning_calibration.json"),
            "instruction_calibration.path": str(trio / "data" / "instruction_calibration.jsonl")}


def _gates(config: str, **update):
    import yaml

    from rainmerge.product.pipeline_config import PromotionGates

    return PromotionGates(**{**yaml.safe_load(Path(config).read_text())["promotion"], **update})


class Evaluator:
    """Merges and evaluations of one trio, cached by name in a JSON file (a killed run resumes)."""

    def __init__(self, trio: Path, config: str, data: Path, cache: Path):
        self.trio, self.config, self.data, self.cache = trio, config, data, cache
        self.res = json.loads(cache.read_text()) if cache.is_file() else {}

    def model(self, name: str, method: str, strength: float | None = None) -> dict:
        from rainmerge.compare import model_folder
        from rainmerge.config import load_config
        from rainmerge.eval.suite import evaluate_model

        if name in self.res:
            return self.res[name]
        base = load_config(self.config, {**_overrides(self.trio), **({"strength": strength} if strength is not None else {})})
        tmp = None if method in ("lrm", "itm") else self.cache.parent / "models" / name
        folder = model_folder(base, method, tmp)
        r = evaluate_model(folder, self.data, lrm_dir=str(self.trio / "reasoning"), device="cpu",
                           batch_size=50, progress=False, name=name,
                           calibration=str(self.trio / "data" / "instruction_calibration.jsonl"))
        r.pop("examples", None)
        if tmp is not None:
            shutil.rmtree(tmp)
        self.res[name] = r
        self.cache.write_text(json.dumps(self.res))
        return r


def choose_strength(dev: Evaluator, method: str, gates) -> dict:
    """The rule of the module docstring, on the dev set: eligible strengths pass every toy gate but the IF
    margin and keep >= 99 % well-formed; the eligible one with the highest dev IF wins (ties: smaller)."""
    from rainmerge.product.gates import decide

    lrm = dev.model("lrm", "lrm")
    no_margin = gates.model_copy(update={"min_gain_over_lrm": -1.0})
    rows = []
    for s in GRID:
        r = dev.model(f"{method}@{s}", method, s)
        d = decide(r, lrm, None, no_margin)
        ok = d.promote and r["think_well_formed"] >= 0.99
        rows.append({"strength": s, "eligible": ok, "if": r[gates.metric], "reasoning": r["reasoning_acc"],
                     "well_formed": r["think_well_formed"]})
    best = max((x for x in rows if x["eligible"]), key=lambda x: (x["if"], -x["strength"]), default=None)
    return {"strength": best["strength"] if best else GRID[0], "none_eligible": best is None, "grid": rows}


def _check_disjoint(trio: Path) -> None:
    """The dev set (strength is chosen on it) shares no prompt with the held-out sets it must not leak into."""
    from rainmerge.toy.build import jsonl_prompts

    shared = jsonl_prompts(trio / "dev") & jsonl_prompts(trio / "data")
    if shared:
        raise SystemExit(f"{trio}: {len(shared)} dev prompts are also held-out prompts, e.g. {sorted(shared)[0]!r}")


def run_seed(root: Path, seed: int, a: argparse.Namespace) -> dict:
    """Build seed `seed` under root with the options of `main` (a), then the dev sweep and the held-out comparison."""
    from rainmerge.eval.stats import paired_bootstrap
    from rainmerge.product.gates import decide, intervals

    trio, py, config = root / f"seed{seed}", sys.executable, a.config
    if not (trio / "manifest.json").is_file():
        t0 = time.time()
        subprocess.run([py, "-m", "rainmerge.toy", "build", "--out", str(trio), "--seed", str(seed), "--quiet",
                        *(["--threads", str(a.threads)] if a.threads else []),
                        *(["--recipe", a.recipe] if a.recipe else []), *a.build_args], check=True)
        print(f"seed {seed}: built in {time.time() - t0:.0f} s", flush=True)
    if not (trio / "data" / "eval_instructions_extra.jsonl").is_file() or (
            a.n_extra_problems and not (trio / "data" / "eval_problems_extra.jsonl").is_file()):
        subprocess.run([py, "-m", "rainmerge.toy", "heldout", "--toy", str(trio), "--n", str(a.n_extra),
                        "--problems", str(a.n_extra_problems)], check=True)
    if not (trio / "dev" / "eval_instructions.jsonl").is_file():  # after heldout: a large dev set avoids its sums
        subprocess.run([py, "-m", "rainmerge.toy", "devset", "--toy", str(trio), "--out", str(trio / "dev"),
                        *(["--problems", str(a.dev_problems)] if a.dev_problems else [])], check=True)
    _check_disjoint(trio)
    gates = _gates(config)
    t0 = time.time()
    dev = Evaluator(trio, config, trio / "dev", trio / "study" / "dev.json")
    (trio / "study").mkdir(exist_ok=True)
    chosen = {m: choose_strength(dev, m, gates) for m in MERGES}
    dev_s = time.time() - t0
    t0 = time.time()
    held = Evaluator(trio, config, trio / "data", trio / "study" / "heldout.json")
    lam_r, lam_t = chosen["rain"]["strength"], chosen["task_arithmetic"]["strength"]
    by = {"lrm": held.model("lrm", "lrm"), "itm": held.model("itm", "itm"),
          "rain": held.model(f"rain@{lam_r}", "rain", lam_r),
          "task_arithmetic": held.model(f"task_arithmetic@{lam_t}", "task_arithmetic", lam_t),
          "ta_same": held.model(f"task_arithmetic@{lam_r}", "task_arithmetic", lam_r)}
    out: dict = {"seed": seed, "dev_seconds": round(dev_s, 1), "heldout_seconds": round(time.time() - t0, 1),
                 "build_seconds": json.loads((trio / "manifest.json").read_text())["build_seconds"],
                 "trio_mb": round(sum(f.stat().st_size for f in trio.rglob("*") if f.is_file()
                                      and not {"study", "compare", "dev"} & set(f.parts)) / 2**20, 1),
                 "chosen": chosen,
                 "lrm_dev": {k: dev.model("lrm", "lrm")[k] for k in ("reasoning_acc", "think_well_formed")},
                 "metrics": {m: {k: v for k, v in r.items() if isinstance(v, float)} for m, r in by.items()}}
    for m in ("rain", "task_arithmetic", "ta_same"):
        d = decide(by[m], by["lrm"], None, gates)
        out[m] = {"intervals": {k: iv.as_dict() for k, iv in intervals(by[m], by["lrm"], gates).items()},
                  "promote": d.promote, "reasons": d.reasons}
    for m in ("task_arithmetic", "ta_same"):
        out[f"rain_vs_{m}"] = paired_bootstrap(by["rain"]["paired"][gates.metric], by[m]["paired"][gates.metric],
                                               level=gates.confidence, n_resamples=gates.bootstrap_resamples,
                                               seed=gates.seed).as_dict()
    r = out["rain"]["intervals"]
    out["claim"] = {"well_formed": by["rain"]["think_well_formed"] >= 0.99,
                    "reasoning": r["reasoning_acc"]["lo"] >= -0.02, "if_above_lrm": r[gates.metric]["lo"] > 0,
                    "if_above_ta": out["rain_vs_task_arithmetic"]["lo"] > 0}
    out["claim"]["holds"] = all(out["claim"].values())
    (trio / "summary.json").write_text(json.dumps(out, indent=1))
    print(f"seed {seed}: rain@{lam_r} ta@{lam_t}; claim {'HOLDS' if out['claim']['holds'] else 'fails'} "
          f"{out['claim']}; toy gates {'PROMOTE' if out['rain']['promote'] else 'REJECT'}", flush=True)
    return out


def _ci(d: dict, scale: float = 100) -> str:
    return f"{scale * d['delta']:+.1f} [{scale * d['lo']:+.1f}, {scale * d['hi']:+.1f}]"


def _ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):+.1f} ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else f"{xs[0]:+.1f}"


def _lrm_dev(s: dict) -> str:
    d = s.get("lrm_dev")  # absent in summaries written before v3.2
    return f"{100 * d['reasoning_acc']:.0f} / {100 * d['think_well_formed']:.1f}" if d else "n/a"


CLAIM_NAMES = {"well_formed": "well-formed", "reasoning": "reasoning", "if_above_lrm": "IF > LRM",
               "if_above_ta": "IF > TA"}


def table(roots: list[Path]) -> str:
    sums = sorted((json.loads(p.read_text()) for r in roots for p in r.glob("seed*/summary.json")),
                  key=lambda s: s["seed"])
    lines = ["| build | λ RAIN / TA (dev) | LRM → RAIN IF | RAIN − LRM IF [95% CI] | TA − LRM IF [95% CI] | "
             "RAIN − TA IF [95% CI] | RAIN − LRM reasoning [95% CI] | well-formed LRM / RAIN / TA | claim | "
             "toy gates (5-pt margin) | LRM on dev: reasoning / well-formed |", "|---" * 11 + "|"]
    cols: dict[str, list[float]] = {k: [] for k in ("gain", "ta", "rvt", "reas", "wf")}
    for s in sums:
        m, r, t = s["metrics"], s["rain"]["intervals"], s["task_arithmetic"]["intervals"]
        fails = [x[5:].split()[0] for x in s["rain"]["reasons"] if x.startswith("FAIL")]
        missed = [CLAIM_NAMES[k] for k, v in s["claim"].items() if k != "holds" and not v]
        lines.append(
            f"| seed {s['seed']} | {s['chosen']['rain']['strength']} / {s['chosen']['task_arithmetic']['strength']} | "
            f"{100 * m['lrm']['if_inst_strict']:.1f} → {100 * m['rain']['if_inst_strict']:.1f} | "
            f"{_ci(r['if_inst_strict'])} | {_ci(t['if_inst_strict'])} | {_ci(s['rain_vs_task_arithmetic'])} | "
            f"{_ci(r['reasoning_acc'])} | {100 * m['lrm']['think_well_formed']:.1f} / "
            f"{100 * m['rain']['think_well_formed']:.1f} / {100 * m['task_arithmetic']['think_well_formed']:.1f} | "
            f"{'holds' if s['claim']['holds'] else 'fails (' + ', '.join(missed) + ')'} | "
            f"{'promote' if s['rain']['promote'] else 'reject (' + ', '.join(fails) + ')'} | {_lrm_dev(s)} |")
        cols["gain"].append(100 * r["if_inst_strict"]["delta"])
        cols["ta"].append(100 * t["if_inst_strict"]["delta"])
        cols["rvt"].append(100 * s["rain_vs_task_arithmetic"]["delta"])
        cols["reas"].append(100 * r["reasoning_acc"]["delta"])
        cols["wf"].append(100 * m["rain"]["think_well_formed"])
    if sums:
        lines.append(f"| mean ± s.d. ({len(sums)} builds) | | | {_ms(cols['gain'])} | {_ms(cols['ta'])} | "
                     f"{_ms(cols['rvt'])} | {_ms(cols['reas'])} | RAIN {statistics.mean(cols['wf']):.1f} | "
                     f"holds on {sum(s['claim']['holds'] for s in sums)} of {len(sums)} | "
                     f"{sum(s['rain']['promote'] for s in sums)} of {len(sums)} promoted | |")
    same = ["| build | λ | TA − LRM IF [95% CI] | RAIN − TA IF [95% CI] | TA − LRM reasoning [95% CI] | TA well-formed |",
            "|---|---|---|---|---|---|"]
    for s in sums:
        t = s["ta_same"]["intervals"]
        same.append(f"| seed {s['seed']} | {s['chosen']['rain']['strength']} | {_ci(t['if_inst_strict'])} | "
                    f"{_ci(s['rain_vs_ta_same'])} | {_ci(t['reasoning_acc'])} | "
                    f"{100 * s['metrics']['ta_same']['think_well_formed']:.1f} |")
    models = ["| build | model | IF inst strict | IF prompt strict | reasoning | well-formed | truncated | malformed "
              "| L_think |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in sums:
        for name in ("lrm", "itm", "task_arithmetic", "rain"):
            x = s["metrics"][name]
            models.append(f"| seed {s['seed']} | {name} | " + " | ".join(
                f"{100 * x.get(k, float('nan')):.1f}" for k in ("if_inst_strict", "if_prompt_strict", "reasoning_acc",
                                                              "think_well_formed", "truncation_rate",
                                                              "malformed_rate"))
                + f" | {x.get('l_think', float('nan')):.4f} |")
    cost = [f"seed {s['seed']}: build {s['build_seconds']:.0f} s, dev sweep {s['dev_seconds']:.0f} s, held-out "
            f"{s['heldout_seconds']:.0f} s, trio {s['trio_mb']} MB" for s in sums]
    return "\n".join(lines + ["", "Task arithmetic at RAIN's strength (same λ):", ""] + same + [""] + models
                     + [""] + cost)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["run", "table"])
    ap.add_argument("--root", default="/tmp/toy-study")
    ap.add_argument("--more", nargs="*", default=[], help="table: more roots whose seed*/summary.json to include "
                    "(builds run concurrently in separate roots)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--config", default=str(REPO / "configs" / "toy.yaml"))
    ap.add_argument("--n-extra", type=int, default=600)
    ap.add_argument("--n-extra-problems", type=int, default=0,
                    help="more held-out sums beside the build's 200 (v3.2: 400, so 600 in all)")
    ap.add_argument("--threads", type=int, help="torch threads per build (default: the builder's)")
    ap.add_argument("--recipe", help="toy recipe (default: the shipped one)")
    ap.add_argument("--dev-problems", type=int, default=0, help="sums in the dev set (default: devset's 100; "
                    "600, as many as held out, keeps a single sum from deciding a strength: docs/toy-v3.md v3.3)")
    ap.add_argument("--build-args", nargs=argparse.REMAINDER, default=[],
                    help="last on the line: everything after it goes to `python -m rainmerge.toy build` "
                    "(e.g. --build-args --lrm-if-share 0.01)")
    a = ap.parse_args()
    root = Path(a.root)
    if a.cmd == "run":
        root.mkdir(parents=True, exist_ok=True)
        for seed in a.seeds:
            run_seed(root, seed, a)
    print(table([root, *map(Path, a.more)]))


if __name__ == "__main__":
    main()
