"""The row space of the protected features, X = U S V^T, in float64: singular values and right vectors.

Two ways, one answer (the same projector to float64 rounding; tests/test_factorize.py):

* ``svd``  -- LAPACK/cuSOLVER's SVD of X itself. The reference, and fast on the CPU.
* ``gram`` -- eigh of the small Gram matrix (X X^T when m <= width, else X^T X), then, for the wide
  case, V = orth(X^T U S^-1) by a Householder QR. Two GEMMs, one m x m eigh and one QR: on a GPU this
  replaces an iterative SVD (cuSOLVER's Jacobi/QR sweeps, latency-bound) by work the chip is built for.
  The Gram matrix squares the condition number, so singular values below GRAM_RTOL * s_max are not
  resolved and are left out; the left-out share of X is then MEASURED, ||X - X V V^T||_F / ||X||_F,
  and a factor that misses more than GRAM_TOL is redone by ``svd`` (counted in `Factors.redone`).

`auto` (the config default) is gram on CUDA, and on the CPU for large factors (min(m, width) >=
GRAM_MIN_SIDE), svd otherwise: LAPACK's SVD wins on small factors, gram on large ones (the measured
crossover: benchmarks/README.md, "Figures that were in the code").

QR keeps nested spans: the first k columns of V span the same space as the k leading X^T u_i, so the
energy and capped rules, which keep a leading set of directions, see the same subspace either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FACTORIZATIONS = ("auto", "svd", "gram")
GRAM_RTOL = 1e-7  # s / s_max below this is not resolved by a float64 Gram matrix (s^2 / s_max^2 ~ 50 eps)
GRAM_MIN_SIDE = 1024  # auto on the CPU: gram from this min(m, width) on
GRAM_TOL = 1e-7  # largest share of ||X||_F the gram factor may leave out before svd redoes it


@dataclass
class Factors:
    """A batch of factorizations: s [B, n] descending, V [B, width, n]; rank [B] numerical ranks."""

    s: torch.Tensor
    V: torch.Tensor
    rank: list[int]
    method: str
    redone: int = 0  # batch members the gram path handed to svd (left-out share above GRAM_TOL)


def resolve(method: str, X: torch.Tensor) -> str:
    """The method `auto` stands for, for features X [..., m, width] where they lie."""
    if method not in FACTORIZATIONS:
        raise ValueError(f"factorization must be one of {FACTORIZATIONS}, got {method!r}")
    if method == "auto":
        return "gram" if X.device.type == "cuda" or min(X.shape[-2:]) >= GRAM_MIN_SIDE else "svd"
    return method


def _ranks(s: torch.Tensor, rtol: float) -> list[int]:
    host = s.cpu()  # one copy for the whole batch
    return [int((row > rtol * row[0]).sum()) if row.numel() and row[0] > 0 else 0 for row in host]


def svd_factors(X: torch.Tensor, rank_rtol: float) -> Factors:
    _, s, Vh = torch.linalg.svd(X, full_matrices=False)
    return Factors(s, Vh.mT, _ranks(s, rank_rtol), "svd")


def gram_factors(X: torch.Tensor, rank_rtol: float) -> Factors:
    m, width = X.shape[-2:]
    if width <= m:  # tall: X^T X is the small side and its eigenvectors are V itself
        ev, V = torch.linalg.eigh(X.mT @ X)
        s, V = ev.flip(-1).clamp_min(0).sqrt(), V.flip(-1)
    else:
        ev, U = torch.linalg.eigh(X @ X.mT)
        s, U = ev.flip(-1).clamp_min(0).sqrt(), U.flip(-1)
        V0 = (X.mT @ U).div_(s.clamp_min(torch.finfo(X.dtype).tiny)[..., None, :])
        V, R = torch.linalg.qr(V0)
        del V0  # in place from here: each [width, m] temporary is as large as X
        V.mul_(torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).add_(0.5).sign()[..., None, :])
    rank = _ranks(s, max(rank_rtol, GRAM_RTOL))
    out = Factors(s, V, rank, "gram")
    # measured, not assumed: the share of X outside the kept directions
    left = torch.stack([left_out(X[b], V[b, :, :r]) for b, r in enumerate(rank)])
    norms = torch.linalg.vector_norm(X, dim=(-2, -1))
    bad = [b for b, ok in enumerate((left <= GRAM_TOL * norms).tolist()) if not ok]
    if bad:
        ref = svd_factors(X[bad], rank_rtol)  # same n = min(m, width) columns as the gram factor
        for j, b in enumerate(bad):
            out.s[b], out.V[b], out.rank[b] = ref.s[j], ref.V[j], ref.rank[j]
        out.redone = len(bad)
    return out


def left_out(X: torch.Tensor, V: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """||X - X V V^T||_F, a block of rows at a time (a full-size temporary would be as large as X)."""
    sq = torch.zeros((), dtype=X.dtype, device=X.device)
    for r0 in range(0, X.shape[0], rows):
        x = X[r0:r0 + rows]
        sq += torch.linalg.vector_norm(x.addmm(x @ V, V.mT, alpha=-1.0)) ** 2 if V.shape[1] else (x**2).sum()
    return sq.sqrt()


def factorize(X: torch.Tensor, method: str = "svd", rank_rtol: float = 1e-12) -> Factors:
    """Factor a batch X [B, m, width] (float64) by `method` (svd | gram; see the module docstring)."""
    if X.dim() != 3:
        raise ValueError(f"factorize takes a batch [B, m, width], got shape {tuple(X.shape)}")
    return gram_factors(X, rank_rtol) if method == "gram" else svd_factors(X, rank_rtol)
