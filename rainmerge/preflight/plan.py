"""build_plan: every check in one pass over the trio's metadata; run_plan: print it, exit 0 or 2."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO


from ..config import RainConfig
from ..errors import RainMergeError
from ..methods import METHODS
from .checks import (_arch_checks, _calibration, _lineage, _load_tokenizer, _rows_vs_width, _shape_checks,
                     _template_check, _think_tokens)
from .resources import MEAN_TOKENS, resources
from .report import PlanReport, Problem, TemplateReport, format_plan
from .sources import _inspect


def build_plan(cfg: RainConfig, api: Any = None, *, hash_weights: bool | None = None,
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
    rep = PlanReport(ok=False, method=cfg.method, modules=list(cfg.modules))
    with tempfile.TemporaryDirectory(prefix="rainmerge-plan-") as tmp:
        metas = {role: _inspect(role, getattr(cfg, role), api, problems, fetched, Path(tmp), hash_weights,
                                want_tokenizer=role == "reasoning" and METHODS[cfg.method].needs_stages)
                 for role in ("base", "instruct", "reasoning")}
        rep.inputs = {r: m.report for r, m in metas.items()}
        specs = _arch_checks(metas, problems, warnings)
        arch = specs.get("reasoning")
        layers: list[int] = []
        if arch is not None:
            rep.arch = arch.dims() | {"model_type": arch.model_type, "tie_word_embeddings": arch.tie_word_embeddings,
                                      "qkv_bias": arch.qkv_bias, "qk_norm": arch.qk_norm}
            layers = cfg.layers if cfg.layers is not None else list(range(arch.num_layers))
            if layers and max(layers) >= arch.num_layers:
                problems.append(Problem(code="layers_out_of_range", message=(
                    f"layers: {max(layers)} is out of range; the model has {arch.num_layers} layers")))
                layers = [l for l in layers if l < arch.num_layers]
            if not any(p.code == "arch_mismatch" for p in problems):
                rep.module_shapes = _shape_checks(arch, layers, list(cfg.modules), metas, problems)
        rep.layers = layers
        ties = {r: m.report.tie_word_embeddings for r, m in metas.items()}
        if len({t for t in ties.values() if t is not None}) > 1:
            notes.append("embeddings: " + ", ".join(f"{r} {'tied' if t else 'untied'}" for r, t in ties.items())
                         + " (allowed: embeddings and lm_head are copied from the LRM, never merged)")
        # tokenizer, think tokens, template
        reasoning = metas["reasoning"]
        need_tags = METHODS[cfg.method].needs_stages
        # a baseline reads no text: its plan skips the tokenizer (2 s of transformers import per run)
        tok, why = (_load_tokenizer(reasoning.small_dir) if reasoning.config is not None and need_tags
                    else (None, "LRM unreadable" if need_tags else "not needed"))
        tpl = None
        rows_embed = (reasoning.report.embed_shape or [None])[0]
        if tok is None:
            if need_tags and reasoning.config is not None:
                problems.append(Problem(code="tokenizer", role="reasoning",
                                        message=f"reasoning model {cfg.reasoning.path}: {why}"))
        else:
            if rows_embed is not None and len(tok) > rows_embed:
                extra = tok.convert_ids_to_tokens(list(range(rows_embed, min(len(tok), rows_embed + 5))))
                notes.append(f"the LRM tokenizer has {len(tok)} tokens but the LRM embeds {rows_embed} rows: "
                                f"ids >= {rows_embed} ({extra}) would fail in a forward pass")
            rep.think_tokens = _think_tokens(tok, [cfg.think_open, cfg.think_close], rows_embed)
            try:
                rep.template = _template_check(tok, cfg)
            except Exception as exc:
                rep.template = TemplateReport(has_template=True, prefill="unknown")
                if need_tags:
                    problems.append(Problem(code="template_error", role="reasoning",
                                            message=f"the chat template does not render: {exc}"))
            if need_tags:
                for t in rep.think_tokens:
                    if not t.single_token:
                        problems.append(Problem(code="think_token_missing", role="reasoning", message=(
                            f"'{t.tag}' is not a single token in the LRM tokenizer (encodes to {t.ids[:8]})")))
                    elif t.within_embedding is False:
                        problems.append(Problem(code="think_token_missing", role="reasoning", message=(
                            f"'{t.tag}' has id {t.id}, outside the LRM's {rows_embed} embedding rows")))
                if not rep.template.has_template:
                    problems.append(Problem(code="no_chat_template", role="reasoning",
                                            message="the LRM tokenizer has no chat template"))
                elif rep.template.prefill == "missing":
                    problems.append(Problem(code="template_no_prefill", role="reasoning", message=(
                        f"template without pre-fill: the generation prompt does not end with '{cfg.think_open}' "
                        "(old R1 snapshot or a non-R1 template); use a template that pre-fills it, "
                        "or set append_think_prefix: true")))
                tags_ok = all(t.single_token and t.within_embedding is not False for t in rep.think_tokens)
                if tags_ok and rep.template.prefill in ("template", "appended"):
                    from ..calibration import Template

                    tpl = Template(tok, cfg.think_open, cfg.think_close, cfg.append_think_prefix)
        # calibration, rows vs width
        t_reason, t_instr = cfg.stage1.max_seq_len, cfg.stage2.max_seq_len
        tokens = {"reasoning": 0, "instruction": 0}
        rows, exact = 0, False
        if cfg.method == "rain":
            if cfg.reasoning_calibration is not None:
                c, rs = _calibration(cfg, "reasoning", cfg.reasoning_calibration, tpl, problems)
                rep.calibration.append(c)
                rows, exact = c.rows or 0, c.exact
                t_reason = c.max_tokens or t_reason
                tokens["reasoning"] = _tokens(c, "reasoning", t_reason)
            if cfg.stage2.enabled and cfg.instruction_calibration is not None:
                c, _ = _calibration(cfg, "instruction", cfg.instruction_calibration, tpl, problems)
                rep.calibration.append(c)
                t_instr = c.max_tokens or t_instr
                tokens["instruction"] = _tokens(c, "instruction", t_instr)
            if arch is not None:
                rep.rows_vs_width = _rows_vs_width(arch, list(cfg.modules), rows, exact, cfg, warnings)
        # output
        if check_output:
            from ..io.writer import check_output_path

            try:
                check_output_path(Path(cfg.output).expanduser().resolve(), cfg.overwrite)
            except RainMergeError as exc:
                problems.append(Problem(code="output", message=str(exc)))
        rep.resources = resources(cfg, arch, metas, rows, layers, list(cfg.modules), t_reason, t_instr,
                                  tokens["reasoning"], tokens["instruction"])
        rep.lineage = _lineage(metas, warnings, notes)
    rep.problems, rep.warnings, rep.notes, rep.hub_files_fetched = problems, warnings, notes, fetched
    rep.ok = not problems
    return rep


def _tokens(c: Any, which: str, longest: int) -> int:
    """All kept samples' tokens: exact when the file was encoded, else records x the authors' mean."""
    if c.tokens is not None:
        return c.tokens
    return (c.kept or c.records or 0) * min(MEAN_TOKENS[which], longest)


def run_plan(cfg: RainConfig, *, api: Any = None, out: TextIO | None = None) -> int:
    """`rainmerge plan --config FILE`: print the plan to `out` (sys.stdout, looked up at call time);
    return 0 when a merge can proceed, 2 when it would fail (the reasons are printed under PROBLEMS)."""
    rep = build_plan(cfg, api)
    print(format_plan(rep), file=out if out is not None else sys.stdout)
    return 0 if rep.ok else 2

