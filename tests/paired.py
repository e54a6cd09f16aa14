"""Paired evaluation metrics for gate tests: per-prompt units with exact rates, and the stored form
(ci.* values, no units) a registered version carries."""

from __future__ import annotations

from typing import Any


def units(rate: float, n: int, offset: int = 0) -> dict[str, list[float]]:
    """n one-instruction prompts, the first round(rate * n) (cyclically from `offset`) followed."""
    k = round(rate * n)
    return {f"p{i:04d}": [1.0 if (i - offset) % n < k else 0.0, 1.0] for i in range(n)}


def evaluation(if_rate: float, reasoning: float, n: int = 200, truncated: float = 0.0,
               malformed: float = 0.0, offset: int = 0) -> dict[str, Any]:
    paired = {"if_inst_strict": units(if_rate, n, offset), "reasoning_acc": units(reasoning, n, offset),
              "truncation_rate": units(truncated, n, offset), "malformed_rate": units(malformed, n, offset)}
    out: dict[str, Any] = {m: sum(v[0] for v in u.values()) / n for m, u in paired.items()}
    out |= {"think_well_formed": 1.0 - truncated - malformed, "paired": paired}
    return out


def stored(merged: dict[str, Any], lrm: dict[str, Any], gates: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """What promote registers: metrics plus the intervals' ci.* values, without the per-prompt units."""
    from rainmerge.product.pipeline_config import PromotionGates
    from rainmerge.product.gates import flat, intervals

    ci = flat(intervals(merged, lrm, gates or PromotionGates()))
    strip = lambda d: {k: v for k, v in d.items() if k != "paired"}  # noqa: E731
    return strip(merged) | ci, strip(lrm)
