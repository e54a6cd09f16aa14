"""Merge methods behind one interface, and the one table every list of methods derives from.

Each method returns W_LRM + delta in float32/float64; Stage 3 casts once to the LRM dtype.
The config's `method` choices, the CLI choices, `rainmerge.eval compare`'s defaults and
`build_method` all read METHODS, so adding a method is one file plus one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class Site:
    layer: int
    module: str  # q k v o gate up down
    name: str  # tensor name


class MergeMethod(Protocol):
    name: str

    def merge(self, site: Site, reasoning: torch.Tensor, base: torch.Tensor, instruct: torch.Tensor) -> torch.Tensor:
        """All inputs float32 (or float64); returns the merged weight in the same dtype."""
        ...

    def stats(self) -> dict[str, dict[str, float]]:
        ...


@dataclass(frozen=True)
class MethodInfo:
    name: str
    summary: str
    # RAIN needs calibration, Stage 1 projectors and Stage 2 coefficients; baselines need only the trio
    needs_stages: bool
    build: Callable[..., MergeMethod]
    compared_by_default: bool = True  # in `rainmerge.eval compare`'s default table


def _rain(cfg: Any, arch: Any = None, bases: Any = None, coeffs: Any = None, device: str = "cpu") -> MergeMethod:
    from .rain import Rain

    return Rain(arch, bases, coeffs, cfg.strength, device, cfg.stage1.min_kept_norm, rounding=cfg.stage1.rounding)


def _task_arithmetic(cfg: Any, **_: Any) -> MergeMethod:
    from .task_arithmetic import TaskArithmetic

    return TaskArithmetic(cfg.strength)


def _ties(cfg: Any, **_: Any) -> MergeMethod:
    from .ties import Ties

    return Ties(cfg.strength, cfg.density)


def _dare(cfg: Any, **_: Any) -> MergeMethod:
    from .dare import Dare

    return Dare(cfg.strength, cfg.density, cfg.seed)


METHODS: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("rain", "RAIN-Merging: null-space projected, attention-weighted task vector", True, _rain),
    MethodInfo("task_arithmetic", "LRM + lambda * (ITM - base)", False, _task_arithmetic),
    MethodInfo("ties", "TIES over the LRM and ITM task vectors (peft)", False, _ties),
    MethodInfo("dare", "DARE-TIES, seeded per tensor (peft)", False, _dare, compared_by_default=False),
)}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def build_method(cfg: Any, **stages: Any) -> MergeMethod:
    """The merge method named by cfg.method; RAIN also takes arch, bases, coeffs and device."""
    return METHODS[cfg.method].build(cfg, **stages)
