"""Time and memory per stage of a RAIN merge (and task arithmetic) on a random trio of a real shape.

    python benchmarks/bench_merge.py --shape qwen2.5-0.5b --layers 4 --device cpu
    python benchmarks/bench_merge.py --shape qwen2.5-7b --device cuda        # on one GPU

Generates the trio (bf16, sharded safetensors, tokenizer with think tokens) and calibration files of
realistic length under --work once, then runs each stage through the same API the CLI uses.
Prints wall time, forward tokens/s, peak host RSS and peak GPU memory per stage; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from rainmerge.config import load_config  # noqa: E402
from rainmerge.synthetic import SHAPES, write_calibration_of_length, write_random_trio  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Peak:
    """Samples RSS every 20 ms; `stage()` resets the running maximum (host and GPU)."""

    def __init__(self):
        self.max, self._stop = 0, False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop:
            self.max = max(self.max, rss_bytes())
            time.sleep(0.02)

    def stage(self):
        self.start = self.max = rss_bytes()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()


def gb(x: float) -> float:
    return round(x / 2**30, 3)


def warm_model_code(config) -> None:
    """Import the architecture's modeling code (a meta-device model of `config`, a model folder or a
    transformers config: no weights) before the RSS baseline, so the per-stage ratios count weights and
    work, not ~0.15 GB of Python modules."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(config, (str, Path)):
        config = AutoConfig.from_pretrained(config)
    with torch.device("meta"):
        AutoModelForCausalLM.from_config(config)


def model_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.glob("*.safetensors"))


def compare(a_path: str, b_path: str) -> None:
    """Per-stage cost normalised by layers x samples for two runs, and their ratio (~1 when linear)."""
    runs = [json.loads(Path(p).read_text()) for p in (a_path, b_path)]
    print(f"{'stage':<18}" + "".join(f"{Path(p).stem + ' s/(L*S)':>26}" for p in (a_path, b_path)) + f"{'ratio':>8}")
    for stage, samples_key in (("rain/stage1", "reasoning_samples"), ("rain/stage2", "instruction_samples")):
        per = []
        for r in runs:
            layers = r.get("layers") or 1
            per.append(r["results"][stage]["seconds"] / (layers * r["args"][samples_key]))
        print(f"{stage:<18}" + "".join(f"{x:>26.5f}" for x in per) + f"{per[1] / per[0]:>8.2f}")


def stage3_rounds(a, work: Path, r_cal: Path, i_cal: Path, ctx, rain_parts: dict) -> dict:
    """Stage 3 alone, alternating task arithmetic and RAIN in each round (same process, same inputs)."""
    from statistics import median

    from rainmerge.merge import write_merged_model
    from rainmerge.methods import build_method
    from rainmerge.provenance import provenance

    # the same bases held in float64 (stage1.solve_dtype: float64): timing of the float64 path only
    parts64 = {**rain_parts, "bases": {layer: {k: b.to(dtype=torch.float64) for k, b in layer_bases.items()}
                                       for layer, layer_bases in rain_parts["bases"].items()}}
    times: dict[str, list[float]] = {"task_arithmetic": [], "rain": [], "rain_float64": []}
    for rnd in range(a.stage3_rounds):
        order = list(times) if rnd % 2 == 0 else list(reversed(times))
        for label in order:
            method = "rain" if label.startswith("rain") else label
            out = work / f"out3-{method}"
            cfg = load_config(None, {"base": str(work / "base"), "instruct": str(work / "instruct"),
                                     "reasoning": str(work / "reasoning"), "reasoning_calibration": str(r_cal),
                                     "instruction_calibration": str(i_cal), "output": str(out), "overwrite": True,
                                     "method": method, "device": a.device, "hash_inputs": False})
            parts = {"rain": rain_parts, "rain_float64": parts64}.get(label, {})
            t0 = time.time()
            write_merged_model(ctx.reasoning, ctx.base, ctx.instruct, ctx.sites, build_method(cfg, **parts), out,
                               provenance(cfg, ctx, {}, {}, {}), overwrite=True, max_shard_size=cfg.max_shard_size,
                               progress=False)
            times[label].append(round(time.time() - t0, 3))
    row = {"rounds": a.stage3_rounds, **{f"{k}_s": v for k, v in times.items()},
           "rain_over_task_arithmetic": round(median(times["rain"]) / median(times["task_arithmetic"]), 3),
           "rain_float64_over_task_arithmetic": round(median(times["rain_float64"]) / median(times["task_arithmetic"]), 3),
           "rain_float32_over_float64": round(median(times["rain"]) / median(times["rain_float64"]), 3)}
    print(f"  stage 3 alone, {a.stage3_rounds} alternating rounds: {json.dumps(row)}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2.5-0.5b", choices=list(SHAPES))
    ap.add_argument("--layers", type=int, default=None, help="truncate to N layers (default: all)")
    ap.add_argument("--work", default="bench-work")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--reasoning-samples", type=int, default=150)
    ap.add_argument("--instruction-samples", type=int, default=365)
    ap.add_argument("--words", type=int, default=500, help="approx words per reasoning trace")
    ap.add_argument("--methods", default="rain,task_arithmetic")
    ap.add_argument("--json", default=None)
    ap.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                    help="print per-(layer x sample) stage costs of two earlier --json runs and their ratio")
    ap.add_argument("--stage3-rounds", type=int, default=0,
                    help="then N alternating rounds of the stage-3 merge alone, task arithmetic vs RAIN (float32 and float64 bases, "
                         "coefficients of the run above): median times and their ratio (target <= 1.5)")
    ap.add_argument("--link-base", action="store_true",
                    help="hard-link base weights to the LRM's (same work; 1/3 less disk, e.g. for 7B on 64 GB)")
    a = ap.parse_args()
    if a.compare:
        return compare(*a.compare)

    from rainmerge import stages
    from rainmerge.context import load_reasoning_model, open_models
    from rainmerge.merge import write_merged_model
    from rainmerge.methods import build_method
    from rainmerge.provenance import provenance

    work = Path(a.work) / f"{a.shape}-L{a.layers or 'all'}"
    if not (work / "reasoning" / "config.json").is_file():
        shutil.rmtree(work, ignore_errors=True)
        t = time.time()
        write_random_trio(work, a.shape, a.layers, link_base=a.link_base)
        print(f"generated trio in {time.time() - t:.1f}s under {work}")
    r_cal, i_cal = write_calibration_of_length(work / "calib", a.reasoning_samples, a.instruction_samples, a.words)
    one_model = model_bytes(work / "reasoning")
    warm_model_code(work / "reasoning")
    baseline = rss_bytes()  # interpreter + torch + transformers + the architecture's model code, no weights
    peak = Peak()
    results: dict[str, dict[str, float]] = {}
    rain_parts: dict = {}

    fwd_model: list[int] = []  # one model in the forward dtype (bytes), set once the trio is opened

    def record(name: str, t0: float, tokens: int = 0):
        dt = time.time() - t0
        row = {"seconds": round(dt, 3), "start_rss_gb": gb(peak.start), "peak_rss_gb": gb(peak.max)}
        if fwd_model:
            row["rss_over_model"] = round((peak.max - baseline) / fwd_model[0], 3)
        if tokens:
            row["tokens_per_s"] = round(tokens / dt, 1)
        if torch.cuda.is_available():
            row["peak_gpu_gb"] = gb(torch.cuda.max_memory_allocated())
        results[name] = row
        print(f"  {name:<28} {json.dumps(row)}", flush=True)

    for method in a.methods.split(","):
        out = work / f"out-{method}"
        cfg = load_config(None, {"base": str(work / "base"), "instruct": str(work / "instruct"),
                                 "reasoning": str(work / "reasoning"), "reasoning_calibration": str(r_cal),
                                 "instruction_calibration": str(i_cal), "output": str(out), "overwrite": True,
                                 "method": method, "device": a.device, "hash_inputs": False})
        print(f"== {method} ({a.shape}, layers={a.layers or 'all'}, device={cfg.device})")
        t_total = time.time()
        peak.stage(); t0 = time.time()
        ctx = open_models(cfg.models_spec(), cfg.runtime())
        if not fwd_model:
            fwd_model.append(sum(torch.Size(ctx.reasoning.shape(n)).numel() for n in ctx.reasoning.names())
                             * ctx.forward_dtype.itemsize)
        cal = stages.encode_calibration(ctx, cfg.calibration_spec()) if method == "rain" else None
        record(f"{method}/prepare", t0)
        parts = {}
        if method == "rain":
            peak.stage(); t0 = time.time()
            model = load_reasoning_model(ctx)
            record("rain/load_lrm", t0)
            peak.stage(); t0 = time.time()
            feats = stages.stage1_features(ctx, model, cal.reasoning, progress=False)
            bases = stages.stage1_projectors(ctx, feats, cfg.stage1, consume=True)
            del feats
            record("rain/stage1", t0, sum(len(s.input_ids) for s in cal.reasoning))
            peak.stage(); t0 = time.time()
            coeffs, _ = stages.stage2_coefficients(ctx, model, bases, cal.instruction, cfg.stage2, cfg.strength,
                                                   progress=False)
            record("rain/stage2", t0, sum(len(s.input_ids) for s in cal.instruction))
            del model
            parts = dict(arch=ctx.arch, bases=bases, coeffs=coeffs, device=ctx.device)
            rain_parts = parts
        peak.stage(); t0 = time.time()
        write_merged_model(ctx.reasoning, ctx.base, ctx.instruct, ctx.sites, build_method(cfg, **parts), out,
                           provenance(cfg, ctx, {}, cal.record if cal else {}, {}), overwrite=True,
                           max_shard_size=cfg.max_shard_size, progress=False)
        record(f"{method}/merge", t0)
        results[f"{method}/total"] = {"seconds": round(time.time() - t_total, 3)}
        print(f"  {method + '/total':<28} {results[method + '/total']}")
    if a.stage3_rounds and rain_parts:
        results["stage3_rounds"] = stage3_rounds(a, work, r_cal, i_cal, ctx, rain_parts)
    top = max(r.get("peak_rss_gb", 0) for r in results.values() if isinstance(r, dict))
    print(f"one model on disk: {gb(one_model)} GB, in the forward dtype: {gb(fwd_model[0])} GB; RSS after imports "
          f"(model code included): {gb(baseline)} GB; rss_over_model = (stage peak RSS - imports) / one model in "
          f"the forward dtype (target <= 1.3); over all stages: {(top - gb(baseline)) / gb(fwd_model[0]):.2f}")
    if a.json:
        layers = a.layers or SHAPES[a.shape]["num_hidden_layers"]
        Path(a.json).write_text(json.dumps({"args": vars(a), "layers": layers, "one_model_gb": gb(one_model),
                                            "forward_dtype_model_gb": gb(fwd_model[0]),
                                            "rss_after_imports_gb": gb(baseline), "results": results},
                                           indent=2))


if __name__ == "__main__":
    main()
