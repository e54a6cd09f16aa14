"""Task arithmetic: theta = theta_LRM + lambda * (theta_ITM - theta_base)."""

from __future__ import annotations

import torch

from . import Site


def acc_dtype(*ts: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32: the dtype a merge accumulates in."""
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def task_vector(base: torch.Tensor, instruct: torch.Tensor, dtype: torch.dtype,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """tau = instruct - base in `dtype` on `device`: moved as stored (2 bytes per parameter for bf16), upcast
    there, one new buffer (every op on one dtype: mixed-dtype in-place ops cost ~2x here)."""
    tau = instruct.to(device, non_blocking=True).to(dtype, copy=True)
    return tau.sub_(base.to(device, non_blocking=True).to(dtype))


class TaskArithmetic:
    name = "task_arithmetic"
    accepts_raw = True  # stored dtypes in: each upcast once, straight into the buffer that needs it
    propagates_nonfinite = True  # a NaN/Inf input always reaches the output (the output is checked)

    def __init__(self, strength: float):
        self.strength = strength
        self._stats: dict[str, dict[str, float]] = {}

    def merge(self, site: Site, reasoning: torch.Tensor, base: torch.Tensor, instruct: torch.Tensor) -> torch.Tensor:
        acc = acc_dtype(reasoning, base, instruct)
        tau = task_vector(base, instruct, acc)  # two new buffers: tau and the result
        self._stats[site.name] = {"delta_norm": float(torch.linalg.vector_norm(tau)) * abs(self.strength)}
        return reasoning.to(acc, copy=True).add_(tau, alpha=self.strength)

    def stats(self) -> dict[str, dict[str, float]]:
        return self._stats
