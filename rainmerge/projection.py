"""Stage 1 math: the null-space projector of paper Eq. 4 and the projected task vector of Eq. 5.

With column-major vec, Phi = X (x) I_out, so P_perp(Phi) vec(dW) = vec(dW (I - X^T (X X^T + lam I)^-1 X)).
We factor X = U S V^T once per feature group and apply dW - (dW V) diag(s^2/(s^2+lam)) V^T; that is the
same operator, exact for lam -> 0, without any inverse, and shared by every module reading that input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_DT = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class Basis:
    """Right singular vectors of the protected features X [m, in] (numerical rank r)."""

    V: torch.Tensor  # [in, r]
    s: torch.Tensor  # [r], descending
    k: int  # directions removed (energy threshold and rank cap applied)
    lam: float  # absolute ridge
    capped: bool  # the rank cap bound: the projector is no longer exact

    @property
    def width(self) -> int:
        return self.V.shape[0]

    def shrink(self) -> torch.Tensor:
        """Per-direction removal weights s^2/(s^2+lam) of the k removed directions."""
        s2 = self.s[: self.k] ** 2
        return s2 / (s2 + self.lam)

    def to(self, device: torch.device | str) -> "Basis":
        return Basis(self.V.to(device), self.s.to(device), self.k, self.lam, self.capped)


def protected_basis(
    X: torch.Tensor,
    *,
    ridge: float = 1e-10,
    energy: float = 1.0,
    max_rank_fraction: float = 0.9,
    rank_rtol: float = 1e-12,
    dtype: str = "float64",
) -> Basis:
    """Factor the protected features (paper Eq. 4's Phi_Omega) into the subspace the delta must avoid.

    When the features span (nearly) the whole input width, an exact projector would erase the delta;
    the energy threshold and the rank cap keep the dominant directions only, and `capped` says so.
    """
    Xd = X.to(_DT[dtype])
    m, width = Xd.shape
    if m == 0:
        return Basis(torch.zeros(width, 0, dtype=Xd.dtype), torch.zeros(0, dtype=Xd.dtype), 0, 0.0, False)
    _, s, Vh = torch.linalg.svd(Xd, full_matrices=False)
    r = int((s > rank_rtol * s[0]).sum()) if s[0] > 0 else 0
    s, V = s[:r], Vh[:r].T.contiguous()
    total = float((s**2).sum())
    if energy >= 1.0 or total == 0:
        k = r
    else:
        cum = torch.cumsum(s**2, 0) / total
        k = int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype)).item()) + 1
        k = min(k, r)
    cap = int(max_rank_fraction * width)
    capped = k > cap
    k = min(k, cap)
    lam = ridge * total / m
    return Basis(V, s, k, lam, capped)


def project_delta(delta: torch.Tensor, basis: Basis) -> torch.Tensor:
    """Paper Eq. 5: dW_perp = dW (I - X^T (X X^T + lam I)^-1 X), in the basis's dtype."""
    d = delta.to(basis.V.dtype)
    if basis.k == 0:
        return d
    Vk = basis.V[:, : basis.k]
    return d - ((d @ Vk) * basis.shrink()) @ Vk.T


def projection_stats(delta: torch.Tensor, projected: torch.Tensor, basis: Basis) -> dict[str, float]:
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
        "width": basis.width,
        "capped": basis.capped,
    }


def bases_from_features(
    feats: dict[str, torch.Tensor], num_heads: int, head_dim: int, **kw: float | str
) -> dict[str, Basis]:
    """One basis per feature group; o_proj input is split into one basis per head block."""
    out: dict[str, Basis] = {}
    for group, X in feats.items():
        if group == "o_in":
            for h in range(num_heads):
                out[f"o_in.{h}"] = protected_basis(X[:, h * head_dim:(h + 1) * head_dim], **kw)
        else:
            out[group] = protected_basis(X, **kw)
    return out
