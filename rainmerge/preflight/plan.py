"""build_plan: every check in one pass over the trio's metadata; run_plan: print it, exit 0 or 2."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from ..arch import ArchSpec
from ..config import MergeConfig
from ..errors import RainMergeError
from ..method_catalog import needs_stages
from .calibration_rows import calibration_checks
from .checks import arch_checks, dtype_warnings, merged_layers, merged_names, shape_checks
from .lineage_check import lineage
from .plan_report import PlanReport, Problem, format_plan
from .resources import resources
from .sources import ModelMeta, read_metadata
from .tokenizer import tokenizer_checks

ROLES = ("base", "instruct", "reasoning")


def build_plan(cfg: MergeConfig, api: Any = None, *, hash_weights: bool | None = None,
               check_output: bool = True) -> PlanReport:
    """Everything a merge would check, from metadata only (see the module doc). Pure data out.

    api: an `HfApi`-like object (model_info, get_safetensors_metadata, hf_hub_download) for Hub ids;
    default `HfApi()` (or, with HF_HUB_OFFLINE=1, the local HF cache). hash_weights: sha256 of local
    weight files for lineage (default cfg.hash_inputs; memoised per process). Local folders cost a header
    read per shard, a tokenizer load and, for rain, encoding the calibration files."""
    problems: list[Problem] = []
    warnings: list[str] = []
    notes: list[str] = []
    fetched: list[str] = []
    hash_weights = cfg.hash_inputs if hash_weights is None else hash_weights
    reads_text = needs_stages(cfg.method)
    rep = PlanReport(ok=False, method=cfg.method, modules=list(cfg.modules))
    with tempfile.TemporaryDirectory(prefix="rainmerge-plan-") as tmp:
        metas = {role: read_metadata(role, getattr(cfg, role), api, problems, fetched, Path(tmp), hash_weights,
                                     want_tokenizer=role == "reasoning" and reads_text) for role in ROLES}
        rep.inputs = {r: m.report for r, m in metas.items()}
        arch = _architecture(cfg, metas, rep, problems, warnings)
        notes.extend(_embedding_notes(metas))
        tpl = None
        # a baseline reads no text: its plan skips the tokenizer (and the transformers import it costs)
        if reads_text and metas["reasoning"].config is not None:
            rep.think_tokens, rep.template, tpl = tokenizer_checks(cfg, metas["reasoning"], problems, notes)
        rep.calibration, rep.rows_vs_width, load = calibration_checks(cfg, tpl, arch, problems, warnings)
        if check_output:
            problems.extend(_output_problems(cfg))
        rep.resources = resources(cfg, arch, metas, rep.layers, load)
        rep.lineage = lineage(metas, warnings, notes)
    rep.problems, rep.warnings, rep.notes, rep.hub_files_fetched = problems, warnings, notes, fetched
    rep.ok = not problems
    return rep


def _architecture(cfg: MergeConfig, metas: dict[str, ModelMeta], rep: PlanReport, problems: list[Problem],
                  warnings: list[str]) -> ArchSpec | None:
    """The LRM's architecture against the others', the merged layers, and every merged tensor's shape
    and dtype in each role (skipped when the families or dimensions already differ)."""
    arch = arch_checks(metas, problems, warnings).get("reasoning")
    if arch is None:
        return None
    rep.arch = arch.dims() | {"model_type": arch.model_type, "tie_word_embeddings": arch.tie_word_embeddings,
                              "qkv_bias": arch.qkv_bias, "qk_norm": arch.qk_norm}
    rep.layers = merged_layers(cfg.layers, arch, problems)
    if not any(p.code == "arch_mismatch" for p in problems):
        tables = {r: m.tensors for r, m in metas.items()}
        rep.module_shapes = shape_checks(arch, rep.layers, list(cfg.modules), tables, problems)
        warnings.extend(dtype_warnings(tables, merged_names(arch, rep.layers, cfg.modules)))
    return arch


def _embedding_notes(metas: dict[str, ModelMeta]) -> list[str]:
    ties = {r: m.report.tie_word_embeddings for r, m in metas.items()}
    if len({t for t in ties.values() if t is not None}) <= 1:
        return []
    return ["embeddings: " + ", ".join(f"{r} {'tied' if t else 'untied'}" for r, t in ties.items())
            + " (allowed: embeddings and lm_head are copied from the LRM, never merged)"]


def _output_problems(cfg: MergeConfig) -> list[Problem]:
    from ..io.writer import check_output_path

    try:
        check_output_path(Path(cfg.output).expanduser().resolve(), cfg.overwrite)
    except RainMergeError as exc:
        return [Problem(code="output", message=str(exc))]
    return []


def run_plan(cfg: MergeConfig, *, api: Any = None, out: TextIO | None = None) -> int:
    """`rainmerge plan --config FILE`: print the plan to `out` (sys.stdout, looked up at call time);
    return 0 when a merge can proceed, 2 when it would fail (the reasons are printed under PROBLEMS)."""
    rep = build_plan(cfg, api)
    print(format_plan(rep), file=out if out is not None else sys.stdout)
    return 0 if rep.ok else 2

