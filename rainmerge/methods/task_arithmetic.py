"""Task arithmetic: theta = theta_LRM + lambda * (theta_ITM - theta_base)."""

from __future__ import annotations

import torch

from . import Site


class TaskArithmetic:
    name = "task_arithmetic"

    def __init__(self, strength: float):
        self.strength = strength
        self._stats: dict[str, dict[str, float]] = {}

    def merge(self, site: Site, lrm: torch.Tensor, base: torch.Tensor, itm: torch.Tensor) -> torch.Tensor:
        tau = itm - base
        self._stats[site.name] = {"delta_norm": float(torch.linalg.norm(tau) * abs(self.strength))}
        return lrm + self.strength * tau

    def stats(self) -> dict[str, dict[str, float]]:
        return self._stats
