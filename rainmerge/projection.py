"""Stage 1 math: the null-space projector of paper Eq. 4 and the projected task vector of Eq. 5.

With column-major vec, Phi = X (x) I_out, so P_perp(Phi) vec(dW) = vec(dW (I - X^T (X X^T + lam I)^-1 X)).
We factor X = U S V^T once per feature group and apply dW - (dW V) diag(s^2/(s^2+lam_i)) V^T; that is the
same operator, exact for lam -> 0, without any inverse, and shared by every module reading that input.
The ridge is per direction, lam_i = ridge * s_i^2 (stage1.ridge), so every protected direction is removed to
within ridge / (1 + ridge) whatever its scale: a ridge relative to the total feature energy (the old rule)
is set by the largest channel, and real LLMs have channels 1e4x larger than the rest (massive
activations), which left the weak directions partly unprojected. Numerical zeros (s < rank_rtol * s_max)
are not directions at all and are left out.

Which subspace is protected (recorded per basis as `rule`):

* ``exact``  -- every direction of the numerical row space of X is removed (numerical rank <= cap):
  the identity dW_perp x = 0 holds for every protected x;
* ``energy`` -- the smallest leading set of directions holding a share of the feature energy is
  removed: ``energy`` when the user asks for it, otherwise ``energy_when_capped`` (< 1) when the exact
  projector would need more than the rank cap;
* ``capped`` -- the set still exceeds the cap (always, with the default energy_when_capped = 1), so the
  ``cap`` leading directions are removed: the most protection the cap allows.

cap = floor(max_rank_fraction * width). Only ``exact`` keeps the identity; the others are reported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .dtypes import FLOATS
from .factorize import factorize, resolve

log = logging.getLogger("rainmerge")
RULES = ("exact", "energy", "capped")


@dataclass
class Basis:
    """Right singular vectors of the protected features X [m, in] (numerical rank r)."""

    V: torch.Tensor  # [in, r]
    s: torch.Tensor  # [r], descending
    k: int  # directions removed (energy threshold and rank cap applied)
    lam: float  # absolute ridge (0 for new bases; artifacts made before the per-direction ridge carry one)
    capped: bool  # the rank cap bound: even the energy fallback needed more than the cap
    rows: int = -1  # m, protected feature rows (-1: unknown, e.g. loaded from an old artifact)
    rel_ridge: float = 0.0  # per-direction ridge: lambda_i = rel_ridge * s_i^2 (stage1.ridge)
    # residual a float32-stored copy of this factor leaves on the features themselves (float64 arithmetic,
    # probe deltas; -1: not measured). Above STORE_TOL the factor is kept in float64 (storage_check)
    float32_residual: float = -1.0

    @property
    def width(self) -> int:
        return self.V.shape[0]

    @property
    def rank(self) -> int:
        return self.V.shape[1]

    @property
    def rule(self) -> str:
        """exact | energy | capped (derived, so it survives any artifact round trip of k and capped)."""
        if self.capped:
            return "capped"
        return "exact" if self.k >= self.rank else "energy"

    def ridge_share(self) -> torch.Tensor:
        """Per removed direction, the share the ridge leaves: lambda_i / (s_i^2 + lambda_i), lambda_i =
        rel_ridge * s_i^2 + lam. With the per-direction ridge it is rel_ridge / (1 + rel_ridge) for every
        direction, whatever its scale (an absolute lam leaves weak directions of massive-channel features)."""
        s2 = self.s[: self.k] ** 2
        lam = self.rel_ridge * s2 + self.lam
        return torch.where(lam > 0, lam / (s2 + lam), torch.zeros_like(s2))

    def shrink(self) -> torch.Tensor:
        """Per-direction removal weights s^2/(s^2+lambda_i) of the k removed directions."""
        return 1.0 - self.ridge_share()

    def complement(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(W, Ve, we) with I - V_k diag(shrink) V_k^T = W W^T + Ve diag(we) Ve^T, or None when the direct
        form is cheaper. W [in, in-k] is an orthonormal basis of the kept subspace; Ve are the few removed
        directions whose ridge share we = lam / (s^2 + lam) exceeds RIDGE_KEEP (usually none). Eq. 5 then
        costs 4 out in (in - k + |e|) flops instead of 4 out in k: far less once the protected rows fill
        most of the width (a capped 1.5B layer removes 90% of it). Cached on the object (not a field, so
        artifacts never store it)."""
        cached = self.__dict__.get("_complement", False)
        if cached is not False:
            return cached
        keep = self.ridge_share().cpu()
        extra = (keep > RIDGE_KEEP).nonzero().flatten().to(self.V.device)
        out = None
        if self.width - self.k + len(extra) <= COMPLEMENT_SHARE * self.k:
            Q = torch.linalg.qr(self.V[:, : self.k].to(torch.float64), mode="complete").Q
            W = Q[:, self.k:].to(self.V.dtype).contiguous()
            out = (W, self.V[:, extra].contiguous(), keep.to(self.V.device)[extra].to(self.V.dtype))
        self.__dict__["_complement"] = out
        return out

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Basis":
        return Basis(self.V.to(device, dtype), self.s.to(device, dtype), self.k, self.lam, self.capped, self.rows,
                     self.rel_ridge, self.float32_residual)


COMPLEMENT_SHARE = 0.75  # the complement form when its rank is at most this share of k (QR and extras cost)
RIDGE_KEEP = 1e-6  # removed directions whose ridge share lam/(s^2+lam) is above this are kept exactly
STORE_TOL = 1e-5  # a float32-stored factor leaving more than this on its own features stays in float64
PROBES = 8  # probe deltas of each kind in storage_check


def storage_check(X: torch.Tensor, basis: Basis) -> float:
    """The identity residual ||d P32 X^T|| / ||d X^T|| (worst probe) that the float32-stored copy of a float64
    factor leaves on its own features X [m, width], with the projection applied in float64: what storage alone
    costs, separate from float32 arithmetic (which Stage 3's float64 redo removes). Probes: isotropic deltas,
    and deltas weak where the features are strong (a task vector small in a massive-activation channel)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    width = X.shape[1]
    iso = torch.randn(PROBES, width, generator=g, dtype=torch.float64).to(X.device)
    col = torch.linalg.vector_norm(X, dim=0)
    weak = iso / col.clamp_min(float(col.max()) * 1e-12) * float(col.mean())
    d = torch.cat([iso, weak])
    b32 = basis.to(dtype=torch.float32).to(dtype=torch.float64)
    p = project_delta(d, b32)
    before = torch.linalg.vector_norm(d @ X.T, dim=1)
    after = torch.linalg.vector_norm(p @ X.T, dim=1)
    return float((after / before.clamp_min(torch.finfo(torch.float64).tiny)).max())


def rank_cap(width: int, max_rank_fraction: float) -> int:
    return int(max_rank_fraction * width)


def _energy_count(s: torch.Tensor, energy: float) -> int:
    cum = torch.cumsum(s**2, 0) / float((s**2).sum())
    return min(int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype)).item()) + 1, len(s))


def protected_basis(
    X: torch.Tensor,
    *,
    ridge: float = 1e-10,
    energy: float = 1.0,
    max_rank_fraction: float = 0.9,
    rank_rtol: float = 1e-12,
    energy_when_capped: float = 1.0,
    dtype: str = "float64",
    factorization: str = "svd",
) -> Basis:
    """Factor the protected features (paper Eq. 4's Phi_Omega) into the subspace the delta must avoid.

    The factorization always runs in float64 (once per feature group: cheap next to the projections,
    and the directions of an ill-conditioned X are only right to ~1e-7 * s_max / s in float32), by
    `factorization` (svd | gram | auto: rainmerge.factorize); `dtype` is the dtype the basis is stored
    and applied in (float32: half the memory and a faster projection; figures in benchmarks/README.md).

    Rule (see the module docstring): remove the whole numerical row space when it fits under the cap
    (exact); otherwise the leading directions holding `energy_when_capped` (< 1) of the energy when they
    fit (energy); otherwise the `cap` leading directions (capped). An explicit `energy` < 1 applies first.
    """
    return protected_bases(X[None], ridge=ridge, energy=energy, max_rank_fraction=max_rank_fraction,
                           rank_rtol=rank_rtol, energy_when_capped=energy_when_capped, dtype=dtype,
                           factorization=factorization)[0]


def protected_bases(X: torch.Tensor, *, ridge: float = 1e-10, energy: float = 1.0, max_rank_fraction: float = 0.9,
                    rank_rtol: float = 1e-12, energy_when_capped: float = 1.0, dtype: str = "float64",
                    factorization: str = "svd") -> list[Basis]:
    """protected_basis for a batch X [B, m, width] (e.g. o_proj's head blocks): one batched
    factorization and one device->host copy of the singular values, not B loops with a sync each."""
    B, m, width = X.shape
    if m == 0:
        return [Basis(torch.zeros(width, 0, dtype=FLOATS[dtype], device=X.device),
                      torch.zeros(0, dtype=FLOATS[dtype], device=X.device), 0, 0.0, False, 0, ridge) for _ in range(B)]
    f = factorize(X.to(torch.float64), resolve(factorization, X), rank_rtol)
    if f.redone:
        log.info("stage 1: %d of %d gram factors left out more than their tolerance of X; redone by svd",
                 f.redone, B)
    s_host = f.s.cpu()
    cap = rank_cap(width, max_rank_fraction)
    out = []
    for b in range(B):
        r = f.rank[b]
        s = s_host[b, :r]
        total = float((s**2).sum())
        k = r if energy >= 1.0 or total == 0 else _energy_count(s, energy)
        if k > cap and energy_when_capped < 1.0 and total > 0:
            k = min(k, _energy_count(s, energy_when_capped))
        capped = k > cap
        k = min(k, cap)
        basis = Basis(f.V[b, :, :r].contiguous(), f.s[b, :r].contiguous(), k, 0.0, capped, m, ridge)
        if dtype == "float32" and basis.rule == "exact" and k:  # does float32 storage keep the identity?
            basis.float32_residual = storage_check(X[b].to(torch.float64), basis)
        if basis.V.dtype != FLOATS[dtype] and not basis.float32_residual > STORE_TOL:
            basis = basis.to(dtype=FLOATS[dtype])
        out.append(basis)
    if kept := sum(b.V.dtype == torch.float64 for b in out) if dtype == "float32" else 0:
        log.info("stage 1: %d of %d float32 factors would leave more than %.0e of their features; kept in float64",
                 kept, B, STORE_TOL)
    return out


def project_delta(delta: torch.Tensor, basis: Basis) -> torch.Tensor:
    """Paper Eq. 5: dW_perp = dW (I - X^T (X X^T + lam I)^-1 X), in the basis's dtype (a new tensor)."""
    return project_delta_(delta.to(basis.V.dtype, copy=True), basis)


def project_delta_(d: torch.Tensor, basis: Basis, dV: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 5 in place on `d` (already in the basis's dtype and device; a column-block view is fine):
    d -= (d V_k) diag(shrink) V_k^T as one addmm_, so no [out, in] temporary is made.
    `dV`: d @ V if the caller already has it (the residual statistic needs it too)."""
    if basis.k == 0:
        return d
    comp = basis.complement()
    if comp is not None:  # d P = (d W) W^T + (d Ve) diag(we) Ve^T, still in place on d
        W, Ve, we = comp
        ce = (d @ Ve) * we if len(we) else None
        d.addmm_(d @ W, W.T, beta=0.0)  # beta=0: d's old values are not read (the product holds them)
        return d.addmm_(ce, Ve.T) if ce is not None else d
    Vk = basis.V[:, : basis.k]
    coef = (d @ Vk if dV is None else dV[:, : basis.k]) * basis.shrink()
    return d.addmm_(coef, Vk.T, alpha=-1.0)


RESIDUAL_ROWS = 256  # output rows the residual statistic is measured on (all rows when fewer)


def project_with_stats_(d: torch.Tensor, basis: Basis, residual_rows: int = RESIDUAL_ROWS) -> dict[str, Any]:
    """project_delta_ plus the statistics of projection_stats at about the cost of its two GEMMs: d V is
    shared by Eq. 5 and the residual's denominator, and (P d) V is taken on every step-th output row (at
    most `residual_rows`; the float32 rounding it checks is spread over all rows), so the check costs
    ~residual_rows/out of a third GEMM, not a whole one."""
    dn = float(torch.linalg.vector_norm(d))
    res, step = 0.0, 1
    if basis.V.shape[1] == 0:
        project_delta_(d, basis)
    else:
        step = -(-d.shape[0] // residual_rows)  # every step-th row: a strided view, no gather
        if basis.complement() is None:
            dV = d @ basis.V
            before = float(torch.linalg.vector_norm(dV[::step] * basis.s))
            project_delta_(d, basis, dV)
            del dV
        else:  # the complement form never forms d V: measure the sampled rows only
            before = float(torch.linalg.vector_norm((d[::step] @ basis.V) * basis.s))
            project_delta_(d, basis)
        if before > 0:
            res = float(torch.linalg.vector_norm((d[::step] @ basis.V) * basis.s)) / before
    pn = float(torch.linalg.vector_norm(d))
    rows = len(range(0, d.shape[0], step)) if basis.V.shape[1] else d.shape[0]
    return {"residual": res, "residual_rows": rows, "residual_estimated": rows < d.shape[0],
            "kept_norm": pn / dn if dn > 0 else 1.0, "rank_removed": basis.k,
            "feature_rank": int(basis.V.shape[1]), "rows": basis.rows, "width": basis.width,
            "capped": basis.capped, "rule": basis.rule, "_norms": (dn, pn)}


def projection_stats(delta: torch.Tensor, projected: torch.Tensor, basis: Basis) -> dict[str, Any]:
    """residual = ||dW_perp X^T|| / ||dW X^T|| (from X = U S V^T), kept = ||dW_perp|| / ||dW||."""
    d = delta.to(basis.V.dtype)
    p = projected.to(basis.V.dtype)
    if basis.V.shape[1] == 0:
        res = 0.0
    else:
        before = torch.linalg.norm((d @ basis.V) * basis.s)
        after = torch.linalg.norm((p @ basis.V) * basis.s)
        res = float(after / before) if before > 0 else 0.0
    dn = torch.linalg.norm(d)
    return {
        "residual": res,
        "kept_norm": float(torch.linalg.norm(p) / dn) if dn > 0 else 1.0,
        "rank_removed": basis.k,
        "feature_rank": int(basis.V.shape[1]),
        "rows": basis.rows,
        "width": basis.width,
        "capped": basis.capped,
        "rule": basis.rule,
    }


O_PROJ_MODES = ("full", "per_head")


def bases_from_features(
    feats: dict[str, torch.Tensor], num_heads: int, head_dim: int, *, o_proj: str = "full", **kw: Any
) -> dict[str, Basis]:
    """One basis per feature group.

    o_proj='full' (default): o_proj's input is one group "o_in" over its full width H*head_dim; the
    merge scales the delta per head first and projects last, so the identity holds with per-head alpha.
    o_proj='per_head': one basis per head block "o_in.{h}" (width head_dim, so the rank cap binds as
    soon as the protected rows exceed ~0.9*head_dim); kept as an option for comparison.
    """
    if o_proj not in O_PROJ_MODES:
        raise ValueError(f"o_proj must be one of {O_PROJ_MODES}, got {o_proj!r}")
    out: dict[str, Basis] = {}
    for group, X in feats.items():
        if group == "o_in" and o_proj == "per_head":  # one batched factorization for all heads
            heads = X.reshape(X.shape[0], num_heads, head_dim).transpose(0, 1)
            out.update({f"o_in.{h}": b for h, b in enumerate(protected_bases(heads, **kw))})
        else:
            out[group] = protected_basis(X, **kw)
    return out


# ----------------------------------------------------------------------------------------------
# capacity planning (before any forward) and the one-line summary (after the merge)


def positions_per_sample(positions: str, radius: int) -> int:
    """|Omega_think| per sample: 2 tags, or <think>..+r and </think>-r..</think> (2(r+1), disjoint windows)."""
    return 2 if positions == "tags" else 2 * (radius + 1)


def capacity(arch: Any, rows: int, max_rank_fraction: float = 0.9, o_proj: str = "full",
             modules: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")) -> dict[str, dict[str, Any]]:
    """Per feature group: input width, rank cap and whether `rows` protected rows guarantee rule exact.

    rows <= cap guarantees 'exact' whatever the features (the numerical rank never exceeds rows).
    `arch` needs hidden, num_heads, head_dim, intermediate (an ArchSpec).
    """
    from .linears import FEATURE_GROUP

    widths = {"attn_in": arch.hidden, "mlp_in": arch.hidden, "down_in": arch.intermediate,
              "o_in": arch.num_heads * arch.head_dim if o_proj == "full" else arch.head_dim}
    out = {}
    for g in sorted({FEATURE_GROUP[m] for m in modules}):
        w = widths[g]
        cap = rank_cap(w, max_rank_fraction)
        out[g] = {"width": w, "cap": cap, "rows": rows, "exact_guaranteed": rows <= cap,
                  "rows_over_width": round(rows / w, 4)}
    return out


def projection_summary(stats: Mapping[str, Mapping[str, Any]], stage: str = "stage 1", tol: float = 1e-4) -> str:
    """One console line for all merged modules (the stats dict of Rain.stats() / provenance module_stats).

    e.g. "stage 1: 56 modules, projection exact (residual <= 1e-04, estimated on <= 256 rows) on 56 (max residual
    3e-09), mean kept-norm 0.71, min 0.42 (layer 3 o); rule: exact 56 / energy 0 / capped 0; written as bfloat16
    (compensated rounding): max residual 2.1e-02 of ||tau x|| (nearest rounding 8.3e-02), 4.0e-04 of ||W_LRM x||"
    The first residual is the float32/64 delta's (the solver's accuracy); the last clause is the identity of the
    tensors written, measured on every row.
    """
    rows = [(name, s) for name, s in stats.items() if "residual" in s]
    if not rows:
        return f"{stage}: no projected modules"
    res = [float(s["residual"]) for _, s in rows]
    kept = [float(s["kept_norm"]) for _, s in rows]
    ok = sum(r <= tol for r in res)
    i_min = min(range(len(rows)), key=kept.__getitem__)
    name, smin = rows[i_min]
    where = f"layer {smin['layer']} {smin['module']}" if "layer" in smin and "module" in smin else name
    counts = {r: 0 for r in RULES}
    for _, s in rows:
        rule = s.get("rule", "capped" if s.get("capped") else "exact")
        counts[rule] = counts.get(rule, 0) + 1
    rule_txt = " / ".join(f"{k} {v}" for k, v in counts.items())
    est = [int(s["residual_rows"]) for _, s in rows if s.get("residual_estimated")]
    how = f", estimated on <= {max(est)} rows" if est else ""
    line = (f"{stage}: {len(rows)} modules, projection exact (residual <= {tol:.0e}{how}) on {ok} "
            f"(max residual {max(res):.1e}), mean kept-norm {sum(kept) / len(kept):.2f}, "
            f"min {kept[i_min]:.2f} ({where}); rule: {rule_txt}")
    return line + cast_summary(stats)


def cast_summary(stats: Mapping[str, Mapping[str, Any]]) -> str:
    """'; written as bfloat16 (...): max residual ...' over the modules with cast statistics, or ''."""
    cast = [s for s in stats.values() if "cast_residual" in s]
    if not cast:
        return ""
    dtypes = "/".join(sorted({str(s["cast_dtype"]) for s in cast}))
    roundings = "/".join(sorted({str(s["cast_rounding"]) for s in cast}))
    how = "no rounding" if roundings == "none" else f"{roundings} rounding"
    near = [float(s["cast_residual_nearest"]) for s in cast if "cast_residual_nearest" in s]
    return (f"; written as {dtypes} ({how}): max residual {max(float(s['cast_residual']) for s in cast):.1e}"
            f" of ||tau x||" + (f" (nearest rounding {max(near):.1e})" if near else "")
            + f", {max(float(s['cast_residual_vs_lrm']) for s in cast):.1e} of ||W_LRM x||, on every row")
