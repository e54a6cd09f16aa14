"""What the plan checks and estimates from that metadata: architecture and shapes, think tokens and
template, calibration rows against each input's width, resources, lineage."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..arch import FEATURE_GROUP, ArchSpec, arch_from_config
from ..config import CalibrationRef, RainConfig
from ..errors import RainMergeError
from ..projection import capacity
from .report import (CalibrationReport, Lineage, ModuleShape, Problem, RowsWidth, TemplateReport,
                     ThinkToken)
from .sources import _Meta

# Published distillation sources (DeepSeek-R1 model card, "DeepSeek-R1-Distill Models" table).
KNOWN_LINEAGE = {
    "deepseek-ai/deepseek-r1-distill-qwen-1.5b": "Qwen/Qwen2.5-Math-1.5B",
    "deepseek-ai/deepseek-r1-distill-qwen-7b": "Qwen/Qwen2.5-Math-7B",
    "deepseek-ai/deepseek-r1-distill-qwen-14b": "Qwen/Qwen2.5-14B",
    "deepseek-ai/deepseek-r1-distill-qwen-32b": "Qwen/Qwen2.5-32B",
    "deepseek-ai/deepseek-r1-distill-llama-8b": "meta-llama/Llama-3.1-8B",
    "deepseek-ai/deepseek-r1-distill-llama-70b": "meta-llama/Llama-3.3-70B-Instruct",
}
# the authors' calibration files (rain-method.md, configs/*.yaml): sha256 -> record count
KNOWN_CALIBRATION = {
    "bebb4cb5216f474fad2994128a4e70ca5ca0eeb89ee6b528db93a135b2b694e5": 150,
    "b52460a93f499d32c753feb8150f829b7251ac299b20df0521232b4ddd32fb14": 365,
}
AUTHORS_REASONING_COUNT = 150
AUTHORS_INSTRUCTION_COUNT = 365
PROBE_PROMPT = "What is 2 + 3?"


_CMP_FIELDS = ("num_layers", "hidden", "num_heads", "num_kv_heads", "head_dim", "intermediate")



def _arch_checks(metas: dict[str, _Meta], problems: list[Problem], warnings: list[str]) -> dict[str, ArchSpec]:
    specs: dict[str, ArchSpec] = {}
    refused: dict[str, list[str]] = {}  # message (without the role) -> roles: one problem per distinct refusal
    for role, m in metas.items():
        if m.config is None:
            continue
        try:
            specs[role] = arch_from_config(m.config, role)
        except RainMergeError as exc:
            refused.setdefault(str(exc).removeprefix(f"{role}: "), []).append(role)
    for msg, roles in refused.items():  # rendered as "role: message", so the role is not in the message
        problems.append(Problem(code="arch_unsupported", role=", ".join(roles), message=msg))
    ref = specs.get("reasoning")
    if ref is None:
        return specs
    for role, s in specs.items():
        if role == "reasoning":
            continue
        if s.model_type != ref.model_type:
            problems.append(Problem(code="arch_mismatch", role=role, message=(
                f"architecture family differs: reasoning is '{ref.model_type}', {role} is '{s.model_type}'")))
            continue
        for f in _CMP_FIELDS:
            a, b = getattr(ref, f), getattr(s, f)
            if a != b:
                problems.append(Problem(code="arch_mismatch", role=role, message=(
                    f"{f} differs: reasoning={a}, {role}={b}; these models cannot be merged")))
        if s.vocab_size != ref.vocab_size:
            warnings.append(f"vocab size differs (reasoning={ref.vocab_size}, {role}={s.vocab_size}); "
                            "embeddings and lm_head are never merged, so the LRM's are kept")
    return specs


def _shape_checks(arch: ArchSpec, layers: list[int], modules: list[str], metas: dict[str, _Meta],
                  problems: list[Problem]) -> list[ModuleShape]:
    rows = []
    for mod in modules:
        want = arch.weight_shape(mod)
        status, dtypes = {}, {}
        for role, m in metas.items():
            if not m.tensors:
                status[role] = "unread"
                continue
            bad, seen = [], set()
            for layer in layers:
                name = arch.weight_name(layer, mod)
                got = m.tensors.get(name)
                if got is None:
                    bad.append(f"{role}: merged tensor {name} is missing")
                    continue
                seen.add(got[1])
                if tuple(got[0]) != want:
                    bad.append(f"{role}: {name} has shape {tuple(got[0])}, expected {want}")
                elif not got[1].startswith(("F", "BF")):
                    bad.append(f"{role}: {name} has non-float dtype {got[1]}")
            status[role] = "ok" if not bad else f"{len(bad)} bad"
            dtypes[role] = ",".join(sorted(seen))
            for msg in bad[:5]:
                code = "missing_tensor" if "missing" in msg else "shape_mismatch" if "shape" in msg else "dtype"
                problems.append(Problem(code=code, role=role, message=msg))
            if len(bad) > 5:
                problems.append(Problem(code="shape_mismatch", role=role,
                                        message=f"{role}: ... and {len(bad) - 5} more bad '{mod}' tensors"))
        rows.append(ModuleShape(module=mod, tensor=arch.weight_name(0, mod).replace(".0.", ".{L}.", 1),
                                expected=list(want), checked=len(layers), status=status, dtypes=dtypes))
    return rows


def _load_tokenizer(folder: Path | None) -> tuple[Any, str | None]:
    if folder is None:
        return None, "no tokenizer files"
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((folder / f).is_file() for f in names):
        return None, f"no tokenizer files ({', '.join(names)})"
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False), None
    except Exception as exc:
        return None, f"cannot load the tokenizer: {exc}"


def _think_tokens(tok: Any, tags: list[str], embed_rows: int | None) -> list[ThinkToken]:
    out = []
    added = {v.content: (k, v) for k, v in getattr(tok, "added_tokens_decoder", {}).items()}
    vocab = tok.get_vocab()
    for tag in tags:
        ids = list(tok.encode(tag, add_special_tokens=False))
        t = ThinkToken(tag=tag, ids=ids, single_token=len(ids) == 1)
        if tag in added:
            t.id, t.added, t.special = added[tag][0], True, bool(added[tag][1].special)
        elif tag in vocab:
            t.id, t.in_base_vocab = vocab[tag], True
        elif len(ids) == 1:
            t.id = ids[0]
        if t.id is not None and embed_rows is not None:
            t.within_embedding = t.id < embed_rows
        out.append(t)
    return out


def _template_check(tok: Any, cfg: RainConfig) -> TemplateReport:
    if not getattr(tok, "chat_template", None):
        return TemplateReport(has_template=False, prefill="missing")
    rep = TemplateReport(has_template=True, bos_token=getattr(tok, "bos_token", None))
    text = tok.apply_chat_template([{"role": "user", "content": PROBE_PROMPT}], tokenize=False,
                                   add_generation_prompt=True)
    rep.rendered_tail = text[-48:]
    p0 = text.find(PROBE_PROMPT)
    t0 = text.rfind(cfg.think_open)
    if t0 >= 0 and p0 >= 0 and t0 >= p0 + len(PROBE_PROMPT):
        rep.prefill = "template"
    else:
        rep.prefill = "appended" if cfg.append_think_prefix else "missing"
        if cfg.append_think_prefix:
            t0 = len(text)
            text = text + cfg.think_open + "\n"
    if rep.bos_token:
        rep.bos_in_template = text.startswith(rep.bos_token)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = list(enc["input_ids"]), list(enc["offset_mapping"])
    if rep.bos_token:
        bos_id = tok.convert_tokens_to_ids(rep.bos_token)
        rep.bos_count_when_encoded = sum(1 for i in ids[:2] if i == bos_id)
    if rep.prefill in ("template", "appended"):
        rep.think_open_token_at = next((i for i, (a, b) in enumerate(offs) if a == t0 and b - a == len(cfg.think_open)),
                                       None)
    return rep


def _calibration(cfg: RainConfig, which: str, ref: CalibrationRef, tpl: Any, problems: list[Problem]
                 ) -> tuple[CalibrationReport, list[Any]]:
    """Resolve without downloading; encode exactly when the file is local and the template works."""
    from ..calibration import (encode_instruction, encode_reasoning, load_instruction, load_reasoning)
    from ..io.lazy import sha256_file

    role = f"{which}_calibration"
    rep = CalibrationReport(role=role, source="missing")
    path: Path | None = None
    if ref.path and Path(ref.path).expanduser().is_file():
        path, rep.source = Path(ref.path).expanduser().resolve(), "local"
    elif ref.url and ref.sha256:
        cache = Path(cfg.cache_dir or Path.home() / ".cache" / "rainmerge" / "calibration").expanduser()
        hit = cache / ref.sha256 / Path(ref.url).name
        if hit.is_file():
            path, rep.source = hit, "cache"
        else:
            rep.source, rep.location, rep.sha256 = "url-not-fetched", ref.url, ref.sha256
    if rep.source == "missing":
        problems.append(Problem(code="calibration_missing", role=role,
                                message=f"calibration file not found: {ref.path} (and no url)"))
        return rep, []
    if path is not None:
        rep.location = str(path)
        rep.sha256 = sha256_file(path)
        if ref.sha256 and rep.sha256 != ref.sha256:
            problems.append(Problem(code="calibration_sha_mismatch", role=role,
                                    message=f"sha256 of {path} is {rep.sha256}, expected {ref.sha256}"))
            return rep, []
    known = KNOWN_CALIBRATION.get(rep.sha256 or "")
    default_n = AUTHORS_REASONING_COUNT if which == "reasoning" else AUTHORS_INSTRUCTION_COUNT
    if path is None or tpl is None:
        n = known or default_n
        rep.records = min(n, ref.max_samples) if ref.max_samples else n
        rep.note = ("estimated: file not fetched" if path is None else "estimated: no usable LRM template") + (
            "" if known else f" (assumed the authors' {default_n} records)")
        if which == "reasoning":
            s1 = cfg.stage1
            rep.positions_per_sample = 2 if s1.positions == "tags" else 2 * (s1.radius + 1)
            rep.kept = rep.records
            rep.rows = int(rep.kept * rep.positions_per_sample)
        return rep, []
    try:
        if which == "reasoning":
            recs = load_reasoning(path, ref.max_samples)
            s1 = cfg.stage1
            samples, er = encode_reasoning(recs, tpl, s1.positions, s1.radius, s1.max_seq_len)
            rep.rows = sum(len(s.positions) for s in samples)
            rep.positions_per_sample = rep.rows / len(samples) if samples else 0.0
            skip = s1.max_skip_fraction
        else:
            recs = load_instruction(path, ref.max_samples)
            samples, er = encode_instruction(recs, tpl, cfg.stage2.span_region, cfg.stage2.max_seq_len)
            skip = cfg.stage2.max_skip_fraction
    except RainMergeError as exc:
        problems.append(Problem(code="calibration_invalid", role=role, message=str(exc)))
        return rep, []
    rep.records, rep.kept, rep.skipped, rep.exact = er.total, er.kept, dict(er.skipped), True
    rep.max_tokens = max((len(s.input_ids) for s in samples), default=0)
    rep.tokens = sum(len(s.input_ids) for s in samples)
    try:
        er.check(f"{which} calibration {path.name}", skip)
    except RainMergeError as exc:
        problems.append(Problem(code="calibration_too_few", role=role, message=str(exc)))
    return rep, samples


def _rows_vs_width(arch: ArchSpec, modules: list[str], rows: int, exact: bool, cfg: RainConfig,
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


def _norm(name: str | None) -> str:
    return (name or "").strip().lower().rstrip("/")


def _lineage(metas: dict[str, _Meta], warnings: list[str], notes: list[str]) -> Lineage:
    inputs = {}
    for role, m in metas.items():
        r = m.report
        entry: dict[str, Any] = {"source": r.source, "path": r.path, "name": r.name, "revision": r.revision,
                                 "commit": r.commit, "config_sha256": r.config_sha256,
                                 "weights_sha256": {w.name: w.sha256 for w in r.weight_files}}
        inputs[role] = entry
    reasoning, base = metas["reasoning"].report, metas["base"].report
    declared, source = list(reasoning.declared_base), "model card base_model" if reasoning.declared_base else None
    if not declared:
        known = KNOWN_LINEAGE.get(_norm(reasoning.name)) or KNOWN_LINEAGE.get(_norm(reasoning.path))
        if known:
            declared, source = [known], "published distillation source (DeepSeek-R1 model card)"
    lin = Lineage(inputs=inputs, lrm_declared_base=declared, lrm_declared_from=source, configured_base=base.name)
    if declared:
        if not base.name:
            notes.append(f"lineage: the LRM declares base {declared} ({source}); the configured base is a local "
                         "folder that names no origin, so it cannot be compared")
        elif _norm(metas["instruct"].report.name) in {_norm(d) for d in declared}:
            lin.caveat = (f"lineage: the LRM descends from the configured ITM {metas['instruct'].report.name} "
                          f"({source}), not from a base: tau_I = ITM - {base.name} is applied a second time to a "
                          "model that already carries it (the merge re-applies instruction tuning, it does not "
                          "transfer it)")
            warnings.append(lin.caveat)
        elif _norm(base.name) not in {_norm(d) for d in declared}:
            lin.caveat = (f"lineage: the LRM descends from {', '.join(declared)} ({source}), not from the configured "
                          f"base {base.name}; tau_I = ITM - base is applied to a model that shares only a common "
                          "ancestor with that base")
            warnings.append(lin.caveat)
    return lin


# ---------------------------------------------------------------------------------------------------
# entry points
