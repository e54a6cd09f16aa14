"""Stages 1-2 on the whole model vs layer by layer (rainmerge/sequential.py): time and peak memory.

    python benchmarks/bench_layerwise.py half              # 0.5B-shaped random trio, CPU, both paths, alternating
    python benchmarks/bench_layerwise.py 70b --layers 2    # 70B shape truncated to 2 of its 80 layers, sequential
    python benchmarks/bench_layerwise.py half --device cuda --shape qwen2.5-7b   # on a GPU (benchmarks/gpu_layerwise.sh)

Every measured run is its own child process (clean peak RSS: VmHWM, minus the RSS after imports), running
Stage 1 (features + projectors) and Stage 2 (probe merge + attention scores + alpha) on one path; Stage 3
is the same on both paths and is not run. `half` alternates the paths over --rounds rounds and prints the
median time and peak of each and their ratio (sequential / whole).

`70b` runs the sequential path with the first 1..--layers decoder layers merged (the forward stops after the
last merged layer, so layer count L costs what a model of L layers would) and extrapolates to 80 layers:

    peak(L) = peak(1) + (L - 1) * slope,   slope = (peak(L_max) - peak(1)) / (L_max - 1)

-- the slope is what grows with depth (every merged layer's projector bases stay on the host for Stage 3),
while one layer's weights, one layer's features and the hidden states are paid once. The whole path's peak
at 80 layers is its own formula (the LRM's bytes + activations), printed from the plan's estimate.
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
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE_70B = dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                 num_attention_heads=64, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
                 rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072)


def status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def child(a: argparse.Namespace) -> None:
    """One measured run: stages 1-2 on a.path; prints one JSON line."""
    import torch

    from rainmerge import stages
    from rainmerge.config import load_config
    from rainmerge.context import open_models

    cfg = load_config(None, json.loads(a.cfg))
    ctx = open_models(cfg.models_spec(), cfg.runtime())
    cal = stages.encode_calibration(ctx, cfg.calibration_spec())
    from benchmarks.bench_merge import warm_model_code

    warm_model_code(ctx.reasoning.root)
    base_rss = status("VmRSS")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    timings: dict[str, float] = {}
    plan: dict = {"stages_path": {}}
    if a.path == "whole":
        _, _, detail = stages._stages12_whole(ctx, cfg, cal, timings, progress=False)
    else:
        _, _, detail = stages._stages12_sequential(ctx, cfg, cal, timings, plan, progress=False)
    out = {"path": a.path, "seconds": round(time.time() - t0, 2), "peak_rss": status("VmHWM"), "base_rss": base_rss,
           "layers": len(ctx.layers), "alpha": detail["alpha"] if detail else None,
           "hidden_states": plan["stages_path"].get("hidden_states"),
           "gpu_peak": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0}
    print("RESULT " + json.dumps(out), flush=True)


def measure(cfg: dict, path: str, timeout: int) -> dict:
    cmd = [sys.executable, __file__, "child", "--path", path, "--cfg", json.dumps(cfg)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode or not line:
        raise SystemExit(f"{path} run failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    r = json.loads(line[-1][7:])
    r["net_peak"] = r["peak_rss"] - r["base_rss"]
    return r


def gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB"


def trio(work: Path, shape, layers: int | None, samples: int, words: int, link_base: bool,
         device: str = "cpu") -> dict:
    from rainmerge.synthetic import write_calibration_of_length, write_random_trio

    name = shape if isinstance(shape, str) else f"70b-v{shape['vocab_size']}"
    d = work / f"{name}-L{layers or 'all'}"
    if not (d / "base" / "config.json").is_file():
        t0 = time.time()
        write_random_trio(d, shape, layers=layers, link_base=link_base, device=device)
        print(f"generated the {name} trio in {time.time() - t0:.0f} s under {d}", flush=True)
    r, i = write_calibration_of_length(d / "cal", samples, samples, words)
    return {"base": str(d / "base"), "instruct": str(d / "instruct"), "reasoning": str(d / "reasoning"),
            "reasoning_calibration": str(r), "instruction_calibration": str(i), "output": str(d / "out"),
            "hash_inputs": False, "stage1.positions": "window", "stage1.radius": 5, "stage2.max_seq_len": 4096,
            "stage1.max_seq_len": 4096}


def half(a: argparse.Namespace) -> None:
    cfg = trio(Path(a.work), a.shape, a.truncate, a.samples, a.words, a.link_base, a.gen_device)
    cfg |= {"device": a.device, "hidden_states": a.hidden_states}
    runs: dict[str, list[dict]] = {"whole": [], "sequential": []}
    for rnd in range(a.rounds):
        for path in (("whole", "sequential") if rnd % 2 == 0 else ("sequential", "whole")):
            r = measure(cfg, path, a.timeout)
            runs[path].append(r)
            print(f"round {rnd + 1} {path:10s} {r['seconds']:7.1f} s  peak RSS {gb(r['peak_rss'])} "
                  f"(net {gb(r['net_peak'])})  GPU {gb(r['gpu_peak'])}  hidden states {r['hidden_states']}", flush=True)
    med = {p: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_rss", "net_peak", "gpu_peak")}
           for p, rs in runs.items()}
    w, s = med["whole"], med["sequential"]
    print(f"\n{a.shape}{f' ({a.truncate} layers)' if a.truncate else ''} on {a.device}, {a.samples}+{a.samples} "
          f"samples of ~{a.words} words, median of {a.rounds}:")
    print(f"  whole       {w['seconds']:7.1f} s   peak RSS {gb(w['peak_rss'])} (net {gb(w['net_peak'])})   GPU {gb(w['gpu_peak'])}")
    print(f"  sequential  {s['seconds']:7.1f} s   peak RSS {gb(s['peak_rss'])} (net {gb(s['net_peak'])})   GPU {gb(s['gpu_peak'])}")
    ratio = {"time": s["seconds"] / w["seconds"], "net_peak_rss": s["net_peak"] / max(w["net_peak"], 1)}
    if w["gpu_peak"]:
        ratio["gpu_peak"] = s["gpu_peak"] / w["gpu_peak"]
    print("  ratio sequential / whole: " + ", ".join(f"{k} {v:.2f}" for k, v in ratio.items()))
    import torch

    alphas = [torch.tensor(r["alpha"]) for rs in runs.values() for r in rs]
    diff = max(float((x - alphas[0]).abs().max()) for x in alphas)
    print(f"  alpha over {alphas[0].numel()} heads: max |difference| between any two runs {diff:.2e} "
          f"(std over heads {float(alphas[0].std()):.3f})")
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": runs, "median": med, "ratio": ratio, "args": vars(a)}, indent=2))


def seventy(a: argparse.Namespace) -> None:
    cfg = trio(Path(a.work), SHAPE_70B | {"vocab_size": a.vocab}, a.layers, a.samples, a.words, True, a.gen_device)
    cfg |= {"device": a.device, "forward_dtype": a.forward_dtype, "hidden_states": a.hidden_states}
    rows = []
    for n in sorted({1, a.layers}):
        r = measure(cfg | {"layers": list(range(n))}, "sequential", a.timeout)
        rows.append(r)
        print(f"70B shape, {n} layer(s) merged: {r['seconds']:.1f} s, peak RSS {gb(r['peak_rss'])} "
              f"(net {gb(r['net_peak'])}), GPU {gb(r['gpu_peak'])}", flush=True)
    p1, pl = rows[0]["net_peak"], rows[-1]["net_peak"]
    slope = (pl - p1) / max(a.layers - 1, 1)
    full = p1 + 79 * slope
    d, f, kv = SHAPE_70B["hidden_size"], SHAPE_70B["intermediate_size"], SHAPE_70B["num_key_value_heads"] * 128
    params = 2 * d * d + 2 * kv * d + 3 * d * f + 2 * d  # q, o, k, v, gate/up/down, two norms
    layer_bytes = params * (2 if a.forward_dtype == "bfloat16" else 4)
    print(f"\nper layer: slope {gb(slope)} (peak({a.layers}) - peak(1)) / {a.layers - 1}; one decoder layer's "
          f"weights {gb(layer_bytes)} ({a.forward_dtype})")
    print(f"extrapolated to 80 layers: net peak(80) = peak(1) + 79 x slope = {gb(p1)} + 79 x {gb(slope)} = {gb(full)}")
    print(f"the whole path holds all 80 layers: >= 80 x {gb(layer_bytes)} = {gb(80 * layer_bytes)} plus the "
          "embeddings and activations (plan: `benchmarks/plan_shipped.py configs/llama3-70b.yaml`)")
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": rows, "slope": slope, "extrapolated_80": full,
                                            "args": vars(a)}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("half", "70b"):
        p = sub.add_parser(name)
        p.add_argument("--work", default="bench-work")
        p.add_argument("--device", default="cpu")
        p.add_argument("--samples", type=int, default=8, help="reasoning and instruction samples each")
        p.add_argument("--words", type=int, default=300)
        p.add_argument("--hidden-states", default="auto", choices=["auto", "device", "host", "disk"])
        p.add_argument("--timeout", type=int, default=900)
        p.add_argument("--json")
        p.add_argument("--gen-device", default="cpu", help="where the random trio is drawn (cuda: seconds)")
    h = sub.choices["half"]
    h.add_argument("--shape", default="qwen2.5-0.5b")
    h.add_argument("--truncate", type=int, default=None, help="keep only the first N layers of the shape")
    h.add_argument("--rounds", type=int, default=2)
    h.add_argument("--link-base", action="store_true", help="hard-link the base to the LRM (1/3 less disk)")
    s = sub.choices["70b"]
    s.add_argument("--layers", type=int, default=2, help="decoder layers in the truncated trio (>= 2)")
    s.add_argument("--forward-dtype", default="bfloat16")
    s.add_argument("--vocab", type=int, default=128256, help="vocabulary rows (a smaller one keeps a CPU run's "
                   "embedding small; it is read once, before the first layer, and is not per-layer memory)")
    c = sub.add_parser("child")
    c.add_argument("--path", required=True)
    c.add_argument("--cfg", required=True)
    a = ap.parse_args()
    {"half": half, "70b": seventy, "child": child}[a.cmd](a)


if __name__ == "__main__":
    main()
