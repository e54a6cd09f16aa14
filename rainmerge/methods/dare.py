"""DARE-TIES (random drop with rescale, then sign election) via peft's merge utils, seeded per tensor
so a rerun reproduces the same weights."""

from __future__ import annotations

import zlib

import torch
from peft.utils.merge_utils import dare_ties

from .base import MethodBase, Site


class Dare(MethodBase):
    name = "dare"

    def __init__(self, strength: float, density: float, seed: int):
        super().__init__()
        self.strength, self.density, self.seed = strength, density, seed

    def merge(self, site: Site, reasoning: torch.Tensor, base: torch.Tensor, instruct: torch.Tensor) -> torch.Tensor:
        w = torch.tensor([1.0, self.strength], dtype=reasoning.dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed ^ zlib.crc32(site.name.encode()))
            merged = base + dare_ties([reasoning - base, instruct - base], w, self.density)
        self._stats[site.name] = {"delta_norm": float(torch.linalg.norm(merged - reasoning))}
        return merged
