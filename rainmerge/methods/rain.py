"""RAIN-Merging Stage 3 (paper Eq. 16): theta = theta_LRM + lambda * alpha (.) P_perp(tau_I)."""

from __future__ import annotations

import logging

import torch

from ..arch import FEATURE_GROUP, ArchSpec
from ..projection import Basis, project_delta, projection_stats
from . import Site

log = logging.getLogger("rainmerge")


def project_module(module: str, tau: torch.Tensor, bases: dict[str, Basis], arch: ArchSpec) -> torch.Tensor:
    """Project tau against its input's protected features; o_proj per head column block."""
    if module == "o":
        hd = arch.head_dim
        return torch.cat([project_delta(tau[:, h * hd:(h + 1) * hd], bases[f"o_in.{h}"])
                          for h in range(arch.num_heads)], dim=1)
    return project_delta(tau, bases[FEATURE_GROUP[module]])


def scale_module(module: str, delta: torch.Tensor, coeff: torch.Tensor, arch: ArchSpec) -> torch.Tensor:
    """Apply per-head (q, o), per-kv-head (k, v) or per-layer (MLP) coefficients."""
    c = coeff.to(delta.dtype)
    out_dim, in_dim = delta.shape
    if module in ("q", "k", "v"):
        groups = arch.num_heads if module == "q" else arch.num_kv_heads
        return (delta.view(groups, arch.head_dim, in_dim) * c[:, None, None]).view(out_dim, in_dim)
    if module == "o":
        return (delta.view(out_dim, arch.num_heads, arch.head_dim) * c[None, :, None]).view(out_dim, in_dim)
    return delta * c


def _module_stats(module: str, tau: torch.Tensor, proj: torch.Tensor, bases: dict[str, Basis],
                  arch: ArchSpec) -> dict[str, float]:
    if module != "o":
        return projection_stats(tau, proj, bases[FEATURE_GROUP[module]])
    hd = arch.head_dim
    per = [projection_stats(tau[:, h * hd:(h + 1) * hd], proj[:, h * hd:(h + 1) * hd], bases[f"o_in.{h}"])
           for h in range(arch.num_heads)]
    tn = float(torch.linalg.norm(tau.double()))
    return {
        "residual": max(p["residual"] for p in per),
        "kept_norm": float(torch.linalg.norm(proj.double())) / tn if tn > 0 else 1.0,
        "rank_removed": sum(p["rank_removed"] for p in per),
        "feature_rank": sum(p["feature_rank"] for p in per),
        "width": tau.shape[1],
        "capped": any(p["capped"] for p in per),
    }


class Rain:
    name = "rain"

    def __init__(self, arch: ArchSpec, bases: dict[int, dict[str, Basis]],
                 coeffs: dict[int, dict[str, torch.Tensor]], strength: float, device: str = "cpu",
                 min_kept_norm: float = 0.0):
        self.arch, self.coeffs, self.strength, self.device = arch, coeffs, strength, device
        self.min_kept_norm = min_kept_norm
        self.warnings: list[str] = []
        self.bases = {l: {k: b.to(device) for k, b in bl.items()} for l, bl in bases.items()}
        self._stats: dict[str, dict[str, float]] = {}

    def delta(self, site: Site, tau: torch.Tensor, record: bool = True) -> torch.Tensor:
        """lambda * alpha * P(tau) in the solver dtype, on self.device."""
        bases = self.bases[site.layer]
        proj = project_module(site.module, tau.to(self.device), bases, self.arch)
        if record:
            st = _module_stats(site.module, tau.to(self.device), proj, bases, self.arch)
            c = self.coeffs[site.layer][site.module]
            st["alpha_mean"] = float(c.mean())
            self._stats[site.name] = st
            if st["kept_norm"] < self.min_kept_norm or st["capped"]:
                msg = (f"{site.name}: projection keeps {st['kept_norm']:.1%} of the delta "
                       f"(rank removed {st['rank_removed']}/{st['width']}{', rank cap bound' if st['capped'] else ''})")
                self.warnings.append(msg)
                log.warning(msg)
        return self.strength * scale_module(site.module, proj, self.coeffs[site.layer][site.module].to(self.device),
                                            self.arch)

    def merge(self, site: Site, lrm: torch.Tensor, base: torch.Tensor, itm: torch.Tensor) -> torch.Tensor:
        d = self.delta(site, itm - base)
        # accumulate in the solver dtype; Stage 3 casts once to the LRM storage dtype
        return (lrm.to(d.device, d.dtype) + d).cpu()

    def stats(self) -> dict[str, dict[str, float]]:
        return self._stats
