"""The paper's stages as functions of a MergeContext: each takes what it needs and returns what it
made (no shared mutable state). `run_merge` chains them for the CLI; the pipeline steps
(rainmerge.product.step_bodies) call the same functions one per step."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .attention import alignment_leakage
from .calibration import (EncodeReport, InstructionSample, ReasoningSample, Template, encode_instruction,
                          encode_reasoning, load_instruction, load_reasoning, resolve_calibration)
from .coefficients import DegenerateStage2, module_coefficients, solve_stage2, uniform_coefficients
from .config import CalibrationSpec, CoefficientConfig, ProjectionConfig, MergeConfig
from .context import MergeContext, load_reasoning_model, load_tokenizer, open_models
from .errors import CalibrationError, ConfigError
from .features import collect_features
from .io.lock import OutputLock
from .io.writer import check_output_path
from .io.lazy import all_finite
from .linears import FEATURE_GROUP
from .merge import Prefetcher, check_inputs, write_merged_model
from .methods import build_method, needs_stages
from .methods.rain import Rain
from .projection import Basis
from .provenance import provenance
from .preflight.merge_start import calibration_paths, preflight
from .memory import decide_stages_path
from .sequential import run_sequential, stage1_layer_bases

log = logging.getLogger("rainmerge")

Features = dict[int, dict[str, torch.Tensor]]
Bases = dict[int, dict[str, Basis]]
Coefficients = dict[int, dict[str, torch.Tensor]]


@contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.time()
    yield
    timings[key] = time.time() - t0


@dataclass(frozen=True)
class CalibrationSets:
    reasoning: list[ReasoningSample]
    instruction: list[InstructionSample]
    record: dict[str, Any] = field(default_factory=dict)  # path, sha256, counts per role (for lineage)


def _cal_record(path: Path, digest: str, rep: EncodeReport) -> dict[str, Any]:
    return {"path": str(path), "sha256": digest, "records": rep.total, "used": rep.kept, "skipped": rep.skipped}


def encode_calibration(ctx: MergeContext, spec: CalibrationSpec) -> CalibrationSets:
    """Verify the calibration files, render them with the LRM's template, locate tags and spans."""
    tpl = Template(load_tokenizer(ctx), spec.think_open, spec.think_close, spec.append_think_prefix)
    tpl.check_tokens()
    path, digest = resolve_calibration(spec.reasoning_calibration, "reasoning_calibration", spec.cache_dir)
    recs = load_reasoning(path, spec.reasoning_calibration.max_samples)
    reasoning, rep = encode_reasoning(recs, tpl, spec.positions, spec.radius, spec.reasoning_max_seq_len)
    rep.check(f"reasoning calibration {path.name}", spec.reasoning_max_skip_fraction)
    record = {"reasoning": _cal_record(path, digest, rep)}
    instruction: list[InstructionSample] = []
    if spec.with_instruction:
        assert spec.instruction_calibration is not None
        path, digest = resolve_calibration(spec.instruction_calibration, "instruction_calibration", spec.cache_dir)
        irecs = load_instruction(path, spec.instruction_calibration.max_samples)
        instruction, rep = encode_instruction(irecs, tpl, spec.span_region, spec.instruction_max_seq_len)
        rep.check(f"instruction calibration {path.name}", spec.instruction_max_skip_fraction)
        record["instruction"] = _cal_record(path, digest, rep) | {"held_out_ids": [str(r.id) for r in irecs]}
    return CalibrationSets(reasoning, instruction, record)


def stage1_features(ctx: MergeContext, model: torch.nn.Module, reasoning: list[ReasoningSample],
                    progress: bool = True) -> Features:
    """Stage 1a: inputs of every merged linear at the protected (think-tag) positions, one pass per sample."""
    groups = sorted({FEATURE_GROUP[m] for m in ctx.models.modules})
    return collect_features(model, ctx.arch, reasoning, list(ctx.layers), groups, progress)


def stage1_projectors(ctx: MergeContext, feats: Features, s1: ProjectionConfig, consume: bool = False,
                      progress: bool = True) -> Bases:
    """Stage 1b (paper Eq. 4): one factorisation per feature group per layer.
    `consume`: drop each layer's features from `feats` once its bases exist, so the host holds the
    features and the bases (about the same size) at once for one layer only, not for the whole model."""
    from tqdm.auto import tqdm

    # `delay`: a bar (with ETA) only when the solve takes more than a few seconds (7B: minutes; toy: none)
    return {layer: stage1_layer_bases(ctx, feats.pop(layer) if consume else feats[layer], s1)
            for layer in tqdm(list(ctx.layers), desc="stage 1: projectors", unit="layer", delay=3,
                              disable=not progress)}


@torch.no_grad()
def apply_probe_merge(ctx: MergeContext, model: torch.nn.Module, bases: Bases, strength: float) -> torch.nn.Module:
    """Turn `model` (the LRM) into the alpha=1 probe merge in place, where Stage 2 scores the heads.
    In place on purpose: a second copy of a 7B model would not fit beside the first.

    P(tau) is recomputed in Stage 3, not kept from here: Stage 3 projects alpha (.) tau, and o_proj's
    per-head alpha scales input columns, which does not commute with the right-side projector, so the
    probe's P(tau) is not reusable there; for the other modules keeping P(tau) would hold a float32 copy
    of every merged weight (~26 GB host for 7B) to save two thin GEMMs per tensor."""
    probe = Rain(ctx.arch, bases, uniform_coefficients(list(ctx.layers), ctx.arch), strength, ctx.device)
    reader = Prefetcher(ctx.reasoning, ctx.base, ctx.instruct, ctx.sites, with_reasoning=False)
    reader.plan(list(ctx.sites))
    try:
        for name, site in ctx.sites.items():
            _, b, i = reader.take(name)
            d = probe.delta_(site, probe.task_vector(b, i), record=False)
            if not all_finite(d):  # name the broken input (the preflight may not have scanned them)
                check_inputs((ctx.base, ctx.instruct), name, (b, i))
                raise FloatingPointError(f"{name}: probe-merge delta has non-finite values")
            w = model.get_submodule(ctx.arch.module_path(site.layer, site.module)).weight
            w.add_(d.to(w.device, w.dtype))
    finally:
        reader.close()
    return model


def stage2_coefficients(ctx: MergeContext, model: torch.nn.Module, bases: Bases,
                        instruction: list[InstructionSample], s2: CoefficientConfig, strength: float,
                        progress: bool = True) -> tuple[Coefficients, dict[str, Any]]:
    """Stage 2 (paper Eq. 11, 14, 15): score response->instruction attention, solve for alpha.
    `model` is the LRM; it is consumed (it ends as the probe merge)."""
    arch, layers = ctx.arch, list(ctx.layers)
    kw = dict(num_heads=arch.num_heads, row_chunk=s2.row_chunk, progress=progress)
    a0 = u0 = None
    if s2.estimator == "two_pass":
        a0, u0 = alignment_leakage(model, instruction, layers, desc="stage 2: attention (LRM)", **kw)
    apply_probe_merge(ctx, model, bases, strength)
    a1, u1 = alignment_leakage(model, instruction, layers, desc="stage 2: attention (probe)", **kw)
    return stage2_solve(ctx, a1, u1, a0, u0, s2)


def stage2_solve(ctx: MergeContext, a1: torch.Tensor, u1: torch.Tensor, a0: torch.Tensor | None,
                 u0: torch.Tensor | None, s2: CoefficientConfig) -> tuple[Coefficients, dict[str, Any]]:
    """Eq. 14/15 from the per-sample statistics [S, L, H] of either stage path."""
    layers = list(ctx.layers)
    try:
        sol = solve_stage2(a1, u1, a0=a0, u0=u0, **s2.solver_kwargs())
    except DegenerateStage2 as exc:
        raise ConfigError(str(exc)) from None
    for w in sol.warnings:
        log.warning(w)
    detail = sol.detail(layers) | {"samples": int(a1.shape[0])}
    return module_coefficients(sol.alpha, layers, ctx.arch), detail


def stage1_features_any_path(ctx: MergeContext, reasoning: list[ReasoningSample], progress: bool = True) -> Features:
    """stage1_features on the path ctx.stages_path picks (the pipeline's collect_features step)."""
    path, why = decide_stages_path(ctx, reasoning, [], ProjectionConfig(), CoefficientConfig(enabled=False))
    log.info("stage 1 features: %s path (%s)", path, why)
    if path == "whole":
        return stage1_features(ctx, load_reasoning_model(ctx), reasoning, progress)
    return run_sequential(ctx, reasoning=reasoning, placement=ctx.hidden_states, spill_dir=ctx.spill_dir,
                          progress=progress).features


def stage2_coefficients_any_path(ctx: MergeContext, bases: Bases, instruction: list[InstructionSample],
                                 s2: CoefficientConfig, strength: float, progress: bool = True
                                 ) -> tuple[Coefficients, dict[str, Any]]:
    """stage2_coefficients on the path ctx.stages_path picks (the pipeline's score_attention_heads step)."""
    path, why = decide_stages_path(ctx, [], instruction, ProjectionConfig(), s2)
    log.info("stage 2: %s path (%s)", path, why)
    if path == "whole":
        return stage2_coefficients(ctx, load_reasoning_model(ctx), bases, instruction, s2, strength, progress)
    res = run_sequential(ctx, instruction=instruction, stage2=s2, bases=bases, strength=strength,
                         placement=ctx.hidden_states, spill_dir=ctx.spill_dir, progress=progress)
    assert res.a1 is not None and res.u1 is not None
    return stage2_solve(ctx, res.a1, res.u1, res.a0, res.u0, s2)


def uniform_detail(ctx: MergeContext) -> dict[str, Any]:
    return {"layers": list(ctx.layers), "alpha": [[1.0] * ctx.arch.num_heads for _ in ctx.layers],
            "estimator": "uniform (stage 2 disabled)"}


def check_plan(cfg: MergeConfig) -> dict[str, Any]:
    """The `rainmerge plan` checks (metadata only: nothing is downloaded before they pass). Returns what
    the provenance keeps of them: the warnings and the LRM's declared lineage (caveat included)."""
    from .preflight import build_plan

    rep = build_plan(cfg, hash_weights=False, check_output=False)
    capped = [r.group for r in rep.rows_vs_width if r.cap_binds]
    for w in rep.warnings:
        if not w.startswith("rank cap binds"):
            log.warning("plan: %s", w)
    if capped:  # one line for all inputs; the per-input table is `rainmerge plan`'s
        log.warning("plan: the rank cap binds on %s: the identity will not be exact there "
                    "(see `rainmerge plan` and docs/deviations.md)", ", ".join(capped))
    _warn_large_features(cfg, rep)
    if not rep.ok:
        calibration_only = all(p.code.startswith("calibration") for p in rep.problems)
        raise (CalibrationError if calibration_only else ConfigError)(
            "the plan says this merge would fail: " + "; ".join(f"{p.role or p.code}: {p.message}"
                                                                 for p in rep.problems))
    lineage = rep.lineage.model_dump(exclude={"inputs"}) if rep.lineage else {}
    return {"warnings": rep.warnings, "lineage": lineage}


def _stages12_whole(ctx: MergeContext, cfg: MergeConfig, cal: CalibrationSets, timings: dict[str, float],
                    progress: bool) -> tuple[Bases, Coefficients, dict[str, Any] | None]:
    """Stages 1-2 on the whole LRM (one forward per sample; several GPUs: its layers spread over them)."""
    model = load_reasoning_model(ctx)
    with timed(timings, "stage1_features_s"):
        feats = stage1_features(ctx, model, cal.reasoning, progress)
    with timed(timings, "stage1_solve_s"):
        bases = stage1_projectors(ctx, feats, cfg.stage1, consume=True, progress=progress)
    del feats
    if not cfg.stage2.enabled:
        return bases, uniform_coefficients(list(ctx.layers), ctx.arch), None
    with timed(timings, "stage2_s"):
        coeffs, detail = stage2_coefficients(ctx, model, bases, cal.instruction, cfg.stage2, cfg.strength, progress)
    return bases, coeffs, detail


def _stages12_sequential(ctx: MergeContext, cfg: MergeConfig, cal: CalibrationSets, timings: dict[str, float],
                         plan: dict[str, Any], progress: bool) -> tuple[Bases, Coefficients, dict[str, Any] | None]:
    """Stages 1-2 layer by layer (rainmerge/sequential.py): one decoder layer in memory at a time."""
    s2 = cfg.stage2 if cfg.stage2.enabled else None
    with timed(timings, "stages12_sequential_s"):
        res = run_sequential(ctx, reasoning=cal.reasoning, instruction=cal.instruction if s2 else None,
                             stage1=cfg.stage1, stage2=s2, strength=cfg.strength, placement=ctx.hidden_states,
                             spill_dir=ctx.spill_dir, progress=progress)
    plan["stages_path"] |= {"hidden_states": res.placement, "hidden_state_bytes": res.hidden_bytes}
    if s2 is None:
        return res.bases, uniform_coefficients(list(ctx.layers), ctx.arch), None
    assert res.a1 is not None and res.u1 is not None
    coeffs, detail = stage2_solve(ctx, res.a1, res.u1, res.a0, res.u0, cfg.stage2)
    return res.bases, coeffs, detail


# Stage 1 features (+ bases) above this many bytes, and above twice the merged weights, are worth a warning
# before any forward: a 10,000-record calibration file once made artifacts hundreds of times the size of
# the toy model (docs/faults.md)
LARGE_FEATURES_BYTES = 1 << 30


def _warn_large_features(cfg: MergeConfig, rep: Any) -> None:
    s = rep.resources
    if s is None or s.disk_temp_bytes <= max(LARGE_FEATURES_BYTES, 2 * s.disk_output_bytes):
        return
    cal = next((c for c in rep.calibration if c.role == "reasoning_calibration"), None)
    what = f"{cal.records} reasoning calibration records ({cal.rows} rows)" if cal and cal.rows else "the calibration"
    log.warning("plan: Stage 1 features and bases for %s take ~%.1f GiB (host memory, and pipeline artifacts on "
                "disk), %.0fx the merged model; to bound them set reasoning_calibration.max_samples (e.g. --set "
                "reasoning_calibration.max_samples=256)", what, s.disk_temp_bytes / 2**30,
                s.disk_temp_bytes / max(1, s.disk_output_bytes))


def run_merge(cfg: MergeConfig, progress: bool = True) -> Path:
    """Validate, run the stages the method needs, write the merged folder; returns its path.
    One writer per output: the lock is taken before any work and held until the rename."""
    if not progress and needs_stages(cfg.method):  # baselines never load transformers
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if not cfg.output:
        raise ConfigError("no output folder: pass --output (or output: in the config)")
    with OutputLock(cfg.output):
        return _run_merge_locked(cfg, progress)


def _run_merge_locked(cfg: MergeConfig, progress: bool) -> Path:
    t_all = time.time()
    out_dir = Path(str(cfg.output)).expanduser().resolve()
    protected = calibration_paths(cfg)
    check_output_path(out_dir, cfg.overwrite, protected=protected)
    plan = check_plan(cfg)
    ctx = open_models(cfg.models_spec(), cfg.runtime())
    rain = needs_stages(cfg.method)
    # every failure that the headers, the disk or the weights can show, before any forward pass;
    # RAIN reads all of the LRM in its forwards, so its weights are scanned for NaN/Inf up front
    warnings = preflight(ctx.sources(), list(ctx.sites), out_dir, protected=protected, scan_finite=rain)
    for w in warnings:
        if w not in plan["warnings"]:  # check_plan logged it (the same dtype check on the headers)
            log.warning(w)
    timings: dict[str, float] = {}
    inputs = {r: s.describe(cfg.hash_inputs) for r, s in ctx.sources().items()}
    extra: dict[str, Any] = {}
    stages: dict[str, Any] = {}
    calibration: dict[str, Any] = {}
    if rain:
        cal = encode_calibration(ctx, cfg.calibration_spec())
        calibration = cal.record
        path, why = decide_stages_path(ctx, cal.reasoning, cal.instruction, cfg.stage1, cfg.stage2)
        log.info("stages 1-2: %s path (%s)", path, why)
        plan["stages_path"] = {"path": path, "reason": why}
        if path == "sequential":
            bases, coeffs, detail = _stages12_sequential(ctx, cfg, cal, timings, plan, progress)
        else:
            bases, coeffs, detail = _stages12_whole(ctx, cfg, cal, timings, progress)
        if detail is not None:
            extra["rain_alpha.json"] = detail
        stages = dict(arch=ctx.arch, bases=bases, coeffs=coeffs, device=ctx.device)
    method = build_method(cfg, **stages)
    prov = provenance(cfg, ctx, inputs, calibration, timings)
    prov["warnings"] += warnings + list((extra.get("rain_alpha.json") or {}).get("warnings") or [])
    prov["plan"] = plan  # incl. the LRM's declared base when it differs from the configured one
    out = write_merged_model(ctx.reasoning, ctx.base, ctx.instruct, ctx.sites, method, out_dir, prov,
                             cfg.overwrite, cfg.max_shard_size, progress, extra, inputs_scanned=rain)
    ctx.close()
    if line := method.summary():
        log.info(line)
    log.info("merged model written to %s in %.1fs", out, time.time() - t_all)
    return out
