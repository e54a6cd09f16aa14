"""The pipeline's steps as plain functions: each reads refs, writes one folder, returns a DirRef.

Each step sees a *view* of the config in which every field it does not read is reset to its
default, so a change to a Stage-2 parameter leaves the Stage-1 views (and their cache keys) as
they were.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import artifacts as A
from .config import RainConfig
from .io.lazy import sha256_file
from .merge import PROVENANCE_FILE, write_merged_model
from .plots import alpha_heatmap, projection_plot
from .runner import (build_method, load_lrm, prepare, provenance, stage1_features, stage1_solve, stage2_alpha)

_ALWAYS = ("base", "instruct", "reasoning", "reasoning_calibration", "instruction_calibration", "method",
           "layers", "modules", "output")
_VIEWS: dict[str, tuple[str, ...]] = {
    "load_models": ("hash_inputs",),
    "build_calibration_sets": ("think_open", "think_close", "append_think_prefix", "cache_dir",
                               "stage1.positions", "stage1.radius", "stage1.max_seq_len",
                               "stage1.max_skip_fraction", "stage2.enabled", "stage2.span_region",
                               "stage2.max_seq_len", "stage2.max_skip_fraction"),
    "collect_features": ("device", "forward_dtype", "stage1.positions", "stage1.radius"),
    "compute_projectors": ("device", "stage1"),
    "score_attention_heads": ("device", "forward_dtype", "strength", "stage1", "stage2"),
    "merge": ("*",),
}


def view(cfg: RainConfig, step: str) -> dict[str, Any]:
    """The config as `step` sees it: its fields kept, all others at their defaults."""
    full = {k: v for k, v in cfg.model_dump(mode="json").items() if k in RainConfig.model_fields}
    keep = _VIEWS[step]
    if "*" in keep:
        return full
    out = {k: full[k] for k in _ALWAYS}
    for key in keep:
        if "." in key:
            sec, sub = key.split(".")
            out.setdefault(sec, {})[sub] = full[sec][sub]
        else:
            out[key] = full[key]
    return RainConfig.model_validate(out).model_dump(mode="json")


def fingerprint(cfg: RainConfig) -> dict[str, str]:
    """Cheap identity of every input, taken when the pipeline is built, so caching sees edited files."""
    fp = {}
    for role in ("base", "instruct", "reasoning"):
        ref = getattr(cfg, role)
        p = Path(ref.path).expanduser()
        if p.is_dir():
            parts = [sha256_file(p / "config.json")] if (p / "config.json").is_file() else []
            parts += [f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in sorted(p.glob("*.safetensors"))]
            fp[role] = "|".join(parts)
        else:
            fp[role] = f"{ref.path}@{ref.revision or 'main'}"
    for role in ("reasoning_calibration", "instruction_calibration"):
        ref = getattr(cfg, role)
        if ref is not None:
            p = Path(ref.path).expanduser() if ref.path else None
            fp[role] = sha256_file(p) if p and p.is_file() else (ref.sha256 or "")
    return fp


def _cfg(view_dict: dict[str, Any]) -> RainConfig:
    return RainConfig.model_validate(view_dict)


def load_models(view_dict: dict[str, Any]) -> dict[str, Any]:
    """Resolve and validate the trio (revisions -> commits, shapes, family); returns their description."""
    cfg = _cfg(view_dict)
    plan = prepare(cfg, check_output=False, calibration=False)
    return {"inputs": {r: s.describe(cfg.hash_inputs) for r, s in
                       (("base", plan.base), ("instruct", plan.itm), ("reasoning", plan.lrm))},
            "arch": plan.arch.dims() | {"model_type": plan.arch.model_type}, "layers": plan.layers,
            "warnings": plan.warnings}


def build_calibration_sets(view_dict: dict[str, Any], out: Path) -> A.DirRef:
    cfg = _cfg(view_dict)
    plan = prepare(cfg, check_output=False, calibration=cfg.method == "rain")
    out.mkdir(parents=True, exist_ok=True)
    A.save_samples(out, plan.reasoning, plan.instruction)
    A.write_json(out / "calibration.json", plan.calibration)
    return A.make_ref("calibration", out, {"calibration": plan.calibration})


def _plan_with_samples(view_dict: dict[str, Any], calib: A.DirRef):
    plan = prepare(_cfg(view_dict), check_output=False, calibration=False)
    plan.reasoning, plan.instruction = A.load_samples(calib.verify().path)
    plan.calibration = calib.meta.get("calibration", {})
    return plan


def collect_features(view_dict: dict[str, Any], calib: A.DirRef, out: Path, progress: bool = True) -> A.DirRef:
    plan = _plan_with_samples(view_dict, calib)
    feats = stage1_features(plan, load_lrm(plan), progress)
    out.mkdir(parents=True, exist_ok=True)
    A.save_features(out, feats)
    rows = {l: {g: list(x.shape) for g, x in f.items()} for l, f in feats.items()}
    return A.make_ref("features", out, {"shapes": rows, "seconds": plan.timings["stage1_features_s"]})


def compute_projectors(view_dict: dict[str, Any], features: A.DirRef, out: Path) -> A.DirRef:
    plan = prepare(_cfg(view_dict), check_output=False, calibration=False)
    bases = stage1_solve(plan, A.load_features(features.verify().path))
    out.mkdir(parents=True, exist_ok=True)
    A.save_bases(out, bases)
    capped = sum(b.capped for g in bases.values() for b in g.values())
    return A.make_ref("projectors", out, {"capped_groups": capped, "seconds": plan.timings["stage1_solve_s"]})


def score_attention_heads(view_dict: dict[str, Any], calib: A.DirRef, projectors: A.DirRef, out: Path,
                          progress: bool = True) -> A.DirRef:
    from .coefficients import uniform_coefficients

    plan = _plan_with_samples(view_dict, calib)
    bases = A.load_bases(projectors.verify().path)
    out.mkdir(parents=True, exist_ok=True)
    if plan.cfg.stage2.enabled:
        coeffs, detail = stage2_alpha(plan, load_lrm(plan), bases, progress)
        alpha_heatmap(detail["alpha"], detail["layers"], out / "alpha_heatmap.png")
    else:
        coeffs = uniform_coefficients(plan.layers, plan.arch)
        detail = {"layers": plan.layers, "alpha": [[1.0] * plan.arch.num_heads for _ in plan.layers],
                  "estimator": "uniform (stage 2 disabled)"}
    A.save_coefficients(out, coeffs, detail)
    return A.make_ref("coefficients", out, {"estimator": detail["estimator"]})


def merge(view_dict: dict[str, Any], calib: A.DirRef | None, projectors: A.DirRef | None,
          coefficients: A.DirRef | None, out: Path, progress: bool = True) -> A.DirRef:
    """Write the merged model atomically to out/model (a failure leaves no model folder)."""
    plan = prepare(_cfg(view_dict), check_output=False, calibration=False)
    if calib is not None:
        plan.calibration = calib.meta.get("calibration", {})
    extra = {}
    bases = coeffs = None
    if plan.cfg.method == "rain":
        assert projectors is not None and coefficients is not None
        bases = A.load_bases(projectors.verify().path)
        coeffs = A.load_coefficients(coefficients.verify().path)
        extra["rain_alpha.json"] = json.loads((coefficients.path / "rain_alpha.json").read_text())
    method = build_method(plan, bases, coeffs)
    model_dir = write_merged_model(plan.lrm, plan.base, plan.itm, plan.sites, method, out / "model",
                                   provenance(plan), overwrite=True, max_shard_size=plan.cfg.max_shard_size,
                                   progress=progress, extra_files=extra)
    prov = json.loads((model_dir / PROVENANCE_FILE).read_text())
    if plan.cfg.method == "rain":
        projection_plot(prov["module_stats"], out / "projection_stats.png")
    return A.make_ref("merged_model", model_dir, {"method": plan.cfg.method, "warnings": prov["warnings"]})
