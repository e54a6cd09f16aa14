"""Task arithmetic: theta = theta_LRM + lambda * (theta_ITM - theta_base)."""

from __future__ import annotations

import torch

from .base import MethodBase, Site, acc_dtype, task_vector


class TaskArithmetic(MethodBase):
    name = "task_arithmetic"
    accepts_raw = True  # stored dtypes in: each upcast once, straight into the buffer that needs it
    propagates_nonfinite = True  # a NaN/Inf input always reaches the output (the output is checked)

    def __init__(self, strength: float):
        super().__init__()
        self.strength = strength

    def merge(self, site: Site, reasoning: torch.Tensor, base: torch.Tensor, instruct: torch.Tensor) -> torch.Tensor:
        acc = acc_dtype(reasoning, base, instruct)
        tau = task_vector(base, instruct, acc)  # two new buffers: tau and the result
        self._stats[site.name] = {"delta_norm": float(torch.linalg.vector_norm(tau)) * abs(self.strength)}
        return reasoning.to(acc, copy=True).add_(tau, alpha=self.strength)
