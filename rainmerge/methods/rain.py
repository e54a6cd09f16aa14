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
from ..projection import Basis, project_delta_, project_with_stats_, projection_summary
from . import Site
from .task_arithmetic import task_vector


def o_proj_mode(bases: dict[str, Basis]) -> str:
    """'full' when the layer has one o_in basis, 'per_head' when it has o_in.{h} bases."""
    if "o_in" in bases:
        return "full"
    if "o_in.0" in bases:
        return "per_head"
    raise KeyError("no o_proj basis (o_in or o_in.{h}) for this layer")


def column_blocks(module: str, bases: dict[str, Basis], arch: ArchSpec) -> list[tuple[slice, Basis]]:
    """Which basis projects which input columns: one block, or o_proj per head block (o_proj: per_head)."""
    if module == "o" and o_proj_mode(bases) == "per_head":
        hd = arch.head_dim
        return [(slice(h * hd, (h + 1) * hd), bases[f"o_in.{h}"]) for h in range(arch.num_heads)]
    return [(slice(None), bases[FEATURE_GROUP[module]])]


def scale_module_(module: str, delta: torch.Tensor, coeff: torch.Tensor, arch: ArchSpec) -> torch.Tensor:
    """In place: per head (q: output rows, o: input columns), per kv head (k, v: output rows) or per layer (MLP)."""
    c = coeff.to(delta.device, delta.dtype)
    out_dim, in_dim = delta.shape
    if module in ("q", "k", "v"):
        groups = arch.num_heads if module == "q" else arch.num_kv_heads
        delta.view(groups, arch.head_dim, in_dim).mul_(c[:, None, None])
    elif module == "o":
        delta.view(out_dim, arch.num_heads, arch.head_dim).mul_(c[None, :, None])
    else:
        delta.mul_(c)
    return delta


def scale_module(module: str, delta: torch.Tensor, coeff: torch.Tensor, arch: ArchSpec) -> torch.Tensor:
    """alpha (.) delta as a new tensor (see scale_module_)."""
    return scale_module_(module, delta.clone(), coeff, arch)


def project_module_(module: str, d: torch.Tensor, bases: dict[str, Basis], arch: ArchSpec,
                    record: bool) -> dict[str, Any] | None:
    """Project `d` in place against its input's protected features; the module's statistics if `record`."""
    blocks = column_blocks(module, bases, arch)
    if not record:
        for cols, b in blocks:
            project_delta_(d[:, cols], b)
        return None
    per = [project_with_stats_(d[:, cols], b) for cols, b in blocks]
    if len(per) == 1:
        st = per[0]
        st.pop("_norms")
        return st
    dn = sum(p["_norms"][0] ** 2 for p in per) ** 0.5
    pn = sum(p["_norms"][1] ** 2 for p in per) ** 0.5
    rules = [p["rule"] for p in per]
    return {"residual": max(p["residual"] for p in per), "kept_norm": pn / dn if dn > 0 else 1.0,
            "rank_removed": sum(p["rank_removed"] for p in per),
            "feature_rank": sum(p["feature_rank"] for p in per), "rows": per[0]["rows"], "width": d.shape[1],
            "capped": any(p["capped"] for p in per),
            "rule": "capped" if "capped" in rules else "energy" if "energy" in rules else "exact"}


class Rain:
    name = "rain"
    accepts_raw = True  # stored tensors in: moved to the device as stored, upcast there, once each
    propagates_nonfinite = True  # any NaN/Inf input reaches the output, which merge_one checks

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
        self.fallbacks = 0  # float32 modules redone in float64 because their residual missed exact_tol

    @property
    def solver_dtype(self) -> torch.dtype:
        """The bases' dtype (stage1.solve_dtype): deltas are scaled and projected in it."""
        layer = next(iter(self.bases.values()))
        return next(iter(layer.values())).V.dtype

    def _layer_bases(self, layer: int) -> dict[str, Basis]:
        if self._on_device is None or self._on_device[0] != layer:
            self._on_device = None  # release the previous layer before the next one is moved
            self._on_device = (layer, {k: b.to(self.device) for k, b in self.bases[layer].items()})
        return self._on_device[1]

    def delta_(self, site: Site, d: torch.Tensor, record: bool = True,
               bases: dict[str, Basis] | None = None) -> torch.Tensor:
        """lambda * P(alpha (.) d), in place on d (in the bases' dtype, on self.device).
        Module stats are ratios (residual, kept norm), so they do not depend on lambda."""
        bases = bases or self._layer_bases(site.layer)
        c = self.coeffs[site.layer][site.module]
        # lambda rides on alpha: P is linear, so P(lambda alpha (.) d) = lambda P(alpha (.) d), one pass fewer
        scale_module_(site.module, d, c * self.strength, self.arch)
        st = project_module_(site.module, d, bases, self.arch, record)
        if st is not None:
            st.update(layer=site.layer, module=site.module, solve_dtype=str(d.dtype).removeprefix("torch."),
                      alpha_mean=float(c.mean()), alpha_min=float(c.min()), alpha_max=float(c.max()))
            self._stats[site.name] = st
        return d

    def delta(self, site: Site, tau: torch.Tensor, record: bool = True) -> torch.Tensor:
        """lambda * P(alpha (.) tau) as a new tensor in the solver dtype, on self.device."""
        return self.delta_(site, tau.to(self.device).to(self.solver_dtype, copy=True), record)

    def task_vector(self, base: torch.Tensor, instruct: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """tau = instruct - base on self.device in `dtype` (default: the solver dtype), one new buffer."""
        return task_vector(base, instruct, dtype or self.solver_dtype, self.device)

    def merge(self, site: Site, reasoning: torch.Tensor, base: torch.Tensor, instruct: torch.Tensor) -> torch.Tensor:
        """theta_LRM + lambda P(alpha (.) tau) in the solver dtype; Stage 3 casts it on the device, once,
        to the LRM's storage dtype before it goes to the host.

        float32 bases: a module whose residual misses exact_tol while its rule is exact (an ill-conditioned
        input, where float32 rounding along the strongest features stops being negligible) is redone in
        float64, so float32 keeps the identity wherever float64 would."""
        dtype = self.solver_dtype
        d = self.delta_(site, self.task_vector(base, instruct, dtype))
        st = self._stats[site.name]
        if dtype != torch.float64 and st["rule"] == "exact" and st["residual"] > self.exact_tol:
            self.fallbacks += 1
            b64 = {k: b.to(dtype=torch.float64) for k, b in self._layer_bases(site.layer).items()}
            del d
            d = self.delta_(site, self.task_vector(base, instruct, torch.float64), bases=b64)
            self._stats[site.name]["solve_dtype"] = "float64 (fallback)"
        return d.add_(reasoning.to(self.device, non_blocking=True).to(d.dtype))

    def stats(self) -> dict[str, dict[str, Any]]:
        return self._stats

    def summary(self) -> str:
        """One console line over every recorded module (see projection.projection_summary)."""
        line = projection_summary(self._stats, tol=self.exact_tol)
        return line + (f"; {self.fallbacks} float32 modules redone in float64" if self.fallbacks else "")

    @property
    def warnings(self) -> list[str]:
        """At most ONE warning (the summary line) when any module is inexact or keeps < min_kept_norm."""
        if not self._stats:
            return []
        bad = any(s["residual"] > self.exact_tol or s["kept_norm"] < self.min_kept_norm
                  for s in self._stats.values())
        return [self.summary()] if bad else []
