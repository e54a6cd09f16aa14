"""The merge as a sequence of stages over one validated plan (the API behind the CLI and the steps)."""

from __future__ import annotations

import datetime as _dt
import logging
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .arch import FEATURE_GROUP, ArchSpec, arch_from_config, check_compatible
from .attention import alignment_leakage
from .calibration import (EncodeReport, InstructionSample, ReasoningSample, Template, encode_instruction,
                          encode_reasoning, load_instruction, load_reasoning, resolve_calibration)
from .coefficients import (closed_form_alpha, module_coefficients, paper_gradient_curvature,
                           two_pass_gradient_curvature, uniform_coefficients)
from .config import RainConfig
from .errors import ConfigError
from .features import collect_features
from .io.lazy import ModelSource
from .io.writer import check_output_path
from .merge import merge_sites, write_merged_model
from .methods import MergeMethod, Site
from .methods.dare import Dare
from .methods.rain import Rain
from .methods.task_arithmetic import TaskArithmetic
from .methods.ties import Ties
from .projection import Basis, bases_from_features

log = logging.getLogger("rainmerge")


@dataclass
class Plan:
    cfg: RainConfig
    base: ModelSource
    itm: ModelSource
    lrm: ModelSource
    arch: ArchSpec
    layers: list[int]
    sites: dict[str, Site]
    device: str
    forward_dtype: torch.dtype
    template: Template | None = None
    reasoning: list[ReasoningSample] = field(default_factory=list)
    instruction: list[InstructionSample] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _device(req: str) -> str:
    if req == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
    if req == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return req


def _forward_dtype(req: str, device: str) -> torch.dtype:
    if req == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cpu" and req != "float32":
        log.warning("forward_dtype %s on CPU is very slow; float32 is recommended", req)
    return getattr(torch, req)


def _check_tensors(plan_sites: dict[str, Site], arch: ArchSpec, srcs: dict[str, ModelSource]) -> None:
    for name, site in plan_sites.items():
        want = arch.weight_shape(site.module)
        for role, src in srcs.items():
            if not src.has(name):
                raise ConfigError(f"{role}: merged tensor {name} is missing from {src.root}")
            if tuple(src.shape(name)) != want:
                raise ConfigError(f"{role}: {name} has shape {src.shape(name)}, expected {want}")
            if not src.dtype_str(name).startswith(("F", "BF")):
                raise ConfigError(f"{role}: {name} has non-float dtype {src.dtype_str(name)}")


def _load_tokenizer(lrm: ModelSource, trust: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(lrm.root), trust_remote_code=trust)
    except Exception as exc:
        raise ConfigError(f"reasoning model: cannot load its tokenizer from {lrm.root}: {exc}") from None


def prepare(cfg: RainConfig, check_output: bool = True, calibration: bool = True) -> Plan:
    """Every check that can fail, before any forward pass or write."""
    if check_output:
        check_output_path(Path(cfg.output).expanduser().resolve(), cfg.overwrite)
    device = _device(cfg.device)
    fdt = _forward_dtype(cfg.forward_dtype, device)
    srcs = {"base": ModelSource(cfg.base, "base"), "instruct": ModelSource(cfg.instruct, "instruct"),
            "reasoning": ModelSource(cfg.reasoning, "reasoning")}
    specs = {role: arch_from_config(s.config, role) for role, s in srcs.items()}
    warnings = check_compatible({"reasoning": specs["reasoning"], "base": specs["base"],
                                 "instruct": specs["instruct"]})
    arch = specs["reasoning"]
    layers = cfg.layers if cfg.layers is not None else list(range(arch.num_layers))
    if max(layers) >= arch.num_layers:
        raise ConfigError(f"layers: {max(layers)} is out of range; the model has {arch.num_layers} layers")
    sites = merge_sites(arch, layers, list(cfg.modules))
    _check_tensors(sites, arch, srcs)
    plan = Plan(cfg, srcs["base"], srcs["instruct"], srcs["reasoning"], arch, layers, sites, device, fdt,
                warnings=warnings)
    if cfg.method == "rain" and calibration:
        _prepare_calibration(plan)
    for w in warnings:
        log.warning(w)
    return plan


def _prepare_calibration(plan: Plan) -> None:
    cfg = plan.cfg
    tok = _load_tokenizer(plan.lrm, cfg.reasoning.trust_remote_code)
    tpl = Template(tok, cfg.think_open, cfg.think_close, cfg.append_think_prefix)
    tpl.check_tokens()
    plan.template = tpl
    assert cfg.reasoning_calibration is not None
    path, digest = resolve_calibration(cfg.reasoning_calibration, "reasoning_calibration", cfg.cache_dir)
    recs = load_reasoning(path, cfg.reasoning_calibration.max_samples)
    plan.reasoning, rep = encode_reasoning(recs, tpl, cfg.stage1.positions, cfg.stage1.radius,
                                           cfg.stage1.max_seq_len)
    rep.check(f"reasoning calibration {path.name}", cfg.stage1.max_skip_fraction)
    plan.calibration["reasoning"] = _cal_record(path, digest, rep)
    if cfg.stage2.enabled:
        assert cfg.instruction_calibration is not None
        path, digest = resolve_calibration(cfg.instruction_calibration, "instruction_calibration", cfg.cache_dir)
        irecs = load_instruction(path, cfg.instruction_calibration.max_samples)
        plan.instruction, rep = encode_instruction(irecs, tpl, cfg.stage2.span_region, cfg.stage2.max_seq_len)
        rep.check(f"instruction calibration {path.name}", cfg.stage2.max_skip_fraction)
        rec = _cal_record(path, digest, rep)
        rec["held_out_ids"] = [str(r.id) for r in irecs]
        plan.calibration["instruction"] = rec


def _cal_record(path: Path, digest: str, rep: EncodeReport) -> dict[str, Any]:
    return {"path": str(path), "sha256": digest, "records": rep.total, "used": rep.kept, "skipped": rep.skipped}


def load_lrm(plan: Plan) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    # device_map loads straight onto the GPU: no host copy of the model
    model = AutoModelForCausalLM.from_pretrained(str(plan.lrm.root), dtype=plan.forward_dtype,
                                                 attn_implementation="sdpa",
                                                 device_map=plan.device if plan.device != "cpu" else None,
                                                 trust_remote_code=plan.cfg.reasoning.trust_remote_code)
    return model.to(plan.device).eval()


def stage1_bases(plan: Plan, model: torch.nn.Module, progress: bool = True) -> dict[int, dict[str, Basis]]:
    """Collect Omega_think features in one pass per sample, then factor each feature group once."""
    return stage1_solve(plan, stage1_features(plan, model, progress))


def stage1_features(plan: Plan, model: torch.nn.Module, progress: bool = True) -> dict[int, dict[str, torch.Tensor]]:
    t0 = time.time()
    groups = sorted({FEATURE_GROUP[m] for m in plan.cfg.modules})
    feats = collect_features(model, plan.arch, plan.reasoning, plan.layers, groups, progress)
    plan.timings["stage1_features_s"] = time.time() - t0
    return feats


def stage1_solve(plan: Plan, feats: dict[int, dict[str, torch.Tensor]]) -> dict[int, dict[str, Basis]]:
    t0 = time.time()
    s1 = plan.cfg.stage1
    kw = dict(ridge=s1.ridge, energy=s1.energy, max_rank_fraction=s1.max_rank_fraction,
              rank_rtol=s1.rank_rtol, dtype=s1.solve_dtype)
    bases = {}
    for layer in plan.layers:
        f = {g: x.to(plan.device) for g, x in feats[layer].items()}
        bases[layer] = {k: b.to("cpu") if plan.device != "cpu" else b
                        for k, b in bases_from_features(f, plan.arch.num_heads, plan.arch.head_dim, **kw).items()}
    plan.timings["stage1_solve_s"] = time.time() - t0
    return bases


@torch.no_grad()
def _add_deltas(plan: Plan, model: torch.nn.Module, rain: Rain, sign: float = 1.0) -> None:
    for site in plan.sites.values():
        tau = plan.itm.get(site.name, torch.float32) - plan.base.get(site.name, torch.float32)
        w = model.get_submodule(plan.arch.module_path(site.layer, site.module)).weight
        d = rain.delta(site, tau, record=False)
        w.add_((sign * d).to(w.device, w.dtype))


def stage2_alpha(plan: Plan, model: torch.nn.Module, bases: dict[int, dict[str, Basis]],
                 progress: bool = True) -> tuple[dict[int, dict[str, torch.Tensor]], dict[str, Any]]:
    """Score heads on the probe merge (alpha=1) and solve Eq. 15; leaves `model` modified."""
    s2 = plan.cfg.stage2
    arch = plan.arch
    t0 = time.time()
    probe = Rain(arch, bases, uniform_coefficients(plan.layers, arch), plan.cfg.strength, plan.device)
    kw = dict(num_heads=arch.num_heads, row_chunk=s2.row_chunk, progress=progress)
    a0 = u0 = None
    if s2.estimator == "two_pass":
        a0, u0 = alignment_leakage(model, plan.instruction, plan.layers, desc="stage 2: attention (LRM)", **kw)
    _add_deltas(plan, model, probe)
    a1, u1 = alignment_leakage(model, plan.instruction, plan.layers, desc="stage 2: attention (probe)", **kw)
    if s2.estimator == "two_pass":
        g, H = two_pass_gradient_curvature(a0, u0, a1, u1, s2.rho, s2.h_lambda, s2.h_mu)
    else:
        g, H = paper_gradient_curvature(a1, u1, s2.rho)
    try:
        alpha, ratio = closed_form_alpha(g, H, s2.lo, s2.hi, s2.normalize)
    except ValueError as exc:
        raise ConfigError(f"stage 2: {exc}") from None
    plan.timings["stage2_s"] = time.time() - t0
    detail = {"layers": plan.layers, "alpha": alpha.tolist(), "g": g.tolist(), "H": H.tolist(),
              "ratio": ratio.tolist(), "a_probe_mean": a1.mean(0).tolist(), "u_probe_mean": u1.mean(0).tolist(),
              "estimator": s2.estimator, "samples": len(plan.instruction)}
    return module_coefficients(alpha, plan.layers, arch), detail


def build_method(plan: Plan, bases=None, coeffs=None) -> MergeMethod:
    c = plan.cfg
    if c.method == "rain":
        return Rain(plan.arch, bases, coeffs, c.strength, plan.device, c.stage1.min_kept_norm)
    if c.method == "task_arithmetic":
        return TaskArithmetic(c.strength)
    if c.method == "ties":
        return Ties(c.strength, c.density)
    return Dare(c.strength, c.density, c.seed)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "safetensors", "huggingface_hub", "peft", "pydantic"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                           text=True, timeout=5)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(plan: Plan) -> dict[str, Any]:
    c = plan.cfg
    return {
        "tool": "rainmerge", "rainmerge_version": __version__, "git_commit": git_commit(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "method": c.method, "config": c.model_dump(mode="json"),
        "inputs": {r: s.describe(c.hash_inputs) for r, s in
                   (("base", plan.base), ("instruct", plan.itm), ("reasoning", plan.lrm))},
        "calibration": plan.calibration, "arch": plan.arch.dims() | {"model_type": plan.arch.model_type},
        "layers": plan.layers, "modules": list(c.modules), "device": plan.device,
        "forward_dtype": str(plan.forward_dtype), "libraries": library_versions(),
        "warnings": plan.warnings, "timings_s": {k: round(v, 3) for k, v in plan.timings.items()},
    }


def run_merge(cfg: RainConfig, progress: bool = True) -> Path:
    """Validate, run the stages the method needs, write the merged folder; returns its path."""
    t_all = time.time()
    plan = prepare(cfg)
    extra: dict[str, Any] = {}
    bases = coeffs = None
    if cfg.method == "rain":
        model = load_lrm(plan)
        bases = stage1_bases(plan, model, progress)
        if cfg.stage2.enabled:
            coeffs, detail = stage2_alpha(plan, model, bases, progress)
            extra["rain_alpha.json"] = detail
        else:
            coeffs = uniform_coefficients(plan.layers, plan.arch)
        del model
    method = build_method(plan, bases, coeffs)
    prov = provenance(plan)
    out = write_merged_model(plan.lrm, plan.base, plan.itm, plan.sites, method, cfg.output, prov,
                             cfg.overwrite, cfg.max_shard_size, progress, extra)
    for src in (plan.base, plan.itm, plan.lrm):
        src.close()
    log.info("merged model written to %s in %.1fs", out, time.time() - t_all)
    return out
