"""Benchmarks as pinned, versioned datasets, read through `datasets`.

A benchmark is a Hub dataset at a commit (`revision`), or a local copy of one (`local`: a folder in the
Hub layout or one json/jsonl/parquet file), or a plain local file (the toy's embedded sets). What is
pinned is both the source revision and a sha256 over the rows actually used (after the held-out rule
and any limit), so two runs compare on provably the same prompts. Prompts that appear in the
instruction calibration set (same text up to whitespace) are held out, and the kept count is recorded.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..config import _Strict
from ..errors import ConfigError

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SUFFIX_BUILDER = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class BenchmarkSpec(_Strict):
    """One evaluation set: where it comes from, how its rows map to prompts, and its budget."""

    name: str = Field(pattern=r"^[a-z0-9_]+$", description="short name, prefix of every prompt id (ifeval/1043)")
    kind: Literal["if", "reasoning"] = Field(description="instruction following (IFEval checkers) or answers")
    path: str = Field(description="Hub dataset id (e.g. google/IFEval) or a local json/jsonl/parquet file or folder")
    revision: str | None = Field(default=None, description="Hub commit sha (40 hex) the rows are read at; "
                                 "required for a Hub dataset")
    split: str = Field(default="train", description="dataset split")
    local: str | None = Field(default=None, description="offline copy of `path` at `revision` (folder in the Hub "
                              "layout or one data file); read instead of the Hub when present")
    checker: Literal["ifeval", "ifbench"] = Field(default="ifeval", description="instruction checker registry (if)")
    id_field: str = Field(default="key", description="column holding the prompt's stable id")
    prompt_field: str = Field(default="prompt", description="column holding the prompt text")
    answer_field: str = Field(default="answer", description="column holding the gold answer (reasoning)")
    prompt_template: str = Field(default="{prompt}", description="user message; {prompt} is the row's prompt")
    max_new_tokens: int | None = Field(default=None, ge=8, description="budget for this set (default: evaluation's)")
    hold_out_calibration: bool = Field(default=True, description="drop prompts found in the instruction calibration")
    limit: int | None = Field(default=None, ge=1, description="first N rows only (smoke runs)")
    sha256: str | None = Field(default=None, description="expected digest of the rows used; a mismatch stops the run")

    @model_validator(mode="after")
    def _template(self) -> BenchmarkSpec:
        if "{prompt}" not in self.prompt_template:
            raise ValueError(f"benchmark {self.name}: prompt_template must contain {{prompt}}")
        return self

    def is_hub(self) -> bool:
        return not Path(self.path).exists() and self.path.count("/") == 1 and not self.path.startswith((".", "/"))


@dataclass
class Benchmark:
    name: str
    kind: str
    checker: str
    rows: list[dict[str, Any]]  # id ("name/key"), prompt (templated) and the scoring fields
    max_new_tokens: int | None
    meta: dict[str, Any] = field(default_factory=dict)  # path, revision, split, sha256, counts


def rows_digest(rows: list[dict[str, Any]]) -> str:
    """sha256 over the rows used, one canonical JSON line each (key order and whitespace fixed)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()


def _read(spec: BenchmarkSpec) -> tuple[list[dict[str, Any]], str]:
    """The raw rows and where they were read from (a local file/folder, or the Hub at the pinned commit)."""
    import datasets

    datasets.disable_progress_bars()  # a few hundred rows: the per-split bars are noise between progress lines

    source = spec.local or (spec.path if not spec.is_hub() else None)
    if source is not None:
        p = Path(source)
        if not p.exists():
            raise ConfigError(f"benchmark {spec.name}: local copy {p} not found")
        if p.is_file():
            builder = _SUFFIX_BUILDER.get(p.suffix)
            if builder is None:
                raise ConfigError(f"benchmark {spec.name}: {p.name} is not json, jsonl, parquet or csv")
            ds = datasets.load_dataset(builder, data_files={spec.split: str(p)}, split=spec.split)
        else:
            ds = datasets.load_dataset(str(p), split=spec.split)
        return [dict(r) for r in ds], str(p.resolve())
    if not spec.revision or not _COMMIT.match(spec.revision):
        raise ConfigError(f"benchmark {spec.name}: Hub dataset {spec.path} needs `revision:` pinned to a commit sha "
                          f"(40 hex, from the dataset's History tab on the Hub), got {spec.revision!r}")
    try:
        ds = datasets.load_dataset(spec.path, revision=spec.revision, split=spec.split)
    except Exception as exc:  # offline without a cached copy, a wrong split, a gated dataset
        raise ConfigError(f"benchmark {spec.name}: cannot load {spec.path}@{spec.revision[:12]} split "
                          f"{spec.split}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]} "
                          "(offline: set `local:` to a copy of the dataset)") from None
    return [dict(r) for r in ds], f"hf://datasets/{spec.path}@{spec.revision}"


def _normalise(spec: BenchmarkSpec, raw: dict[str, Any], index: int) -> dict[str, Any]:
    for f in (spec.prompt_field,) + ((spec.answer_field,) if spec.kind == "reasoning" else
                                      ("instruction_id_list", "kwargs")):
        if f not in raw:
            raise ConfigError(f"benchmark {spec.name}: row {index} has no column '{f}' (columns: {sorted(raw)})")
    key = raw.get(spec.id_field, index)
    row: dict[str, Any] = {"id": f"{spec.name}/{key}", "key": str(key), "raw_prompt": raw[spec.prompt_field],
                           "prompt": spec.prompt_template.replace("{prompt}", str(raw[spec.prompt_field]))}
    if spec.kind == "if":
        row["instruction_id_list"] = list(raw["instruction_id_list"])
        row["kwargs"] = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in raw["kwargs"]]
    else:
        a = raw[spec.answer_field]
        row["answer"] = a if isinstance(a, (int, str)) else str(a)
    return row


def _norm(text: str) -> str:
    return " ".join(str(text).split())


def calibration_prompts(calibration: str | Path | None) -> set[str]:
    """The instruction calibration set's prompt texts, whitespace-normalised (what evaluation must not reuse).
    Matched by text, not id: ids are per dataset (IFBench's "12" is not IFEval's 12)."""
    if calibration is None or not Path(calibration).is_file():
        return set()
    from ..calibration import load_instruction

    return {_norm(r.prompt) for r in load_instruction(Path(calibration))}


def load_benchmark(spec: BenchmarkSpec, calibration: str | Path | None = None) -> Benchmark:
    """Read, normalise, hold out calibration prompts, limit, digest; check the digest if one is pinned."""
    raw, source = _read(spec)
    rows = [_normalise(spec, r, i) for i, r in enumerate(raw)]
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"benchmark {spec.name}: column '{spec.id_field}' is not unique")
    cal = calibration_prompts(calibration) if spec.hold_out_calibration else set()
    kept = [r for r in rows if _norm(r["raw_prompt"]) not in cal]
    held_out = len(rows) - len(kept)
    if spec.limit:
        kept = kept[:spec.limit]
    if not kept:
        raise ConfigError(f"benchmark {spec.name}: no rows left ({len(rows)} read, all held out or limited)")
    digest = rows_digest(kept)
    if spec.sha256 and spec.sha256 != digest:
        raise ConfigError(f"benchmark {spec.name}: rows digest {digest} differs from the pinned sha256 "
                          f"{spec.sha256}: the data at {source} changed")
    meta = {"name": spec.name, "kind": spec.kind, "path": spec.path, "source": source, "revision": spec.revision,
            "split": spec.split, "sha256": digest, "rows_total": len(rows), "held_out": held_out, "rows_used": len(kept),
            "max_new_tokens": spec.max_new_tokens}
    return Benchmark(spec.name, spec.kind, spec.checker, kept, spec.max_new_tokens, meta)


def embedded_specs(data_dir: str | Path) -> list[BenchmarkSpec]:
    """The toy's embedded sets (eval_instructions.jsonl, eval_problems.jsonl, and the enlarged held-out
    eval_instructions_extra.jsonl and eval_problems_extra.jsonl when present: `python -m rainmerge.toy heldout`) as
    local benchmarks."""
    d = Path(data_dir)
    out = []
    if (d / "eval_instructions.jsonl").is_file():
        out.append(BenchmarkSpec(name="toy_if", kind="if", path=str(d / "eval_instructions.jsonl")))
    if (d / "eval_instructions_extra.jsonl").is_file():
        out.append(BenchmarkSpec(name="toy_if_extra", kind="if", path=str(d / "eval_instructions_extra.jsonl")))
    if (d / "eval_problems.jsonl").is_file():
        out.append(BenchmarkSpec(name="toy_math", kind="reasoning", path=str(d / "eval_problems.jsonl")))
    if (d / "eval_problems_extra.jsonl").is_file():
        out.append(BenchmarkSpec(name="toy_math_extra", kind="reasoning", path=str(d / "eval_problems_extra.jsonl")))
    if not out:
        raise ConfigError(f"no evaluation sets: {d} holds neither eval_instructions.jsonl nor eval_problems.jsonl; "
                          "set evaluation.benchmarks or evaluation.data")
    return out
