"""TIES (trim, elect sign, disjoint mean) over the LRM and ITM task vectors:
theta = theta_base + ties([tau_R, tau_I], weights=[1, lambda], density), with peft's semantics
(peft.utils.merge_utils.ties, majority_sign_method="total"), computed without peft's sorted top-k.

Trim keeps exactly k = int(density * numel) entries of largest |tau|, like peft's topk. The threshold
(the k-th largest |tau|) is found exactly by a bracketed selection (`kth_largest`); when equal
magnitudes straddle it, the lowest flat indices among them are kept. peft's topk keeps an unspecified
subset of those ties, so there (only there) the two may keep different, equal-magnitude entries;
everywhere else the result is peft's, bit for bit (tests/test_perf_parity.py). Task vectors of bf16
weights take few distinct values, so such ties are common: peft's own result there is arbitrary.
"""

from __future__ import annotations

import math

import torch

from .base import MethodBase, Site, acc_dtype

_SAMPLE = 1 << 15  # strided sample size of the bracketed selection


def kth_largest(a: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of the 1-D tensor `a` (1 <= k <= numel), exactly torch.kthvalue's.

    A sorted strided sample brackets the answer [lo, hi] (~8 sigma of a sample quantile's rank error);
    one pass counts the entries above hi and inside the bracket, and kthvalue runs on the bracket only
    (~1% of the entries). When the counts show the bracket missed, it falls back to the full kthvalue.
    """
    n = a.numel()
    if n <= 4 * _SAMPLE:
        return torch.kthvalue(a, n - k + 1).values
    sample = torch.sort(a[:: n // _SAMPLE]).values
    ns = sample.numel()
    pos = (n - k) / max(n - 1, 1) * (ns - 1)  # where the answer sits in the ascending sample
    margin = int(4 * math.sqrt(ns)) + 16
    lo_i, hi_i = int(pos) - margin, int(pos) + margin + 1
    above = int(torch.count_nonzero(a > sample[hi_i])) if hi_i < ns else 0
    band = (a <= sample[hi_i]) if hi_i < ns else torch.ones_like(a, dtype=torch.bool)
    if lo_i > 0:
        band &= a >= sample[lo_i]
    inside = int(torch.count_nonzero(band))
    if above < k <= above + inside:
        vals = a[band]
        return torch.kthvalue(vals, inside - (k - above) + 1).values
    return torch.kthvalue(a, n - k + 1).values


def magnitude_mask(tau: torch.Tensor, density: float) -> torch.Tensor | None:
    """Boolean mask of the k = int(density * numel) largest |tau| (ties broken by lowest flat index);
    None when density >= 1 (no trim, as peft)."""
    if density >= 1:
        return None
    if density < 0:
        raise ValueError(f"Density should be >= 0, got {density}")
    a = tau.abs().reshape(-1)
    k = int(density * a.numel())
    if k == 0:
        return torch.zeros(tau.shape, dtype=torch.bool, device=tau.device)
    thr = kth_largest(a, k)
    mask = a > thr
    need = k - int(torch.count_nonzero(mask))
    if need > 0:
        eq = a == thr
        if need == int(torch.count_nonzero(eq)):
            mask |= eq
        else:  # equal magnitudes straddle the threshold: keep the first `need` of them
            mask[eq.nonzero().reshape(-1)[:need]] = True
    return mask.reshape(tau.shape)


def ties_merge(taus: list[torch.Tensor], weights: list[float], density: float,
               inplace: bool = False) -> torch.Tensor:
    """peft's ties(taus, weights, density) for float taus of one dtype, same operations in the same
    order per element (for two tasks the stack().sum(0) is one addition, so the values agree exactly).
    inplace: the taus are scratch and may be overwritten."""
    kept = []
    for t in taus:
        m = magnitude_mask(t, density)
        t = t if inplace else t.clone()
        if m is not None:
            t.mul_(m)  # peft: tensor * mask (float 0/1), so zeros keep their sign as peft's do
        kept.append(t)
    total = kept[0].clone()
    for p in kept[1:]:
        total += p
    majority = torch.where(total >= 0, 1.0, -1.0).to(total.dtype)
    del total
    count = None
    for p, w in zip(kept, weights):
        agree = torch.sign(p) == majority  # a trimmed (zero) entry never agrees
        if w != 1.0:
            p.mul_(w)  # peft: task_tensors * weights
        p.mul_(agree)  # peft: weighted * majority_sign_mask
        count = agree.to(p.dtype) if count is None else count.add_(agree)
    num = kept[0]
    for p in kept[1:]:
        num += p
    return num.div_(count.clamp_(min=1.0))


class Ties(MethodBase):
    name = "ties"
    accepts_raw = True  # stored dtypes in; upcast once while forming the task vectors

    def __init__(self, strength: float, density: float):
        super().__init__()
        self.strength, self.density = strength, density

    def merge(self, site: Site, reasoning: torch.Tensor, base: torch.Tensor, instruct: torch.Tensor) -> torch.Tensor:
        acc = acc_dtype(reasoning, base, instruct)
        b = base.to(acc)
        tau_r = reasoning.to(acc, copy=True).sub_(b)
        tau_i = instruct.to(acc, copy=True).sub_(b)
        # peft multiplies by a weights tensor of the task vectors' dtype: round the weights the same way
        w = [float(torch.tensor(x, dtype=acc)) for x in (1.0, self.strength)]
        merged = ties_merge([tau_r, tau_i], w, self.density, inplace=True).add_(b)
        self._stats[site.name] = {"delta_norm": float(torch.linalg.vector_norm(merged - reasoning.to(acc)))}
        return merged
