"""TIES (trim, elect sign, disjoint mean) over the LRM and ITM task vectors, via peft's merge utils:
theta = theta_base + ties([tau_R, tau_I], weights=[1, lambda], density)."""

from __future__ import annotations

import torch
from peft.utils.merge_utils import ties

from . import Site


class Ties:
    name = "ties"

    def __init__(self, strength: float, density: float):
        self.strength, self.density = strength, density
        self._stats: dict[str, dict[str, float]] = {}

    def merge(self, site: Site, lrm: torch.Tensor, base: torch.Tensor, itm: torch.Tensor) -> torch.Tensor:
        w = torch.tensor([1.0, self.strength], dtype=lrm.dtype)
        merged = base + ties([lrm - base, itm - base], w, self.density)
        self._stats[site.name] = {"delta_norm": float(torch.linalg.norm(merged - lrm))}
        return merged

    def stats(self) -> dict[str, dict[str, float]]:
        return self._stats
