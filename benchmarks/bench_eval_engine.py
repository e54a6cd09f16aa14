"""The in-process continuous-batching engine vs today's padded `generate` on the toy LRM (greedy).

    python benchmarks/bench_eval_engine.py --rounds 3 --prompts 100

Each run is a fresh child (alternating padded / inprocess / load-only, so drift hits all alike): wall
and CPU seconds of generation alone (model loaded first), peak RSS of the whole child from os.wait4,
and the texts, compared one by one across engines. Prompts: the toy's eval problems and instructions,
half each, rendered with the LRM's chat template; budget and batch as configs/toy.yaml.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
from pathlib import Path
from rainmerge.eval.engines import EngineConfig, Request, SamplingParams, build_engine
from rainmerge.eval.engines.hf import load
root, mode, n, budget, batch, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
model, tok = load(root + "/assets/toy/reasoning", "cpu")
rows = []
for name in ("eval_problems.jsonl", "eval_instructions.jsonl"):
    rows += [json.loads(l) for l in Path(root, "assets/toy/data", name).read_text().splitlines()[: n // 2]]
render = lambda p: tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
reqs = [Request(str(r["key"]), render(r["prompt"]), 0, SamplingParams(budget)) for r in rows]
res = {"wall": 0.0, "cpu": 0.0, "texts": {}, "tokens": 0}
if mode != "load":
    eng = build_engine(EngineConfig(kind=mode, max_concurrency=batch), "toy", model=model, tokenizer=tok)
    w, c = time.perf_counter(), time.process_time()
    done = list(eng.generate(reqs))
    res["wall"], res["cpu"] = time.perf_counter() - w, time.process_time() - c
    res["texts"] = {c.id: c.text for c in done}
    res["tokens"] = sum(c.output_tokens for c in done)
Path(out).write_text(json.dumps(res))
"""


def child(mode: str, n: int, budget: int, batch: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "res.json"
        p = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), mode, str(n), str(budget), str(batch), str(out)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(p.stderr.read()[-3000:])
        res = json.loads(out.read_text())
    res["rss_mib"] = usage.ru_maxrss / 1024
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--budget", type=int, default=160, help="max_new_tokens (configs/toy.yaml: 160)")
    ap.add_argument("--batch", type=int, default=50, help="padded batch / in-process concurrency (toy.yaml: 50)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per child (1: CPU time is not inflated "
                    "by idle OpenMP workers spinning on a busy machine)")
    a = ap.parse_args()
    modes = ("padded", "inprocess", "load")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(a.rounds):
        for m in (modes if r % 2 == 0 else modes[::-1][1:] + modes[:1]):  # alternate who goes first
            runs[m].append(child(m, a.prompts, a.budget, a.batch, a.threads))
            x = runs[m][-1]
            print(f"round {r + 1} {m:9s} wall {x['wall']:6.2f} s  cpu {x['cpu']:6.2f} s  peak RSS {x['rss_mib']:7.1f} MiB",
                  flush=True)
    ref = runs["padded"][0]["texts"]
    same = [sum(run["texts"].get(k) == v for k, v in ref.items()) for run in runs["inprocess"] + runs["padded"][1:]]
    med = {m: {k: statistics.median(x[k] for x in runs[m]) for k in ("wall", "cpu", "rss_mib")} for m in modes}
    base = med["load"]["rss_mib"]
    print(f"\n{a.prompts} prompts x budget {a.budget}, batch/concurrency {a.batch}, {a.threads} thread(s), {a.rounds} "
          f"rounds (medians); load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs:")
    print(f"  identical greedy outputs: {min(same)}/{len(ref)} (worst run vs the first padded run)")
    print(f"  generated tokens: padded {runs['padded'][0]['tokens']}, inprocess {runs['inprocess'][0]['tokens']}")
    for m in ("padded", "inprocess"):
        print(f"  {m:9s} wall {med[m]['wall']:6.2f} s  cpu {med[m]['cpu']:6.2f} s  peak RSS {med[m]['rss_mib']:7.1f} MiB "
              f"(+{med[m]['rss_mib'] - base:.1f} over load-only {base:.1f})")
    print(f"  ratios padded/inprocess: wall {med['padded']['wall'] / med['inprocess']['wall']:.2f}x, "
          f"cpu {med['padded']['cpu'] / med['inprocess']['cpu']:.2f}x; "
          f"peak RSS inprocess/padded {med['inprocess']['rss_mib'] / med['padded']['rss_mib']:.2f}")


if __name__ == "__main__":
    main()
