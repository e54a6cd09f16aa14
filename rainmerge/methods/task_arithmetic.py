"""Task arithmetic: theta = theta_LRM + lambda * (theta_ITM - theta_base)."""

from __future__ import annotations

import torch

from . import Site


def acc_dtype(*ts: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32: the dtype a merge accumulates in."""
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


class TaskArithmetic:
    name = "task_arithmetic"
    accepts_raw = True  # stored dtypes in; each is upcast inside the op that reads it (no cast pass)
    propagates_nonfinite = True  # a NaN/Inf input always reaches the output (the output is checked)

    def __init__(self, strength: float):
        self.strength = strength
        self._stats: dict[str, dict[str, float]] = {}

    def merge(self, site: Site, lrm: torch.Tensor, base: torch.Tensor, itm: torch.Tensor) -> torch.Tensor:
        tau = itm.to(acc_dtype(lrm, base, itm), copy=True)  # the one new buffer besides the result
        tau.sub_(base)  # base is read in its stored dtype and upcast per element
        self._stats[site.name] = {"delta_norm": float(torch.linalg.vector_norm(tau)) * abs(self.strength)}
        return torch.add(lrm, tau, alpha=self.strength)  # promotes lrm to tau's dtype in the same pass

    def stats(self) -> dict[str, dict[str, float]]:
        return self._stats
