"""Calibration sets in the reference schemas: load, verify, render with the LRM template, locate tokens.

Every sample is rendered once and tokenized once with offsets; think-tag and span positions are
mapped from character offsets of that single encoding (the reference re-tokenizes and drifts by one).
"""

from __future__ import annotations

import bisect
import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .refs import CalibrationRef
from .errors import CalibrationError, ConfigError
from .io.lazy import sha256_file


class ReasoningRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt: str
    reasoning: str
    response: str
    sample_id: str | int | None = None


class RelatedPrompt(BaseModel):
    model_config = ConfigDict(extra="allow")
    instruction_id: str = ""
    prompt_spans: list[str] = []
    response_spans: list[str] = []
    unrelated_response_spans: list[str] = []


class InstructionRecord(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int | str
    prompt: str
    reason: str
    response: str
    instruction_id_list: list[str] = []
    related_prompt_list: list[RelatedPrompt]
    unrelated_response_spans: list[str] = []


def resolve_calibration(ref: CalibrationRef, role: str, cache_dir: str | Path | None) -> tuple[Path, str]:
    """Return (local path, sha256). A URL is fetched only when configured, and only kept if the digest matches."""
    if ref.path:
        p = Path(ref.path).expanduser()
        if not p.is_file():
            if ref.url:
                return _download(ref, role, cache_dir)
            raise ConfigError(f"{role}: calibration file not found: {p}")
        digest = sha256_file(p)
        if ref.sha256 and digest != ref.sha256:
            raise ConfigError(f"{role}: sha256 of {p} is {digest}, expected {ref.sha256}")
        return p.resolve(), digest
    return _download(ref, role, cache_dir)


def _download(ref: CalibrationRef, role: str, cache_dir: str | Path | None) -> tuple[Path, str]:
    assert ref.url and ref.sha256
    cache = Path(cache_dir or Path.home() / ".cache" / "rainmerge" / "calibration").expanduser()
    target = cache / ref.sha256 / Path(ref.url).name
    if target.is_file() and sha256_file(target) == ref.sha256:
        return target, ref.sha256
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(ref.url, timeout=60) as r, open(tmp, "wb") as f:
            while block := r.read(1 << 20):
                f.write(block)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"{role}: cannot download {ref.url}: {exc}") from None
    digest = sha256_file(tmp)
    if digest != ref.sha256:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"{role}: downloaded {ref.url} has sha256 {digest}, expected {ref.sha256}")
    tmp.rename(target)
    return target, digest


def _read_records(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (bad byte at offset {exc.start}, line {line}); "
                          "save the calibration file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from None
    if text.startswith("\ufeff"):  # a UTF-8 byte order mark
        text = text[1:]
    data: Any
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    else:
        data = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}: line {lineno} is not valid JSON: {exc.msg} at column {exc.colno}; "
                                  "expected a JSON array or one JSON object per line") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ConfigError(f"{path}: expected a JSON array or JSON lines of objects")
    return data


def _validate(path: Path, rows: list[dict[str, Any]], model: type[BaseModel], limit: int | None) -> list[Any]:
    rows = rows[:limit] if limit else rows
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(model.model_validate(row))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise ConfigError(f"{path}: record {i}: field '{loc}': {first['msg']}") from None
    if not out:
        raise ConfigError(f"{path}: no records")
    return out


def load_reasoning(path: Path, limit: int | None = None) -> list[ReasoningRecord]:
    return _validate(path, _read_records(path), ReasoningRecord, limit)


def load_instruction(path: Path, limit: int | None = None) -> list[InstructionRecord]:
    return _validate(path, _read_records(path), InstructionRecord, limit)


# ----------------------------------------------------------------------------------------------
# rendering and token positions


@dataclass
class Template:
    """Renders samples as template(prompt) + reasoning + close tag + answer, as the LRM saw them."""

    tokenizer: Any
    think_open: str = "<think>"
    think_close: str = "</think>"
    append_think_prefix: bool = False

    def prefix(self, prompt: str) -> tuple[str, int, int]:
        """Return (rendered prefix, char start of the prompt, char start of the <think> prefill)."""
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        p0 = text.find(prompt)
        t0 = text.rfind(self.think_open)
        if t0 < 0 or t0 < p0 + len(prompt):
            if not self.append_think_prefix:
                raise ConfigError(
                    f"the LRM chat template does not pre-fill '{self.think_open}' in the generation prompt; "
                    "use a template that does (R1 style), or set append_think_prefix: true"
                )
            t0 = len(text)
            text = text + self.think_open + "\n"
        return text, p0, t0

    def full(self, prompt: str, reasoning: str, answer: str) -> tuple[str, int, int, int, int]:
        """(text, prompt char start, <think> char, </think> char, answer char start)."""
        pre, p0, t0 = self.prefix(prompt)
        close = len(pre) + len(reasoning) + 1
        text = pre + reasoning + "\n" + self.think_close + "\n\n"
        return text + answer, p0, t0, close, len(text)

    def check_tokens(self) -> None:
        for tag in (self.think_open, self.think_close):
            ids = self.tokenizer.encode(tag, add_special_tokens=False)
            if len(ids) != 1:
                raise ConfigError(f"'{tag}' is not a single token in the LRM tokenizer (encodes to {ids})")
        self.prefix("ping")

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def token_at(offsets: list[tuple[int, int]], char: int) -> int | None:
    starts = [o[0] for o in offsets]
    i = bisect.bisect_right(starts, char) - 1
    if i >= 0 and offsets[i][0] <= char < offsets[i][1]:
        return i
    return None


def tokens_overlapping(offsets: list[tuple[int, int]], c0: int, c1: int) -> list[int]:
    return [i for i, (a, b) in enumerate(offsets) if a < c1 and b > c0 and b > a]


@dataclass
class ReasoningSample:
    sample_id: str
    input_ids: list[int]
    think_open: int
    think_close: int
    positions: list[int]


@dataclass
class InstructionSpans:
    instruction: list[int]
    related: list[int]
    unrelated: list[int]


@dataclass
class InstructionSample:
    sample_id: str
    input_ids: list[int]
    spans: list[InstructionSpans]
    answer_start: int = 0

    def rows(self) -> list[int]:
        return sorted({t for s in self.spans for t in s.related + s.unrelated})


@dataclass
class EncodeReport:
    total: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def check(self, what: str, max_skip_fraction: float) -> None:
        bad = self.total - self.kept
        if self.kept == 0 or bad > max_skip_fraction * self.total:
            raise CalibrationError(
                f"{what}: {bad} of {self.total} records could not be used ({self.skipped}); "
                f"allowed fraction is {max_skip_fraction}"
            )


def protected_positions(open_idx: int, close_idx: int, n: int, mode: str, radius: int) -> list[int]:
    """Omega_think: the tag tokens, or <think>..+r and </think>-r..</think> (the reference's windows)."""
    if mode == "tags":
        return [open_idx, close_idx]
    pos = set(range(open_idx, min(open_idx + radius, n - 1) + 1))
    pos |= set(range(max(close_idx - radius, 0), close_idx + 1))
    return sorted(pos)


def encode_reasoning(
    records: list[ReasoningRecord], tpl: Template, mode: str, radius: int, max_len: int
) -> tuple[list[ReasoningSample], EncodeReport]:
    rep = EncodeReport(total=len(records))
    out = []
    for i, r in enumerate(records):
        text, _, c_open, c_close, _ = tpl.full(r.prompt, r.reasoning, r.response)
        ids, offs = tpl.encode(text)
        if len(ids) > max_len:
            rep.skip("too_long")
            continue
        t_open, t_close = token_at(offs, c_open), token_at(offs, c_close)
        if t_open is None or t_close is None or offs[t_open][1] - offs[t_open][0] != len(tpl.think_open) \
                or offs[t_close][1] - offs[t_close][0] != len(tpl.think_close):
            rep.skip("think_tag_not_a_token")
            continue
        pos = protected_positions(t_open, t_close, len(ids), mode, radius)
        out.append(ReasoningSample(str(r.sample_id if r.sample_id is not None else i), ids, t_open, t_close, pos))
        rep.kept += 1
    return out, rep


def _occurrences(text: str, needle: str, lo: int, hi: int) -> list[tuple[int, int]]:
    out, needle = [], needle.strip()
    if not needle:
        return out
    at = text.find(needle, lo, hi)
    while at >= 0:
        out.append((at, at + len(needle)))
        at = text.find(needle, at + len(needle), hi)
    return out


def _span_tokens(text: str, offs: list[tuple[int, int]], strings: list[str], a: int, b: int) -> list[int]:
    """Token indices of every occurrence of `strings` inside text[a:b]."""
    return sorted({t for s in strings for c in _occurrences(text, s, a, b) for t in tokens_overlapping(offs, *c)})


def encode_instruction(
    records: list[InstructionRecord], tpl: Template, region: str, max_len: int
) -> tuple[list[InstructionSample], EncodeReport]:
    """I = prompt_spans inside the user prompt; R / U = response / unrelated spans in the answer
    (region 'output' also searches the reasoning)."""
    rep = EncodeReport(total=len(records))
    out = []
    for r in records:
        text, p0, _, c_close, a0 = tpl.full(r.prompt, r.reason, r.response)
        ids, offs = tpl.encode(text)
        if len(ids) > max_len:
            rep.skip("too_long")
            continue
        if p0 < 0:
            rep.skip("prompt_not_in_template")
            continue
        lo = a0 if region == "response" else c_close - len(r.reason) - 1
        spans = []
        for rel in r.related_prompt_list:
            instr = _span_tokens(text, offs, rel.prompt_spans, p0, p0 + len(r.prompt))
            related = _span_tokens(text, offs, rel.response_spans, lo, len(text))
            unrelated = _span_tokens(text, offs, rel.unrelated_response_spans + r.unrelated_response_spans, lo,
                                     len(text))
            if instr and (related or unrelated):
                spans.append(InstructionSpans(instr, related, unrelated))
        if not spans:
            rep.skip("no_locatable_spans")
            continue
        out.append(InstructionSample(str(r.id), ids, spans, token_at(offs, a0) or 0))
        rep.kept += 1
    return out, rep
