"""The plan's calibration checks: each file resolved without downloading, its records and Stage 1 rows
counted (exactly when the file is local and the LRM template works, else estimated), and the rows against
each projected input's width."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..arch import FEATURE_GROUP, ArchSpec
from ..config import CalibrationRef, MergeConfig
from ..errors import RainMergeError
from ..projection import capacity
from .plan_report import CalibrationReport, Problem, RowsWidth

# the authors' calibration files (rain-method.md, configs/*.yaml): sha256 -> record count
KNOWN_CALIBRATION = {
    "bebb4cb5216f474fad2994128a4e70ca5ca0eeb89ee6b528db93a135b2b694e5": 150,
    "b52460a93f499d32c753feb8150f829b7251ac299b20df0521232b4ddd32fb14": 365,
}
AUTHORS_REASONING_COUNT = 150
AUTHORS_INSTRUCTION_COUNT = 365
# mean tokens per record of the authors' files (rain-method.md F.1: reasoning num_tokens mean 1,446;
# instruction: ~3.4k characters per full text, ~900 tokens [estimate]) when a plan cannot encode them
MEAN_TOKENS = {"reasoning": 1446, "instruction": 900}


@dataclass
class Workload:
    """What the calibration sets make Stages 1-2 process: the resource estimates' inputs."""

    reason_len: int  # longest reasoning sample (tokens): Stage 1 activations
    instr_len: int  # longest instruction sample: Stage 2 activations
    rows: int = 0  # Stage 1 protected rows per layer
    exact: bool = False  # rows counted by encoding the file (else estimated)
    reason_tokens: int = 0  # all kept samples' tokens: the hidden states of the layer-sequential path
    instr_tokens: int = 0


def calibration_checks(cfg: MergeConfig, tpl: Any, arch: ArchSpec | None, problems: list[Problem],
                       warnings: list[str]) -> tuple[list[CalibrationReport], list[RowsWidth], Workload]:
    """RAIN's calibration files (other methods read none) and the rows vs width table."""
    load = Workload(reason_len=cfg.stage1.max_seq_len, instr_len=cfg.stage2.max_seq_len)
    reports: list[CalibrationReport] = []
    if cfg.method != "rain":
        return reports, [], load
    if cfg.reasoning_calibration is not None:
        c = calibration_report(cfg, "reasoning", cfg.reasoning_calibration, tpl, problems)
        reports.append(c)
        load.rows, load.exact = c.rows or 0, c.exact
        load.reason_len = c.max_tokens or load.reason_len
        load.reason_tokens = _all_tokens(c, "reasoning", load.reason_len)
    if cfg.stage2.enabled and cfg.instruction_calibration is not None:
        c = calibration_report(cfg, "instruction", cfg.instruction_calibration, tpl, problems)
        reports.append(c)
        load.instr_len = c.max_tokens or load.instr_len
        load.instr_tokens = _all_tokens(c, "instruction", load.instr_len)
    rows_width = [] if arch is None else rows_vs_width(arch, list(cfg.modules), load.rows, load.exact, cfg,
                                                        warnings)
    return reports, rows_width, load


def _all_tokens(c: CalibrationReport, which: str, longest: int) -> int:
    """All kept samples' tokens: exact when the file was encoded, else records x the authors' mean."""
    if c.tokens is not None:
        return c.tokens
    return (c.kept or c.records or 0) * min(MEAN_TOKENS[which], longest)


def calibration_report(cfg: MergeConfig, which: str, ref: CalibrationRef, tpl: Any, problems: list[Problem]
                       ) -> CalibrationReport:
    """Resolve without downloading; encode exactly when the file is local and the template works."""
    role = f"{which}_calibration"
    rep = CalibrationReport(role=role, source="missing")
    path = _locate(cfg, ref, rep)
    if rep.source == "missing":
        problems.append(Problem(code="calibration_missing", role=role,
                                message=f"calibration file not found: {ref.path} (and no url)"))
        return rep
    if path is not None and not _digest_matches(path, ref, rep, problems):
        return rep
    if path is None or tpl is None:
        _estimate(cfg, which, ref, rep, fetched=path is not None)
    else:
        _encode(cfg, which, ref, path, tpl, rep, problems)
    return rep


def _locate(cfg: MergeConfig, ref: CalibrationRef, rep: CalibrationReport) -> Path | None:
    """The local file (configured path, or the calibration cache of a pinned url); sets rep.source."""
    if ref.path and Path(ref.path).expanduser().is_file():
        rep.source = "local"
        return Path(ref.path).expanduser().resolve()
    if ref.url and ref.sha256:
        cache = Path(cfg.cache_dir or Path.home() / ".cache" / "rainmerge" / "calibration").expanduser()
        hit = cache / ref.sha256 / Path(ref.url).name
        if hit.is_file():
            rep.source = "cache"
            return hit
        rep.source, rep.location, rep.sha256 = "url-not-fetched", ref.url, ref.sha256
    return None


def _digest_matches(path: Path, ref: CalibrationRef, rep: CalibrationReport, problems: list[Problem]) -> bool:
    from ..io.lazy import sha256_file

    rep.location = str(path)
    rep.sha256 = sha256_file(path)
    if ref.sha256 and rep.sha256 != ref.sha256:
        problems.append(Problem(code="calibration_sha_mismatch", role=rep.role,
                                message=f"sha256 of {path} is {rep.sha256}, expected {ref.sha256}"))
        return False
    return True


def _estimate(cfg: MergeConfig, which: str, ref: CalibrationRef, rep: CalibrationReport, fetched: bool) -> None:
    """Records (and Stage 1 rows) without encoding: the authors' count for a known file, else assumed."""
    known = KNOWN_CALIBRATION.get(rep.sha256 or "")
    default_n = AUTHORS_REASONING_COUNT if which == "reasoning" else AUTHORS_INSTRUCTION_COUNT
    n = known or default_n
    rep.records = min(n, ref.max_samples) if ref.max_samples else n
    rep.note = ("estimated: no usable LRM template" if fetched else "estimated: file not fetched") + (
        "" if known else f" (assumed the authors' {default_n} records)")
    if which == "reasoning":
        s1 = cfg.stage1
        rep.positions_per_sample = 2 if s1.positions == "tags" else 2 * (s1.radius + 1)
        rep.kept = rep.records
        rep.rows = int(rep.kept * rep.positions_per_sample)


def _encode(cfg: MergeConfig, which: str, ref: CalibrationRef, path: Path, tpl: Any, rep: CalibrationReport,
            problems: list[Problem]) -> None:
    """Encode the file as Stages 1-2 will: exact records kept and skipped, rows, tokens."""
    from ..calibration import encode_instruction, encode_reasoning, load_instruction, load_reasoning

    try:
        if which == "reasoning":
            s1 = cfg.stage1
            samples, er = encode_reasoning(load_reasoning(path, ref.max_samples), tpl, s1.positions, s1.radius,
                                           s1.max_seq_len)
            rep.rows = sum(len(s.positions) for s in samples)
            rep.positions_per_sample = rep.rows / len(samples) if samples else 0.0
            skip = s1.max_skip_fraction
        else:
            samples, er = encode_instruction(load_instruction(path, ref.max_samples), tpl, cfg.stage2.span_region,
                                             cfg.stage2.max_seq_len)
            skip = cfg.stage2.max_skip_fraction
    except RainMergeError as exc:
        problems.append(Problem(code="calibration_invalid", role=rep.role, message=str(exc)))
        return
    rep.records, rep.kept, rep.skipped, rep.exact = er.total, er.kept, dict(er.skipped), True
    rep.max_tokens = max((len(s.input_ids) for s in samples), default=0)
    rep.tokens = sum(len(s.input_ids) for s in samples)
    try:
        er.check(f"{which} calibration {path.name}", skip)
    except RainMergeError as exc:
        problems.append(Problem(code="calibration_too_few", role=rep.role, message=str(exc)))


def rows_vs_width(arch: ArchSpec, modules: list[str], rows: int, exact: bool, cfg: MergeConfig,
                  warnings: list[str]) -> list[RowsWidth]:
    """Per projected input: removing k of `width` directions from a random delta keeps ~sqrt(1 - k/width)."""
    s1 = cfg.stage1
    out = []
    groups: dict[str, list[str]] = {}
    for m in modules:
        groups.setdefault(FEATURE_GROUP[m], []).append(m)
    # the widths and caps are the projection's own (o_proj: full input unless stage1.o_proj is per_head)
    cap_of = capacity(arch, rows, s1.max_rank_fraction, s1.o_proj, tuple(modules))
    per_head = s1.o_proj == "per_head"
    for g in ("attn_in", "o_in", "mlp_in", "down_in"):
        if g not in groups:
            continue
        width, cap = cap_of[g]["width"], cap_of[g]["cap"]
        per_layer = arch.num_heads if g == "o_in" and per_head else 1
        rank = min(rows, width)  # features of distinct positions are (numerically) full rank in practice
        removed = min(rank, cap)
        binds = rank > cap
        rw = RowsWidth(group=g, modules=groups[g], width=width, bases_per_layer=per_layer, rows=rows,
                       removed=removed, cap=cap, kept_norm=round(math.sqrt(max(0.0, 1 - removed / width)), 3),
                       cap_binds=binds, exact_rows=exact)
        out.append(rw)
        if binds:
            what = f"{g} ({'/'.join(groups[g])}, width {width}{' per head' if per_layer > 1 else ''})"
            warnings.append(f"rank cap binds: identity not exact for {what}: {rows} protected rows >= cap {cap} "
                            f"(= {s1.max_rank_fraction} x width); only {removed} directions are removed, "
                            f"kept norm ~{rw.kept_norm}")
    if s1.energy < 1.0:
        warnings.append(f"stage1.energy={s1.energy} < 1: fewer directions are removed than estimated here, "
                        "and the identity at protected positions is not exact")
    return out
