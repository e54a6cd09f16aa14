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

import time
from typing import Any

import torch

from ..arch import FEATURE_GROUP, ArchSpec
from ..projection import Basis, project_delta_, project_with_stats_, projection_summary
from ..rounding import NARROW, ROUNDINGS, RoundingFactor, compensated_round, feature_norm, protected_gram
from .base import MethodBase, Site, task_vector


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


def module_dtype(module: str, bases: dict[str, Basis], arch: ArchSpec) -> torch.dtype:
    """The dtype the module is scaled and projected in: its bases' (float64 if any of them is)."""
    dts = {b.V.dtype for _, b in column_blocks(module, bases, arch)}
    return torch.float64 if torch.float64 in dts else dts.pop()


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
    return {"residual": max(p["residual"] for p in per), "residual_rows": per[0]["residual_rows"],
            "residual_estimated": any(p["residual_estimated"] for p in per), "kept_norm": pn / dn if dn > 0 else 1.0,
            "rank_removed": sum(p["rank_removed"] for p in per),
            "feature_rank": sum(p["feature_rank"] for p in per), "rows": per[0]["rows"], "width": d.shape[1],
            "capped": any(p["capped"] for p in per),
            "rule": "capped" if "capped" in rules else "energy" if "energy" in rules else "exact"}


class Rain(MethodBase):
    name = "rain"
    accepts_raw = True  # stored tensors in: moved to the device as stored, upcast there, once each
    propagates_nonfinite = True  # any NaN/Inf input reaches the output, which merge_one checks

    def __init__(self, arch: ArchSpec, bases: dict[int, dict[str, Basis]],
                 coeffs: dict[int, dict[str, torch.Tensor]], strength: float, device: str = "cpu",
                 min_kept_norm: float = 0.0, exact_tol: float = 1e-4, rounding: str = "compensated"):
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        super().__init__()
        self.arch, self.coeffs, self.strength, self.device = arch, coeffs, strength, device
        self.min_kept_norm, self.exact_tol, self.rounding = min_kept_norm, exact_tol, rounding
        self._factors: dict[tuple[int, str], RoundingFactor | None] = {}  # this layer's, per input
        # bases stay where they were made (the host); one layer at a time is on the device, since the
        # merged sites come layer by layer: ~0.4 GB of a 7B's bases at once instead of all ~12 GB
        self.bases = bases
        self._on_device: tuple[int, dict[str, Basis]] | None = None
        self.fallbacks = 0  # float32 modules redone in float64 because their residual missed exact_tol

    @property
    def solver_dtype(self) -> torch.dtype:
        """The bases' dtype (stage1.solve_dtype): deltas are scaled and projected in it."""
        layer = next(iter(self.bases.values()))  # float64 factors Stage 1 kept are exceptions, not the rule
        return min((b.V.dtype for b in layer.values()), key=lambda t: t.itemsize)

    def _layer_bases(self, layer: int) -> dict[str, Basis]:
        if self._on_device is None or self._on_device[0] != layer:
            self._on_device = None  # release the previous layer before the next one is moved
            self._factors.clear()
            self._on_device = (layer, {k: b.to(self.device) for k, b in self.bases[layer].items()})
        return self._on_device[1]

    def delta_(self, site: Site, d: torch.Tensor, record: bool = True,
               bases: dict[str, Basis] | None = None) -> torch.Tensor:
        """lambda * P(alpha (.) d), in place on d (in the bases' dtype, on self.device).
        Module stats are ratios (residual, kept norm), so they do not depend on lambda."""
        bases = bases or self._layer_bases(site.layer)
        want = module_dtype(site.module, bases, self.arch)
        if d.dtype != want:  # a factor Stage 1 kept in float64 (float32 storage would miss): the module goes in float64
            d = d.to(want)
        c = self.coeffs[site.layer][site.module]
        # lambda rides on alpha: P is linear, so P(lambda alpha (.) d) = lambda P(alpha (.) d), one pass fewer
        scale_module_(site.module, d, c * self.strength, self.arch)
        st = project_module_(site.module, d, bases, self.arch, record)
        if st is not None:
            f32 = [b.float32_residual for _, b in column_blocks(site.module, bases, self.arch) if b.float32_residual >= 0]
            if f32:
                st["float32_storage_residual"] = max(f32)
            st.update(layer=site.layer, module=site.module, solve_dtype=str(d.dtype).removeprefix("torch.") + (
                      " (float64 factor kept)" if d.dtype == torch.float64 and self.solver_dtype != torch.float64 else ""),
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
        """theta_LRM + lambda P(alpha (.) tau), cast here to the LRM's storage dtype (compensated rounding for
        bfloat16 / float16, rainmerge.rounding), with the identity measured on the cast tensor: every row
        written, against ||tau x|| and ||W_LRM x|| (cast_residual, cast_residual_vs_lrm).

        float32 bases: a module whose (estimated) residual misses exact_tol while its rule is exact is redone
        with the float64 factor (see _redo)."""
        bases = self._layer_bases(site.layer)
        dtype = module_dtype(site.module, bases, self.arch)
        blocks = column_blocks(site.module, bases, self.arch)
        tau = self.task_vector(base, instruct, dtype)
        tau_x = feature_norm(tau, blocks)  # ||tau x|| before tau is scaled and projected in place
        d = self.delta_(site, tau)
        st = self._stats[site.name]
        if dtype != torch.float64 and st["rule"] == "exact" and st["residual"] > self.exact_tol:
            ridge = self._ridge_share(site)
            if ridge > self.exact_tol:  # an absolute-ridge basis (old artifact): no precision can fix it
                st["redo"] = f"none: the ridge leaves {ridge:.1e} of the weakest removed direction"
            else:
                del d
                d = self._redo(site, base, instruct)
        lrm = reasoning.to(self.device, non_blocking=True)
        merged = d.add_(lrm.to(d.dtype))
        del d
        return self._cast(site, merged, lrm, blocks, tau_x)

    def _ridge_share(self, site: Site) -> float:
        blocks = column_blocks(site.module, self._layer_bases(site.layer), self.arch)
        return max((float(b.ridge_share().max()) for _, b in blocks if b.k), default=0.0)

    def _redo(self, site: Site, base: torch.Tensor, instruct: torch.Tensor) -> torch.Tensor:
        """The module again in float64 from the stored factor, applied in float64 (no float32 GEMM rounding),
        recorded with the miss it fixed."""
        before = self._stats[site.name]["residual"]
        self.fallbacks += 1
        b64 = {k: b.to(dtype=torch.float64) for k, b in self._layer_bases(site.layer).items()}
        d = self.delta_(site, self.task_vector(base, instruct, torch.float64), bases=b64)
        st = self._stats[site.name]
        st.update(solve_dtype="float64 (redo)", residual_float32=before,
                  redo=f"float32 arithmetic: residual {before:.1e} -> {st['residual']:.1e} in float64")
        if st["residual"] > self.exact_tol:  # what is left is the float32-stored basis itself
            st["redo"] += ("; still above the tolerance: the float32-stored basis is not accurate enough here "
                           "(stage1.solve_dtype: float64 keeps the float64 factor)")
        return d

    def _factor(self, site: Site, blocks: list[tuple[slice, Basis]], width: int) -> RoundingFactor | None:
        key = (site.layer, "o_in.*" if len(blocks) > 1 else FEATURE_GROUP[site.module])
        if key not in self._factors:  # one per input and layer: q/k/v share attn_in, gate/up mlp_in
            self._factors[key] = RoundingFactor.of(protected_gram(blocks, width, self.device))
        return self._factors[key]

    def _cast(self, site: Site, merged: torch.Tensor, lrm: torch.Tensor, blocks: list[tuple[slice, Basis]],
              tau_x: float) -> torch.Tensor:
        """merged -> the LRM's dtype (compensated rounding where the dtype is narrow), and the identity of what
        is written: ||(W_cast - W_LRM) x|| / ||tau x|| and / ||W_LRM x|| over all rows and protected features."""
        out_dtype = lrm.dtype
        st = self._stats.get(site.name)
        t0 = time.time()
        rounding = self.rounding if out_dtype in NARROW else "none"
        factor = self._factor(site, blocks, merged.shape[1]) if rounding == "compensated" else None
        if factor is not None:
            out = compensated_round(merged, factor, out_dtype)
        else:
            out = merged.to(out_dtype)
            rounding = "nearest" if out_dtype in NARROW else rounding
        if st is not None:
            change_x = feature_norm(out, blocks, lrm)
            lrm_x = feature_norm(lrm, blocks)
            st.update(cast_dtype=str(out_dtype).removeprefix("torch."), cast_rounding=rounding, cast_s=time.time() - t0,
                      cast_residual=change_x / tau_x if tau_x > 0 else 0.0,
                      cast_residual_vs_lrm=change_x / lrm_x if lrm_x > 0 else 0.0)
            if factor is not None:  # what the plain cast would have shipped, for the record
                near = merged.to(out_dtype)
                st["cast_residual_nearest"] = feature_norm(near, blocks, lrm) / tau_x if tau_x > 0 else 0.0
                delta = float(torch.linalg.vector_norm(merged - lrm.to(merged.dtype)))
                if delta > 0:  # how far each cast moved the weights, relative to the delta
                    st["cast_change"] = float(torch.linalg.vector_norm(out.to(merged.dtype) - merged)) / delta
                    st["cast_change_nearest"] = float(torch.linalg.vector_norm(near.to(merged.dtype) - merged)) / delta
                del near
        return out

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
