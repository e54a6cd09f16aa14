"""Merge methods behind one interface (methods/base.py), each row of the catalog
(rainmerge.method_catalog) paired with the builder that makes it.

Each method returns W_LRM + delta in float32/float64; Stage 3 casts once to the LRM dtype.
The config's `method` choices and the CLI choices read the catalog; `rainmerge.eval compare`'s
defaults and `build_method` read METHODS. A new method: its file here, its row in the catalog and
its builder below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..method_catalog import CATALOG, METHOD_NAMES, MethodSpec, needs_stages
from .base import MergeMethod, MethodBase, Site

__all__ = ["METHODS", "METHOD_NAMES", "MergeMethod", "MethodBase", "MethodInfo", "Site", "build_method",
           "needs_stages"]


@dataclass(frozen=True, kw_only=True)
class MethodInfo(MethodSpec):
    build: Callable[..., MergeMethod]


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


BUILDERS: dict[str, Callable[..., MergeMethod]] = {"rain": _rain, "task_arithmetic": _task_arithmetic,
                                                   "ties": _ties, "dare": _dare}
METHODS: dict[str, MethodInfo] = {n: MethodInfo(**vars(s), build=BUILDERS[n]) for n, s in CATALOG.items()}


def build_method(cfg: Any, **stages: Any) -> MergeMethod:
    """The merge method named by cfg.method; RAIN also takes arch, bases, coeffs and device."""
    return METHODS[cfg.method].build(cfg, **stages)
