"""One prepared GPU benchmark: RAIN on the 1.5B and then the 7B shape, paper sample counts, one JSON.

    timeout 600 .venv/bin/python benchmarks/bench_gpu.py --json bench-gpu.json

Nothing to download: each random trio is generated ON THE GPU (torch.randn on cuda, written as bf16
sharded safetensors; the tokenizer from rainmerge.synthetic), the calibration files by
rainmerge.synthetic.write_calibration_of_length (150 reasoning + 365 instruction samples, ~1-2k tokens
each by default). Every stage runs through the library API the CLI uses (rainmerge.stages), and the
JSON is rewritten after each stage, so a run stopped by --time-limit (default 540 s, checked between
stages; a stage that would start past it is recorded as skipped) or by `timeout` keeps what it
measured: per stage wall seconds, forward tokens/s, peak GPU memory, peak host RSS; the GPU name.

The 7B trio hard-links the base to the ITM (tau = 0: identical reads and work, 30 GB of disk instead
of 45 GB); the 1.5B trio is deleted before the 7B one is written (64 GB disks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_merge import Peak, gb, model_bytes, rss_bytes, warm_model_code  # noqa: E402

from rainmerge.synthetic import write_random_trio  # noqa: E402


class Run:
    """Results of all shapes; the JSON is rewritten after every stage."""

    def __init__(self, path: Path, deadline: float, args: dict[str, Any]):
        self.path, self.deadline = path, deadline
        self.cuda = args["device"] == "cuda"
        self.data: dict[str, Any] = {"args": args, "gpu": torch.cuda.get_device_name(0) if self.cuda else "none (cpu)",
                                     "torch": torch.__version__, "cuda": torch.version.cuda, "no_time_left": [],
                                     "shapes": {}}
        self.baseline = 0  # host RSS after imports (model code included), set by main
        self.one_model = 0  # bytes of the current shape's LRM as stored (bf16)
        self.peak = Peak()
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2))

    def left(self) -> float:
        return self.deadline - time.time()

    def stage(self, shape: str, name: str, fn, tokens=None) -> Any:
        if self.left() <= 0:
            self.data["no_time_left"].append(f"{shape}/{name}")
            self.save()
            raise TimeoutError(name)
        self.peak.stage()
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.time()
        value = fn()
        if self.cuda:
            torch.cuda.synchronize()
        dt = time.time() - t0
        row = {"seconds": round(dt, 3), "peak_rss_gb": gb(self.peak.max)}
        if self.one_model:  # target <= 1.3: host RSS above imports over one bf16 model
            row["rss_over_model"] = round((self.peak.max - self.baseline) / self.one_model, 3)
        if self.cuda:
            row["peak_gpu_gb"] = gb(torch.cuda.max_memory_allocated())
        n = tokens(value) if tokens else 0
        if n:
            row.update(tokens=n, tokens_per_s=round(n / dt, 1))
        self.data["shapes"].setdefault(shape, {})[name] = row
        self.save()
        print(f"  {shape} {name:<22} {json.dumps(row)}", flush=True)
        return value


def bench_shape(run: Run, shape: str, a: argparse.Namespace) -> None:
    from rainmerge import stages
    from rainmerge.config import load_config
    from rainmerge.context import load_reasoning_model, open_models
    from rainmerge.merge import write_merged_model
    from rainmerge.methods import build_method
    from rainmerge.provenance import provenance
    from rainmerge.synthetic import write_calibration_of_length

    work = Path(a.work) / shape
    shutil.rmtree(Path(a.work), ignore_errors=True)  # one trio on disk at a time
    run.one_model = 0
    trio = run.stage(shape, "generate_trio", lambda: write_random_trio(work, shape, a.layers, link_base="7b" in shape,
                                                                            device=a.device, max_shard_size="5GB"))
    r_cal, i_cal = write_calibration_of_length(work / "calib", a.reasoning_samples, a.instruction_samples, a.words)
    run.one_model = model_bytes(trio["reasoning"])
    run.data["shapes"][shape]["one_model_gb"] = gb(run.one_model)
    cfg = load_config(None, {"base": str(trio["base"]), "instruct": str(trio["instruct"]),
                             "reasoning": str(trio["reasoning"]), "reasoning_calibration": str(r_cal),
                             "instruction_calibration": str(i_cal), "output": str(work / "out"),
                             "overwrite": True, "method": "rain", "device": a.device, "hash_inputs": False})
    ctx = open_models(cfg.models_spec(), cfg.runtime())
    cal = run.stage(shape, "encode_calibration", lambda: stages.encode_calibration(ctx, cfg.calibration_spec()))
    run.data["shapes"][shape]["samples"] = {"reasoning": len(cal.reasoning), "instruction": len(cal.instruction)}
    model = run.stage(shape, "load_lrm", lambda: load_reasoning_model(ctx))
    feats = run.stage(shape, "stage1_features", lambda: stages.stage1_features(ctx, model, cal.reasoning, False),
                      lambda _: sum(len(s.input_ids) for s in cal.reasoning))
    bases = run.stage(shape, "stage1_solve", lambda: stages.stage1_projectors(ctx, feats, cfg.stage1))
    del feats
    coeffs, _ = run.stage(shape, "stage2", lambda: stages.stage2_coefficients(
        ctx, model, bases, cal.instruction, cfg.stage2, cfg.strength, False),
        lambda _: sum(len(s.input_ids) for s in cal.instruction) * (2 if cfg.stage2.estimator == "two_pass" else 1))
    del model
    if run.cuda:
        torch.cuda.empty_cache()
    method = build_method(cfg, arch=ctx.arch, bases=bases, coeffs=coeffs, device=a.device)
    run.stage(shape, "stage3_merge", lambda: write_merged_model(
        ctx.reasoning, ctx.base, ctx.instruct, ctx.sites, method, work / "out",
        provenance(cfg, ctx, {}, cal.record, {}), overwrite=True, max_shard_size=cfg.max_shard_size,
        progress=False, inputs_scanned=True))
    ctx.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="qwen2.5-1.5b,qwen2.5-7b")
    ap.add_argument("--work", default="bench-work/gpu")
    ap.add_argument("--reasoning-samples", type=int, default=150)
    ap.add_argument("--instruction-samples", type=int, default=365)
    ap.add_argument("--words", type=int, default=900, help="approx words per trace (+-50%%): ~1-2k tokens")
    ap.add_argument("--time-limit", type=float, default=540.0, help="seconds for the whole run")
    ap.add_argument("--json", default="bench-gpu.json")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                    help="cpu: a smoke run of this script (with --layers and few samples), no figures to keep")
    ap.add_argument("--layers", type=int, default=None, help="truncate each shape to N layers (smoke runs)")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (for CPU figures use bench_merge.py --device cpu)")
    start = time.time()
    run = Run(Path(a.json), start + a.time_limit, vars(a))
    from rainmerge.synthetic import SHAPES, _config

    warm_model_code(_config(SHAPES[a.shapes.split(",")[0]], 1))  # no model folder exists yet
    run.baseline = rss_bytes()
    run.data["rss_after_imports_gb"] = gb(run.baseline)
    for shape in a.shapes.split(","):
        try:
            bench_shape(run, shape, a)
        except TimeoutError as exc:
            print(f"time limit reached before {shape}/{exc}; stopping", flush=True)
            break
        finally:
            if run.cuda:
                torch.cuda.empty_cache()
    run.data["total_seconds"] = round(time.time() - start, 1)
    run.save()
    print(f"wrote {a.json} ({run.data['gpu']}, {run.data['total_seconds']} s)")


if __name__ == "__main__":
    main()
