"""The plan's LRM tokenizer checks: the think tags as single tokens inside the embedding, and a chat
template whose generation prompt pre-fills `<think>` (what Stages 1-2 encode calibration with)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import MergeConfig
from .plan_report import Problem, TemplateReport, ThinkToken

if TYPE_CHECKING:
    from .sources import ModelMeta

PROBE_PROMPT = "What is 2 + 3?"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def load_tokenizer(folder: Path | None) -> tuple[Any, str | None]:
    """(tokenizer, None), or (None, why not); never trust_remote_code."""
    if folder is None:
        return None, "no tokenizer files"
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        return None, f"no tokenizer files ({', '.join(_TOKENIZER_FILES)})"
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False), None
    except Exception as exc:
        return None, f"cannot load the tokenizer: {exc}"


def think_tokens(tok: Any, tags: list[str], embed_rows: int | None) -> list[ThinkToken]:
    """How each tag encodes: its id, whether it is added/special or in the base vocabulary, and whether
    the id lies inside the LRM's embedding rows."""
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


def template_check(tok: Any, cfg: MergeConfig) -> TemplateReport:
    """Render a probe prompt: does the generation prompt end with `think_open` (the template pre-fills
    it, or append_think_prefix adds it), where does that token sit, and how is BOS handled."""
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


def tokenizer_checks(cfg: MergeConfig, reasoning: ModelMeta, problems: list[Problem], notes: list[str]
                     ) -> tuple[list[ThinkToken], TemplateReport | None, Any]:
    """The LRM tokenizer, for a method that reads text: (think tokens, template report, the calibration
    `Template` when both are usable else None). Problems: no tokenizer, tags that are not single tokens
    inside the embedding, a template that is missing, does not render or does not pre-fill."""
    tok, why = load_tokenizer(reasoning.small_dir)
    if tok is None:
        problems.append(Problem(code="tokenizer", role="reasoning",
                                message=f"reasoning model {cfg.reasoning.path}: {why}"))
        return [], None, None
    rows_embed = (reasoning.report.embed_shape or [None])[0]
    if rows_embed is not None and len(tok) > rows_embed:
        extra = tok.convert_ids_to_tokens(list(range(rows_embed, min(len(tok), rows_embed + 5))))
        notes.append(f"the LRM tokenizer has {len(tok)} tokens but the LRM embeds {rows_embed} rows: "
                     f"ids >= {rows_embed} ({extra}) would fail in a forward pass")
    tags = think_tokens(tok, [cfg.think_open, cfg.think_close], rows_embed)
    try:
        template = template_check(tok, cfg)
    except Exception as exc:
        template = TemplateReport(has_template=True, prefill="unknown")
        problems.append(Problem(code="template_error", role="reasoning",
                                message=f"the chat template does not render: {exc}"))
    problems.extend(_tag_problems(tags, rows_embed))
    problems.extend(_template_problems(template, cfg))
    tags_ok = all(t.single_token and t.within_embedding is not False for t in tags)
    if not (tags_ok and template.prefill in ("template", "appended")):
        return tags, template, None
    from ..calibration import Template

    return tags, template, Template(tok, cfg.think_open, cfg.think_close, cfg.append_think_prefix)


def _tag_problems(tags: list[ThinkToken], rows_embed: int | None) -> list[Problem]:
    out = []
    for t in tags:
        if not t.single_token:
            out.append(Problem(code="think_token_missing", role="reasoning", message=(
                f"'{t.tag}' is not a single token in the LRM tokenizer (encodes to {t.ids[:8]})")))
        elif t.within_embedding is False:
            out.append(Problem(code="think_token_missing", role="reasoning", message=(
                f"'{t.tag}' has id {t.id}, outside the LRM's {rows_embed} embedding rows")))
    return out


def _template_problems(template: TemplateReport, cfg: MergeConfig) -> list[Problem]:
    if not template.has_template:
        return [Problem(code="no_chat_template", role="reasoning", message="the LRM tokenizer has no chat template")]
    if template.prefill == "missing":
        return [Problem(code="template_no_prefill", role="reasoning", message=(
            f"template without pre-fill: the generation prompt does not end with '{cfg.think_open}' "
            "(old R1 snapshot or a non-R1 template); use a template that pre-fills it, "
            "or set append_think_prefix: true"))]
    return []
