"""Per-sample records and the metrics built from them.

Each completion becomes one record: its status ("ok", "truncated": hit the budget, "malformed":
finished without one proper think block), the answer after `</think>`, and its score (reasoning:
`correct`; instruction following: `followed_strict` / `followed_loose` per instruction). A truncated
sample scores as wrong (it never answered), so headline scores include the cost of running out of
budget, and the truncation rate is reported on its own beside them.

Metrics are pass@1 averaged over samples: each prompt's score is the mean over its samples, and
`paired` keeps those per-prompt (numerator, denominator) units so the gates can pair two models
prompt by prompt (rainmerge.eval.stats).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from .ifeval import score_response
from .think import check_answer, parse

# metrics the paired gates can compare (each has per-prompt units)
PAIRED_METRICS = ("if_inst_strict", "if_inst_loose", "if_prompt_strict", "if_prompt_loose", "reasoning_acc",
                  "truncation_rate", "malformed_rate")
# every metric an evaluation reports: the names `promotion.metric` and `promotion.floors` may use
KNOWN_METRICS = PAIRED_METRICS + ("wrong_rate", "think_well_formed", "think_close_missing", "think_present",
                                  "mean_output_tokens", "l_think")
RECORD_FIELDS = ("benchmark", "id", "sample", "prompt_tokens", "output_tokens", "finish_reason", "status",
                 "answer", "correct", "followed_strict", "followed_loose", "text")


def score_sample(row: dict[str, Any], kind: str, checker: str | None, completion: Any, prefilled: bool,
                 benchmark: str) -> dict[str, Any]:
    """One record: the completion's status, answer and score (a truncated sample scores as wrong)."""
    p = parse(completion.text, prefilled, finish_reason=completion.finish_reason)
    rec: dict[str, Any] = {"benchmark": benchmark, "id": completion.id, "sample": completion.sample,
                           "prompt_tokens": completion.prompt_tokens, "output_tokens": completion.output_tokens,
                           "finish_reason": completion.finish_reason, "status": p.status, "answer": p.answer,
                           "well_formed": p.well_formed and p.status == "ok", "has_think": p.has_think,
                           "close_missing": p.close_missing}
    answer = "" if p.status == "truncated" else p.answer
    if kind == "if":
        r = score_response(str(row["id"]), row["prompt"], list(row["instruction_id_list"]), list(row["kwargs"]),
                           answer, checker or "ifeval")
        rec["followed_strict"], rec["followed_loose"] = list(r.strict), list(r.loose)
    else:
        rec["correct"] = bool(answer) and check_answer(answer, row["answer"])
    rec["text"] = completion.text
    return rec


def score(benchmarks: Sequence[Any], completions: Iterable[Any], prefilled: bool) -> list[dict[str, Any]]:
    """Records for every completion, in benchmark then prompt then sample order. `benchmarks` are
    rainmerge.eval.benchmarks.Benchmark (name, kind, checker, rows with a unique `id`)."""
    by_id = {row["id"]: (b, row) for b in benchmarks for row in b.rows}
    out = []
    for c in completions:
        if c.id not in by_id:
            raise ValueError(f"completion for unknown prompt id {c.id!r}")
        b, row = by_id[c.id]
        out.append(score_sample(row, b.kind, b.checker, c, prefilled, b.name))
    order = {row["id"]: i for i, (_, row) in enumerate(by_id.values())}
    return sorted(out, key=lambda r: (order[r["id"]], r["sample"]))


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _units(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per-prompt (numerator, denominator) units of every paired metric, averaged over samples."""
    by_prompt: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_prompt[r["id"]].append(r)
    u: dict[str, dict[str, list[float]]] = {m: {} for m in PAIRED_METRICS}
    for pid, rs in by_prompt.items():
        u["truncation_rate"][pid] = [_mean([r["status"] == "truncated" for r in rs]), 1.0]
        u["malformed_rate"][pid] = [_mean([r["status"] == "malformed" for r in rs]), 1.0]
        if "correct" in rs[0]:
            u["reasoning_acc"][pid] = [_mean([r["correct"] for r in rs]), 1.0]
            continue
        for mode in ("strict", "loose"):
            f = [r[f"followed_{mode}"] for r in rs]
            u[f"if_inst_{mode}"][pid] = [_mean([sum(x) for x in f]), float(len(f[0]))]
            u[f"if_prompt_{mode}"][pid] = [_mean([all(x) for x in f]), 1.0]
    return u


def _ratio(units: dict[str, list[float]]) -> float:
    den = sum(v[1] for v in units.values())
    return sum(v[0] for v in units.values()) / den if den else 0.0


def metrics(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Headline metrics (overall and per benchmark) and the per-prompt `paired` units behind them."""
    units = _units(records)
    out: dict[str, Any] = {m: _ratio(units[m]) for m in PAIRED_METRICS if units[m]}
    reasoning = [r for r in records if "correct" in r]
    finished = [r for r in reasoning if r["status"] != "truncated"]
    out["wrong_rate"] = _mean([not r["correct"] for r in finished]) if reasoning else 0.0
    out["think_well_formed"] = _mean([r["well_formed"] for r in records])
    out["think_close_missing"] = _mean([r["close_missing"] and r["status"] != "truncated" for r in records])
    out["think_present"] = _mean([r["has_think"] for r in records])
    out["mean_output_tokens"] = _mean([r["output_tokens"] for r in records])
    names = sorted({r["benchmark"] for r in records})
    for b in names:  # the same metrics per benchmark, e.g. reasoning_acc.math500
        sub = _units([r for r in records if r["benchmark"] == b])
        out |= {f"{m}.{b}": _ratio(sub[m]) for m in PAIRED_METRICS if sub[m]}
    out["n_instructions"] = len(units["if_prompt_strict"])
    out["n_problems"] = len(units["reasoning_acc"])
    out["n_samples"] = len(records)
    out["paired"] = {m: v for m, v in units.items() if v}
    return out
