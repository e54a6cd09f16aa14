"""What each merge method is, without its code: the one list of method names (the config's `method`
Literal, the CLI choices) and the one answer to "does it need calibration stages?".

A bottom-floor module (imports nothing of rainmerge) so the config can name the methods without
importing them; rainmerge.methods pairs every row with its builder (tests/test_methods_contract.py
checks the two agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    # RAIN needs calibration, Stage 1 projectors and Stage 2 coefficients; baselines need only the trio
    needs_stages: bool
    compared_by_default: bool = True  # in `rainmerge.eval compare`'s default table


CATALOG: dict[str, MethodSpec] = {m.name: m for m in (
    MethodSpec("rain", "RAIN-Merging: null-space projected, attention-weighted task vector", True),
    MethodSpec("task_arithmetic", "LRM + lambda * (ITM - base)", False),
    MethodSpec("ties", "TIES over the LRM and ITM task vectors (peft)", False),
    MethodSpec("dare", "DARE-TIES, seeded per tensor (peft)", False, compared_by_default=False),
)}
METHOD_NAMES: tuple[str, ...] = tuple(CATALOG)
MethodName = Literal[METHOD_NAMES]  # type: ignore[valid-type]


def needs_stages(method: str) -> bool:
    """True when `method` runs calibration, Stage 1 and Stage 2 before the merge (RAIN)."""
    return CATALOG[method].needs_stages
