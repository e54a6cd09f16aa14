"""CPU side-by-side: rainmerge task arithmetic (or TIES) vs `mergekit-yaml` on the same generated trio.

    python benchmarks/bench_vs_mergekit.py --mergekit-venv .bench-venv --shape qwen2.5-0.5b --rounds 2
    python benchmarks/bench_vs_mergekit.py --method ties --rounds 3      # TIES, density 0.5, no normalise

mergekit is a benchmark peer only, installed in its own venv (see benchmarks/README.md). Runs
alternate (rainmerge, mergekit, rainmerge, ...) so both see the same page-cache state; each child's
wall time and peak RSS come from os.wait4. Prints the ratios rainmerge / mergekit (<= 1.0 is better).

Work differs slightly: mergekit's task_arithmetic applies R + I - B to every tensor (embeddings and
norms too); rainmerge merges the decoder linears and copies the rest from the LRM. Both read three
models and write one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


TIME = "/usr/bin/time"


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """wall s, peak RSS GiB, CPU s of one command. The peak comes from GNU time's %M when it is there:
    wait4's ru_maxrss also counts the pre-exec fork of this (large) benchmark process."""
    wrap = [TIME, "-f", "BENCH_MAXRSS_KB=%M"] if os.access(TIME, os.X_OK) else []
    t0 = time.time()
    p = subprocess.Popen(wrap + cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(p.pid, 0)
    dt = time.time() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    peak_kb = [int(line.split("=", 1)[1]) for line in err.splitlines() if line.startswith("BENCH_MAXRSS_KB=")]
    peak = peak_kb[-1] / 2**20 if peak_kb else usage.ru_maxrss / 2**20
    return dt, peak, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2.5-0.5b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--work", default="bench-work")
    ap.add_argument("--mergekit-venv", default=".bench-venv")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--method", choices=["task_arithmetic", "ties"], default="task_arithmetic")
    ap.add_argument("--density", type=float, default=0.5)
    a = ap.parse_args()

    from rainmerge.synthetic import write_random_trio

    work = Path(a.work) / f"{a.shape}-L{a.layers or 'all'}"
    if not (work / "reasoning" / "config.json").is_file():
        shutil.rmtree(work, ignore_errors=True)
        write_random_trio(work, a.shape, a.layers)
    mk = Path(a.mergekit_venv) / "bin" / "mergekit-yaml"
    if not mk.is_file():
        raise SystemExit(f"{mk} not found: create the peer venv first (benchmarks/README.md)")
    cfg = work / f"mergekit_{a.method}.yaml"
    extra = f", density: {a.density}" if a.method == "ties" else ""
    glob = "parameters: {normalize: false}\n" if a.method == "ties" else ""
    cfg.write_text(f"merge_method: {a.method}\nbase_model: {work / 'base'}\n{glob}models:\n"
                   f"  - model: {work / 'reasoning'}\n    parameters: {{weight: 1.0{extra}}}\n"
                   f"  - model: {work / 'instruct'}\n    parameters: {{weight: 1.0{extra}}}\ndtype: bfloat16\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    ours = [sys.executable, "-m", "rainmerge", "merge", "--method", a.method, "--density", str(a.density), "--base", str(work / "base"),
            "--instruct", str(work / "instruct"), "--reasoning", str(work / "reasoning"), "--device", "cpu",
            "--output", str(work / "out-rainmerge"), "--overwrite", "--quiet", "--set", "hash_inputs=false"]
    theirs = [str(mk), str(cfg), str(work / "out-mergekit"), "--lazy-unpickle", "--out-shard-size", "5B"]
    res: dict[str, list[tuple[float, float, float]]] = {"rainmerge": [], "mergekit": []}
    for r in range(a.rounds):
        for name, cmd in (("rainmerge", ours), ("mergekit", theirs)):
            shutil.rmtree(work / ("out-" + name), ignore_errors=True)
            res[name].append(measure(cmd, env))
            w, m, c = res[name][-1]
            print(f"round {r + 1} {name:<10} {w:7.2f} s  CPU {c:7.2f} s  peak RSS {m:.2f} GiB", flush=True)
    med = {n: tuple(statistics.median(x[j] for x in v) for j in range(3)) for n, v in res.items()}
    per_round = [ours[0] / theirs[0] for ours, theirs in zip(res["rainmerge"], res["mergekit"])]
    per_round_cpu = [ours[2] / theirs[2] for ours, theirs in zip(res["rainmerge"], res["mergekit"])]
    model_gb = sum(f.stat().st_size for f in (work / "reasoning").glob("*.safetensors")) / 2**30
    print(f"\n{a.method}, shape {a.shape} (one model {model_gb:.2f} GiB on disk), median of {a.rounds} rounds:")
    for n, (t, m, c) in med.items():
        print(f"  {n:<10} {t:7.2f} s   CPU {c:7.2f} s   peak RSS {m:.2f} GiB")
    print(f"  ratio rainmerge/mergekit: wall {med['rainmerge'][0] / med['mergekit'][0]:.2f}, "
          f"CPU {med['rainmerge'][2] / med['mergekit'][2]:.2f}, peak RSS {med['rainmerge'][1] / med['mergekit'][1]:.2f}")
    print(f"  per-round wall ratios {[round(x, 2) for x in per_round]}, CPU {[round(x, 2) for x in per_round_cpu]}")


if __name__ == "__main__":
    main()
