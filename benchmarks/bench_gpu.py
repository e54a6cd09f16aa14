"""One prepared GPU benchmark: RAIN on the 1.5B and then the 7B shape, paper sample counts, one JSON.

    timeout 600 .venv/bin/python benchmarks/bench_gpu.py --json bench-gpu.json

Nothing to download: each random trio is generated ON THE GPU (torch.randn on cuda, written as bf16
sharded safetensors; the tokenizer from rainmerge.synthetic), the calibration files by
rainmerge.synthetic.write_calibration_of_length (150 reasoning + 365 instruction samples, ~1-2k tokens
each by default). Every stage runs through the library API the CLI uses (rainmerge.stages), and the
JSON is rewritten after each stage, so a run stopped by --time-limit (default 540 s, checked between
stages; a stage that would start past it is recorded as skipped) or by `timeout` keeps what it
measured: per stage wall seconds, forward tokens/s, peak GPU memory, peak host RSS; the GPU name.

The 7B trio hard-links the base to the LRM (identical reads and work, tau = ITM - LRM still non-zero;
30 GB of disk instead of 45 GB); the 1.5B trio is deleted before the 7B one is written (64 GB disks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
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


def ceilings(run: Run) -> None:
    """The two rates a stage's time is read against (METHOD.md): device copy bandwidth, bf16 GEMM rate."""
    if not run.cuda:
        return
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        y.copy_(x), a @ a
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    ev[0].record()
    for _ in range(10):
        y.copy_(x)
    ev[1].record()
    for _ in range(10):
        a @ a
    ev[2].record()
    torch.cuda.synchronize()
    run.data["ceilings"] = {"copy_tb_s": round(2 * 2**30 * 10 / (ev[0].elapsed_time(ev[1]) / 1e3) / 1e12, 2),
                            "bf16_gemm_tflop_s": round(2 * 8192**3 * 10 / (ev[1].elapsed_time(ev[2]) / 1e3) / 1e12, 1)}
    del x, y, a
    torch.cuda.empty_cache()
    print(f"  ceilings {run.data['ceilings']}", flush=True)


def unique_weight_bytes(ctx) -> list[int]:
    """Bytes of the distinct weight files (a hard-linked base is read and hashed once)."""
    seen = {}
    for src in ctx.sources().values():
        for f in src.files:
            st = os.stat(f)
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return list(seen.values())


def hash_inputs(ctx) -> dict[str, Any]:
    from rainmerge.io import lazy

    lazy._DIGESTS.clear()  # a fresh process's cost, not a memo of an earlier stage
    return {r: s.describe(True) for r, s in ctx.sources().items()}


def shipped_sections(shape: str) -> dict[str, Any]:
    """The shipped config's stage1/stage2 sections for this shape (configs/<shape>.yaml), so the bench
    measures what a user runs: e.g. the 1.5B config protects radius-2 windows (900 rows, exact on every
    module); the defaults' radius 5 (1,800 rows) would cap it (docs/deviations.md row 4)."""
    import yaml

    path = Path(__file__).resolve().parents[1] / "configs" / f"{shape}.yaml"
    if not path.is_file():
        return {}
    tree = yaml.safe_load(path.read_text()) or {}
    return {k: tree[k] for k in ("stage1", "stage2") if k in tree}


def bench_shape(run: Run, shape: str, a: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Every step `rainmerge merge` takes for RAIN, in its order (stages._run_merge_locked), one row each.
    Returns layer 0's protected features (for the factorization comparison)."""
    from rainmerge import stages
    from rainmerge.config import load_config
    from rainmerge.context import load_reasoning_model, open_models
    from rainmerge.merge import write_merged_model
    from rainmerge.methods import build_method
    from rainmerge.provenance import provenance
    from rainmerge.preflight.merge_start import calibration_paths, preflight
    from rainmerge.synthetic import write_calibration_of_length

    work = Path(a.work) / shape
    shutil.rmtree(Path(a.work), ignore_errors=True)  # one trio on disk at a time
    run.one_model = 0
    trio = run.stage(shape, "generate_trio", lambda: write_random_trio(work, shape, a.layers, link_base="7b" in shape,
                                                                            device=a.device, max_shard_size="5GB"))
    r_cal, i_cal = write_calibration_of_length(work / "calib", a.reasoning_samples, a.instruction_samples, a.words)
    run.one_model = model_bytes(trio["reasoning"])
    run.data["shapes"][shape]["one_model_gb"] = gb(run.one_model)
    out = work / "out"
    shipped = shipped_sections(shape)
    run.data["shapes"][shape]["config_sections"] = shipped
    cfg = load_config(None, {"base": str(trio["base"]), "instruct": str(trio["instruct"]),
                             "reasoning": str(trio["reasoning"]), "reasoning_calibration": str(r_cal),
                             "instruction_calibration": str(i_cal), "output": str(out),
                             "overwrite": True, "method": "rain", "device": a.device, "hash_inputs": True,
                             **shipped})
    run.stage(shape, "plan", lambda: stages.check_plan(cfg))
    ctx = run.stage(shape, "open_models", lambda: open_models(cfg.models_spec(), cfg.runtime()))
    run.stage(shape, "preflight_scan", lambda: preflight(ctx.sources(), list(ctx.sites), out,
                                                         protected=calibration_paths(cfg), scan_finite=True))
    inputs = run.stage(shape, "hash_inputs", lambda: hash_inputs(ctx))
    run.data["shapes"][shape]["hash_inputs"]["unique_gb"] = gb(sum(unique_weight_bytes(ctx)))
    cal = run.stage(shape, "encode_calibration", lambda: stages.encode_calibration(ctx, cfg.calibration_spec()))
    run.data["shapes"][shape]["samples"] = {"reasoning": len(cal.reasoning), "instruction": len(cal.instruction)}
    model = run.stage(shape, "load_lrm", lambda: load_reasoning_model(ctx))
    feats = run.stage(shape, "stage1_features", lambda: stages.stage1_features(ctx, model, cal.reasoning, False),
                      lambda _: sum(len(s.input_ids) for s in cal.reasoning))
    layer0 = {g: x.clone() for g, x in feats[ctx.layers[0]].items()}
    run.data["shapes"][shape]["protected_rows"] = int(next(iter(layer0.values())).shape[0])
    bases = run.stage(shape, "stage1_solve", lambda: stages.stage1_projectors(ctx, feats, cfg.stage1, consume=True))
    del feats
    coeffs, _ = run.stage(shape, "stage2", lambda: stages.stage2_coefficients(
        ctx, model, bases, cal.instruction, cfg.stage2, cfg.strength, False),
        lambda _: sum(len(s.input_ids) for s in cal.instruction) * (2 if cfg.stage2.estimator == "two_pass" else 1))
    del model
    if run.cuda:
        torch.cuda.empty_cache()
    method = build_method(cfg, arch=ctx.arch, bases=bases, coeffs=coeffs, device=a.device)
    run.stage(shape, "stage3_merge", lambda: write_merged_model(
        ctx.reasoning, ctx.base, ctx.instruct, ctx.sites, method, out,
        provenance(cfg, ctx, inputs, cal.record, {}), overwrite=True, max_shard_size=cfg.max_shard_size,
        progress=False, inputs_scanned=True))
    ctx.close()
    rows = run.data["shapes"][shape]
    rows["end_to_end_s"] = round(sum(r["seconds"] for k, r in rows.items() if isinstance(r, dict) and "seconds" in r
                                     and k != "generate_trio"), 1)
    rows["module_summary"] = method.summary()
    run.save()
    return layer0


def compare_factorizations(run: Run, shape: str, feats: dict[str, torch.Tensor], rounds: int) -> None:
    """svd vs gram on the device, on real protected features of layer 0, alternating rounds: seconds and
    how far apart the two protect (identity residual of a random delta under each, projector gap)."""
    from rainmerge.factorize import factorize
    from rainmerge.projection import project_delta, protected_basis

    dev = "cuda" if run.cuda else "cpu"
    res: dict[str, Any] = {}
    for g in ("attn_in", "down_in"):
        if g not in feats or run.left() <= 0:
            continue
        X = feats[g].to(dev, torch.float64)[None]
        times: dict[str, list[float]] = {"svd": [], "gram": []}
        for r in range(rounds):
            for meth in (("svd", "gram") if r % 2 == 0 else ("gram", "svd")):
                if run.cuda:
                    torch.cuda.synchronize()
                t0 = time.time()
                f = factorize(X, meth)
                if run.cuda:
                    torch.cuda.synchronize()
                times[meth].append(round(time.time() - t0, 3))
                del f
        tau = torch.randn(512, X.shape[-1], device=dev, dtype=torch.float64,
                          generator=torch.Generator(device=dev).manual_seed(0))
        row: dict[str, Any] = {"shape": list(X.shape[1:]), **{f"{k}_s": v for k, v in times.items()}}
        for meth in ("svd", "gram"):
            b = protected_basis(X[0], dtype="float64", factorization=meth)
            row[f"{meth}_rank"] = b.rank
            row[f"{meth}_residual"] = float(torch.linalg.norm(project_delta(tau, b) @ X[0].T)
                                            / torch.linalg.norm(tau @ X[0].T))
        row["gram_over_svd"] = round(min(times["gram"]) / min(times["svd"]), 3)
        res[g] = row
        print(f"  {shape} factorization {g} {json.dumps(row)}", flush=True)
    run.data["shapes"][shape]["factorization"] = res
    run.save()


TARGETS = {"end_to_end_s": 120.0, "peak_gpu_gb": 20.0, "rss_over_model": 1.3}


def summary(run: Run) -> None:
    """The figures the issue sets targets for, per shape, last in the output."""
    print(f"{'shape':<14}{'end-to-end s':>14}{'max peak GPU GB':>17}{'max rss/model':>15}  slowest stages")
    for shape, rows in run.data["shapes"].items():
        st = {k: r for k, r in rows.items() if isinstance(r, dict) and "seconds" in r and k != "generate_trio"}
        gpu = max((r.get("peak_gpu_gb", 0) for r in st.values()), default=0)
        rss = max((r.get("rss_over_model", 0) for r in st.values()), default=0)
        top = sorted(st, key=lambda k: -st[k]["seconds"])[:3]
        rows["targets"] = {"end_to_end_s": rows.get("end_to_end_s"), "peak_gpu_gb": gpu, "rss_over_model": rss,
                           "limits": TARGETS}
        print(f"{shape:<14}{rows.get('end_to_end_s', float('nan')):>14}{gpu:>17}{rss:>15}  "
              + ", ".join(f"{k} {st[k]['seconds']:.1f}s" for k in top))
    run.save()


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
    ap.add_argument("--factor-rounds", type=int, default=2,
                    help="then svd vs gram on the last shape's layer-0 features, N alternating rounds (0: skip)")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (for CPU figures use bench_merge.py --device cpu)")
    start = time.time()
    run = Run(Path(a.json), start + a.time_limit, vars(a))
    from rainmerge.synthetic import SHAPES, _config

    warm_model_code(_config(SHAPES[a.shapes.split(",")[0]], 1))  # no model folder exists yet
    run.baseline = rss_bytes()
    run.data["rss_after_imports_gb"] = gb(run.baseline)
    ceilings(run)
    feats: dict[str, torch.Tensor] = {}
    shape = ""
    for shape in a.shapes.split(","):
        try:
            feats = bench_shape(run, shape, a)
        except TimeoutError as exc:
            print(f"time limit reached before {shape}/{exc}; stopping", flush=True)
            break
        except Exception:  # keep what was measured, say what broke, go on to the next shape
            run.data.setdefault("errors", {})[shape] = traceback.format_exc()[-3000:]
            run.save()
            traceback.print_exc()
        finally:
            if run.cuda:
                torch.cuda.empty_cache()
    if feats and a.factor_rounds:
        compare_factorizations(run, shape, feats, a.factor_rounds)
    summary(run)
    run.data["total_seconds"] = round(time.time() - start, 1)
    run.save()
    print(f"wrote {a.json} ({run.data['gpu']}, {run.data['total_seconds']} s)")


if __name__ == "__main__":
    main()
