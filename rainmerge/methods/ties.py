"""TIES (trim, elect sign, disjoint mean) over the LRM and ITM task vectors:
theta = theta_base + ties([tau_R, tau_I], weights=[1, lambda], density), with peft's semantics
(peft.utils.merge_utils.ties, majority_sign_method="total"), computed without peft's sorted top-k.

Trim keeps exactly k = int(density * numel) entries of largest |tau|, like peft's topk. The threshold
comes from one kthvalue (an O(n) selection, ~1/3 of topk's CPU here); when equal magnitudes straddle
the threshold, the lowest flat indices among them are kept. peft's topk keeps an unspecified subset
of those ties, so there (only there) the two may keep different (equal-magnitude) entries; elsewhere
the result is identical to peft's, bit for bit (tests/test_perf_parity.py).
"""

from __future__ import annotations

import torch

from . import Site
from .task_arithmetic import acc_dtype


def magnitude_mask(tau: torch.Tensor, density: float) -> torch.Tensor | None:
    """Boolean mask of the k = int(density * numel) largest |tau| (ties broken by lowest flat index);
    None when density >= 1 (no trim, as peft)."""
    if density >= 1:
        return None
    if density < 0:
        raise ValueError(f"Density should be >= 0, got {density}")
    a = tau.abs().reshape(-1)
    n = a.numel()
    k = int(density * n)
    if k == 0:
        return torch.zeros(tau.shape, dtype=torch.bool, device=tau.device)
    thr = torch.kthvalue(a, n - k + 1).values  # the k-th largest |tau|
    mask = a > thr
    eq = a == thr
    need = k - int(mask.sum())
    n_eq = int(eq.sum())
    if need == n_eq:
        mask |= eq
    elif need > 0:  # ties straddle the threshold: keep the first `need` of them
        mask[eq.nonzero().reshape(-1)[:need]] = True
    return mask.reshape(tau.shape)


def ties_merge(taus: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """peft's ties(taus, weights, density) for float taus of one dtype (the sum over tasks as
    peft's stack().sum(0): for two tasks one addition, so the values agree exactly)."""
    kept = []
    for t in taus:
        m = magnitude_mask(t, density)
        kept.append(t if m is None else torch.where(m, t, torch.zeros((), dtype=t.dtype, device=t.device)))
    total = kept[0].clone()
    for p in kept[1:]:
        total += p
    majority = torch.where(total >= 0, 1.0, -1.0).to(total.dtype)
    del total
    num = None
    count = None
    for p, w in zip(kept, weights):
        agree = torch.sign(p) == majority
        term = torch.where(agree, p * w, torch.zeros((), dtype=p.dtype, device=p.device))
        num = term if num is None else num.add_(term)
        count = agree.to(p.dtype) if count is None else count.add_(agree.to(p.dtype))
    return num.div_(count.clamp_(min=1.0))


class Ties:
    name = "ties"
    accepts_raw = True  # stored dtypes in; upcast once while forming the task vectors

    def __init__(self, strength: float, density: float):
        self.strength, self.density = strength, density
        self._stats: dict[str, dict[str, float]] = {}

    def merge(self, site: Site, lrm: torch.Tensor, base: torch.Tensor, itm: torch.Tensor) -> torch.Tensor:
        acc = acc_dtype(lrm, base, itm)
        tau_r = lrm.to(acc, copy=True).sub_(base)
        tau_i = itm.to(acc, copy=True).sub_(base)
        # peft multiplies by a weights tensor of the task vectors' dtype: round the weights the same way
        w = [float(torch.tensor(x, dtype=acc)) for x in (1.0, self.strength)]
        merged = torch.add(base, ties_merge([tau_r, tau_i], w, self.density))
        self._stats[site.name] = {"delta_norm": float(torch.linalg.vector_norm(merged - lrm))}
        return merged

    def stats(self) -> dict[str, dict[str, float]]:
        return self._stats
