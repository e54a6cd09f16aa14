"""What every merge method shares: the site it merges, the interface callers use (MergeMethod), a base
class with that interface's defaults, and the tensor helpers (as mergekit's merge_methods/base.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class Site:
    layer: int
    module: str  # q k v o gate up down
    name: str  # tensor name


class MergeMethod(Protocol):
    """Everything the writer (merge.merge_one, write_merged_model) and run_merge read of a method."""

    name: str
    # takes the stored tensors (any dtype) and upcasts as it computes; else they come cast to acc_dtype
    accepts_raw: bool
    # any NaN/Inf input reaches the output, so checking the output suffices; else inputs are checked first
    propagates_nonfinite: bool
    device: str  # where it computes: inputs are moved there as stored

    def merge(self, site: Site, reasoning: torch.Tensor, base: torch.Tensor, instruct: torch.Tensor) -> torch.Tensor:
        """All inputs float32 (or float64); returns the merged weight in the same dtype."""
        ...

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per-site statistics, recorded in the provenance (module_stats)."""
        ...

    def summary(self) -> str:
        """One console line over the whole merge; empty when the method has nothing to say."""
        ...

    @property
    def warnings(self) -> list[str]:
        """Warnings for the provenance record."""
        ...


class MethodBase:
    """MergeMethod's defaults: inputs cast and checked for the method, CPU, per-site stats in `_stats`,
    no summary, no warnings. A method overrides what differs."""

    name = ""
    accepts_raw = False
    propagates_nonfinite = False
    device = "cpu"

    def __init__(self) -> None:
        self._stats: dict[str, dict[str, Any]] = {}

    def stats(self) -> dict[str, dict[str, Any]]:
        return self._stats

    def summary(self) -> str:
        return ""

    @property
    def warnings(self) -> list[str]:
        return []


def acc_dtype(*ts: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32: the dtype a merge accumulates in."""
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def task_vector(base: torch.Tensor, instruct: torch.Tensor, dtype: torch.dtype,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """tau = instruct - base in `dtype` on `device`: moved as stored (2 bytes per parameter for bf16), upcast
    there, one new buffer (every op on one dtype: mixed-dtype in-place ops cost ~2x here)."""
    tau = instruct.to(device, non_blocking=True).to(dtype, copy=True)
    return tau.sub_(base.to(device, non_blocking=True).to(dtype))
