"""RAIN-Merging Stage 3 (paper Eq. 16): theta = theta_LRM + lambda * P_perp(alpha (.) tau_I).

Every module's delta is scaled first and projected last: Delta = lambda * P_perp(alpha (.) tau), with
P_perp acting on the input side (right multiplication). For q/k/v alpha scales output rows (per head /
kv head) and for the MLP it is a scalar, so scaling and projecting commute there. For o_proj alpha
scales *input* columns (head blocks), so only scale-then-project keeps (W_merged - W_LRM) x = 0 for
the protected o_proj inputs x when o_proj is projected over its full input width (stage1.o_proj: full,
Delta_o = lambda * tau_O diag(alpha per head, expanded over head_dim) P_perp(o_in)). The per-head-block
variant (o_proj: per_head) is block-diagonal, so it commutes too, but its width-head_dim projectors
hit the rank cap once the protected rows exceed ~0.9*head_dim.
"""

from __future__ import annotations

from typing import Any

import torch

from ..arch import FEATURE_GROUP, ArchSpec
from ..projection import Basis, project_delta, projection_stats, projection_summary
from . import Site


def o_proj_mode(bases: dict[str, Basis]) -> str:
    """'full' when the layer has one o_in basis, 'per_head' when it has o_in.{h} bases."""
    if "o_in" in bases:
        return "full"
    if "o_in.0" in bases:
        return "per_head"
    raise KeyError("no o_proj basis (o_in or o_in.{h}) for this layer")


def project_module(module: str, delta: torch.Tensor, bases: dict[str, Basis], arch: ArchSpec) -> torch.Tensor:
    """Project a (scaled) delta against its input's protected features; o_proj full width or per head block."""
    if module == "o" and o_proj_mode(bases) == "per_head":
        hd = arch.head_dim
        return torch.cat([project_delta(delta[:, h * hd:(h + 1) * hd], bases[f"o_in.{h}"])
                          for h in range(arch.num_heads)], dim=1)
    return project_delta(delta, bases[FEATURE_GROUP[module]])


def scale_module(module: str, delta: torch.Tensor, coeff: torch.Tensor, arch: ArchSpec) -> torch.Tensor:
    """Apply per-head (q: output rows, o: input columns), per-kv-head (k, v: output rows) or per-layer (MLP)."""
    c = coeff.to(delta.dtype)
    out_dim, in_dim = delta.shape
    if module in ("q", "k", "v"):
        groups = arch.num_heads if module == "q" else arch.num_kv_heads
        return (delta.view(groups, arch.head_dim, in_dim) * c[:, None, None]).view(out_dim, in_dim)
    if module == "o":
        return (delta.view(out_dim, arch.num_heads, arch.head_dim) * c[None, :, None]).view(out_dim, in_dim)
    return delta * c


def _module_stats(module: str, delta: torch.Tensor, proj: torch.Tensor, bases: dict[str, Basis],
                  arch: ArchSpec) -> dict[str, Any]:
    if module != "o" or o_proj_mode(bases) == "full":
        return projection_stats(delta, proj, bases[FEATURE_GROUP[module]])
    hd = arch.head_dim
    per = [projection_stats(delta[:, h * hd:(h + 1) * hd], proj[:, h * hd:(h + 1) * hd], bases[f"o_in.{h}"])
           for h in range(arch.num_heads)]
    tn = float(torch.linalg.norm(delta.double()))
    rules = [p["rule"] for p in per]
    return {
        "residual": max(p["residual"] for p in per),
        "kept_norm": float(torch.linalg.norm(proj.double())) / tn if tn > 0 else 1.0,
        "rank_removed": sum(p["rank_removed"] for p in per),
        "feature_rank": sum(p["feature_rank"] for p in per),
        "rows": per[0]["rows"],
        "width": delta.shape[1],
        "capped": any(p["capped"] for p in per),
        "rule": "capped" if "capped" in rules else "energy" if "energy" in rules else "exact",
    }


class Rain:
    name = "rain"

    def __init__(self, arch: ArchSpec, bases: dict[int, dict[str, Basis]],
                 coeffs: dict[int, dict[str, torch.Tensor]], strength: float, device: str = "cpu",
                 min_kept_norm: float = 0.0, exact_tol: float = 1e-4):
        self.arch, self.coeffs, self.strength, self.device = arch, coeffs, strength, device
        self.min_kept_norm, self.exact_tol = min_kept_norm, exact_tol
        # bases stay where they were made (the host); one layer at a time is on the device, since the
        # merged sites come layer by layer: ~0.4 GB of a 7B's bases at once instead of all ~12 GB
        self.bases = bases
        self._on_device: tuple[int, dict[str, Basis]] | None = None
        self._stats: dict[str, dict[str, Any]] = {}

    def _layer_bases(self, layer: int) -> dict[str, Basis]:
        if self._on_device is None or self._on_device[0] != layer:
            self._on_device = None  # release the previous layer before the next one is moved
            self._on_device = (layer, {k: b.to(self.device) for k, b in self.bases[layer].items()})
        return self._on_device[1]

    def delta(self, site: Site, tau: torch.Tensor, record: bool = True) -> torch.Tensor:
        """lambda * P(alpha (.) tau) in the solver dtype, on self.device."""
        bases = self._layer_bases(site.layer)
        c = self.coeffs[site.layer][site.module]
        dtype = next(iter(bases.values())).V.dtype
        scaled = scale_module(site.module, tau.to(self.device, dtype), c.to(self.device), self.arch)
        proj = project_module(site.module, scaled, bases, self.arch)
        if record:
            st = _module_stats(site.module, scaled, proj, bases, self.arch)
            st.update(layer=site.layer, module=site.module, alpha_mean=float(c.mean()),
                      alpha_min=float(c.min()), alpha_max=float(c.max()))
            self._stats[site.name] = st
        return self.strength * proj

    def merge(self, site: Site, reasoning: torch.Tensor, base: torch.Tensor, instruct: torch.Tensor) -> torch.Tensor:
        d = self.delta(site, instruct - base)
        # accumulate in the solver dtype on the solver's device; Stage 3 casts there, once, to the LRM's
        # storage dtype and only then moves it to the host (2 bytes per parameter for bf16, not 4 or 8)
        return reasoning.to(d.device, d.dtype) + d

    def stats(self) -> dict[str, dict[str, Any]]:
        return self._stats

    def summary(self) -> str:
        """One console line over every recorded module (see projection.projection_summary)."""
        return projection_summary(self._stats, tol=self.exact_tol)

    @property
    def warnings(self) -> list[str]:
        """At most ONE warning (the summary line) when any module is inexact or keeps < min_kept_norm."""
        if not self._stats:
            return []
        bad = any(s["residual"] > self.exact_tol or s["kept_norm"] < self.min_kept_norm
                  for s in self._stats.values())
        return [self.summary()] if bad else []
