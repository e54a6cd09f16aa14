"""Merge methods behind one interface: given a merged site and its three weights, return the new weight.

Each method returns W_LRM + delta in float32/float64; Stage 3 casts once to the LRM dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class Site:
    layer: int
    module: str  # q k v o gate up down
    name: str  # tensor name


class MergeMethod(Protocol):
    name: str

    def merge(self, site: Site, lrm: torch.Tensor, base: torch.Tensor, itm: torch.Tensor) -> torch.Tensor:
        """All inputs float32 (or float64); returns the merged weight in the same dtype."""
        ...

    def stats(self) -> dict[str, dict[str, float]]:
        ...
