"""Reasoning calibration from the user's own prompts: the LRM's own greedy traces, kept when well-formed.

    python -m rainmerge.calibration_builder --model DIR --prompts F.jsonl --out F.json [--max-new-tokens N]

Each prompt (JSON lines with a "prompt" field; an "id" becomes the sample_id) is rendered with the LRM's
chat template (which must pre-fill the think open tag, or pass --append-think-prefix), completed greedily,
and kept when the completion holds exactly one closed think block, a non-empty reasoning, a non-empty
answer, did not run into the token budget, and its think tags are single tokens the Stage-1 encoder finds.
The output is a JSON array in the reference reasoning schema (rainmerge.calibration.ReasoningRecord); a
report (default: OUT with suffix .report.json) records how many were dropped and why. Library only: no
pipeline or tracking imports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from .calibration import ReasoningRecord, Template, encode_reasoning, load_reasoning
from .errors import CalibrationError, ConfigError

# drop reasons, in the order they are checked
REASONS = ("empty_prompt", "duplicate_prompt", "truncated", "no_think_close", "malformed_think", "empty_reasoning",
           "empty_answer", "too_long", "think_tag_not_a_token")


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """JSON lines (or a JSON array) of objects with a string "prompt"."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompts file {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if text.lstrip().startswith("[") else \
            [json.loads(l) for l in text.splitlines() if l.strip()]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON lines: {exc.msg} (line {exc.lineno})") from None
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("prompt"), str):
            raise ConfigError(f"{path}: record {i} has no string field 'prompt'")
    if not rows:
        raise ConfigError(f"{path}: no prompts")
    return rows


def split_trace(completion: str, open_tag: str, close_tag: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a completion that follows a pre-filled open tag; reasoning None when the
    completion does not hold exactly one close tag (or opens another block)."""
    if completion.count(close_tag) != 1 or open_tag in completion:
        return None, ""
    reasoning, answer = completion.split(close_tag, 1)
    return reasoning.strip(), answer.strip()


def classify(completion: str, n_tokens: int, max_new_tokens: int, open_tag: str = "<think>",
             close_tag: str = "</think>") -> tuple[str | None, str, str]:
    """(drop reason or None, reasoning, answer) for one completion of a prompt that pre-fills open_tag."""
    from .eval.think import parse

    p = parse(completion, prefilled_open=True, open_tag=open_tag, close_tag=close_tag)
    if n_tokens >= max_new_tokens:
        return "truncated", "", ""
    if p.close_missing:
        return "no_think_close", "", ""
    reasoning, answer = split_trace(completion, open_tag, close_tag)
    if reasoning is None:
        return "malformed_think", "", ""
    if not reasoning:
        return "empty_reasoning", "", ""
    if not p.well_formed or not answer:
        return "empty_answer", "", ""
    return None, reasoning, answer


def build_calibration(model_dir: str | Path, prompts: list[dict[str, Any]], *, max_new_tokens: int = 512,
                      batch_size: int = 32, device: str = "cpu", append_think_prefix: bool = False,
                      max_seq_len: int = 8192, progress: bool = True, source: str | None = None,
                      examples_per_reason: int = 3) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Generate the LRM's traces for `prompts`; return (records in the reasoning schema, report)."""
    import torch

    from .eval.generate import generate
    from .eval.suite import load_model

    t0 = time.time()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_model(model_dir, device)
    tpl = Template(tok, append_think_prefix=append_think_prefix)
    tpl.check_tokens()
    drops = _Drops(prompts, examples_per_reason)
    todo = _unique_prompts(prompts, drops)
    rendered = [tpl.prefix(prompts[i]["prompt"])[0] for i in todo]
    outs = generate(model, tok, rendered, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                    desc="calibration traces")
    source = source or f"self-generated:{Path(model_dir).name}"
    records: list[dict[str, Any]] = []
    for i, out in zip(todo, outs):
        reason, rec = _trace_record(prompts[i], i, out, tok, tpl, max_new_tokens, max_seq_len, source)
        if reason:
            drops.add(reason, i, out)
        else:
            records.append(rec)
    report = {
        "model": str(model_dir), "n_prompts": len(prompts), "generated": len(todo), "kept": len(records),
        "dropped": {k: v for k, v in drops.counts.items() if v}, "n_dropped": sum(drops.counts.values()),
        "drop_examples": drops.examples, "max_new_tokens": max_new_tokens, "greedy": True, "device": device,
        "seconds": round(time.time() - t0, 2),
    }
    return records, report


class _Drops:
    """Dropped prompts per reason, with the first few of each as examples for the report."""

    def __init__(self, prompts: list[dict[str, Any]], examples_per_reason: int):
        self.prompts, self.per_reason = prompts, examples_per_reason
        self.counts: dict[str, int] = {r: 0 for r in REASONS}
        self.examples: dict[str, list[dict[str, Any]]] = {}

    def add(self, reason: str, i: int, completion: str = "") -> None:
        self.counts[reason] += 1
        if len(self.examples.setdefault(reason, [])) < self.per_reason:
            self.examples[reason].append({"index": i, "prompt": self.prompts[i]["prompt"][:200],
                                          "completion": completion[-300:]})


def _unique_prompts(prompts: list[dict[str, Any]], drops: _Drops) -> list[int]:
    """Indices of the prompts to generate for: empty and repeated prompts are dropped."""
    todo, seen = [], set()
    for i, row in enumerate(prompts):
        p = row["prompt"]
        if not p.strip():
            drops.add("empty_prompt", i)
        elif p in seen:
            drops.add("duplicate_prompt", i)
        else:
            seen.add(p)
            todo.append(i)
    return todo


def _trace_record(row: dict[str, Any], i: int, completion: str, tok: Any, tpl: Template, max_new_tokens: int,
                  max_seq_len: int, source: str) -> tuple[str | None, dict[str, Any]]:
    """(drop reason, {}) or (None, the record in the reasoning schema) for one greedy completion."""
    n_tok = len(tok(completion, add_special_tokens=False)["input_ids"])
    reason, reasoning, answer = classify(completion, n_tok, max_new_tokens, tpl.think_open, tpl.think_close)
    if reason:
        return reason, {}
    sid = row.get("id", row.get("sample_id", row.get("key", i)))
    rec = {"prompt": row["prompt"], "reasoning": reasoning, "response": answer, "sample_id": sid, "source": source}
    # the Stage-1 encoder must find both think tags as single tokens in the rendered sample
    _, rep = encode_reasoning([ReasoningRecord.model_validate(rec)], tpl, "tags", 0, max_seq_len)
    if rep.kept != 1:
        return next(iter(rep.skipped)), {}
    return None, rec


def write(records: list[dict[str, Any]], report: dict[str, Any], out: str | Path,
          report_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write the calibration JSON (only when it has records) and the report; check the output loads."""
    out = Path(out)
    rp = Path(report_path) if report_path else out.with_suffix(".report.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    rp.parent.mkdir(parents=True, exist_ok=True)
    if records:
        text = json.dumps(records, indent=1, ensure_ascii=False)
        out.write_text(text, encoding="utf-8")
        load_reasoning(out)  # the schema the merge reads
        report = {**report, "output": str(out), "sha256": hashlib.sha256(text.encode()).hexdigest()}
    rp.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return out, rp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rainmerge.calibration_builder",
                                 description="reasoning calibration from your own prompts and the LRM's traces")
    ap.add_argument("--model", required=True, help="LRM folder (weights + tokenizer with its chat template)")
    ap.add_argument("--prompts", required=True, help='JSON lines with a "prompt" field (optional "id")')
    ap.add_argument("--out", required=True, help="calibration JSON to write (reference reasoning schema)")
    ap.add_argument("--report", help="report JSON (default: OUT with suffix .report.json)")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--append-think-prefix", action="store_true",
                    help="append the open tag when the chat template does not pre-fill it")
    ap.add_argument("--min-kept", type=int, default=1, help="fail (exit 1) when fewer records are kept")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    try:
        prompts = read_prompts(a.prompts)
        records, report = build_calibration(a.model, prompts, max_new_tokens=a.max_new_tokens,
                                            batch_size=a.batch_size, device=a.device,
                                            append_think_prefix=a.append_think_prefix, progress=not a.quiet)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out, rp = write(records, report, a.out, a.report)
    print(f"kept {report['kept']} of {report['n_prompts']} prompts; dropped {report['dropped'] or 'none'}"
          f" -> {out if records else '(no output)'}; report {rp}")
    if len(records) < a.min_kept:
        print(f"error: {CalibrationError.__name__}: only {len(records)} well-formed traces (need {a.min_kept})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
