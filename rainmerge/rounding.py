"""Stage 3's cast to the checkpoint dtype, and what it does to the null-space identity.

The identity (W_merged - W_LRM) x = 0 at the protected features x holds for the float32 merge W* = W_LRM + Delta.
The checkpoint stores round(W*) in its own dtype; in bfloat16 the rounding error (~2^-9 |W|) is as large as a
1-2 % task vector, so the identity of the *shipped* weights is set by the rounding, not by the projector.

``compensated`` rounding (the default for bfloat16 / float16 outputs) is GPTQ's column-by-column rounding
(Frantar et al. 2023, the OBS update) with the Hessian of the protected outputs, H = X_k^T X_k = V_k S_k^2 V_k^T
(the removed directions of the module's bases): each column is rounded to the nearest representable value
and its error is pushed into the columns not rounded yet, through the Cholesky factor of H^-1, so that
||(Q - W*) X_k^T|| stays small; the error of the columns rounded last has nowhere to go, which sets the floor.
Columns go in descending diag(H) ("act order"), so the columns left last carry the least feature energy.
H is damped by DAMP * mean(diag H) (GPTQ's default share): less damping removes a little more of the residual
but pushes larger corrections into the directions the projector keeps (measured: `cast_change`).
``nearest``: plain round-to-nearest (the cast alone).

Cost per module: one width x width Cholesky (and inverse) per feature group and layer, shared by the modules
reading that input, held on the device while the layer is merged (width^2 float32: 1.4 GB for d_ff = 18944),
plus out * width^2 flops of updates (GEMMs, one block of columns at a time) and a Python step per column.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .projection import Basis

ROUNDINGS = ("compensated", "nearest")
NARROW = (torch.bfloat16, torch.float16)  # dtypes whose rounding error competes with a task vector
DAMP = 0.01  # H + DAMP * mean(diag H) I
BLOCK = 128  # columns per lazy update (GPTQ's block)
MEASURE_ROWS = 2048  # rows of a weight measured at once in float64 (bounds the temporary)

Blocks = Sequence[tuple[slice, Basis]]  # (input columns, their basis): rain.column_blocks


def protected_gram(blocks: Blocks, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """H = sum over blocks of V_k diag(s_k^2) V_k^T on its columns [width, width] (float64): the Gram matrix
    of the protected features along the directions the projector removes."""
    H = torch.zeros(width, width, dtype=torch.float64, device=device)
    for cols, b in blocks:
        if b.k:
            M = (b.V[:, : b.k] * b.s[: b.k]).to(device, torch.float64)
            H[cols, cols] += M @ M.T
    return H


@dataclass
class RoundingFactor:
    """Act-order permutation and the upper Cholesky factor of (H + damp I)^-1 in that order."""

    perm: torch.Tensor  # [width]
    U: torch.Tensor  # [width, width] float32, upper triangular

    @staticmethod
    def of(H: torch.Tensor, damp: float = DAMP) -> "RoundingFactor | None":
        """None when H is zero (nothing protected: the nearest cast is already optimal)."""
        diag = torch.diagonal(H)
        if not bool((diag > 0).any()):
            return None
        perm = torch.argsort(diag, descending=True)
        Hp = H[perm][:, perm]
        Hp.diagonal().add_(damp * float(diag.mean()))
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Hp)), upper=True)
        return RoundingFactor(perm, U.to(torch.float32))


def compensated_round(W: torch.Tensor, factor: RoundingFactor, dtype: torch.dtype, block: int = BLOCK) -> torch.Tensor:
    """W [out, width] (float32 or wider) rounded to `dtype` column by column, each column's rounding error
    pushed into the columns not rounded yet (GPTQ with H of protected_gram). Returns a new tensor in `dtype`.
    Works on W^T (one contiguous row per column of W), so each step reads and writes contiguous memory."""
    perm, U = factor.perm.to(W.device), factor.U.to(W.device)
    Wt = W.T[perm].to(torch.float32, copy=True)  # [width, out], in act order
    Qt = torch.empty(Wt.shape, dtype=dtype, device=W.device)
    n = Wt.shape[0]
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        Wb, Ub = Wt[i0:i1], U[i0:i1, i0:i1]
        E = torch.empty_like(Wb)
        for j in range(i1 - i0):
            Qt[i0 + j] = Wb[j]
            torch.sub(Wb[j], Qt[i0 + j].to(torch.float32), out=E[j]).div_(Ub[j, j])
            Wb[j + 1:].addr_(Ub[j, j + 1:], E[j], alpha=-1.0)
        if i1 < n:
            Wt[i1:].addmm_(U[i0:i1, i1:].T, E, alpha=-1.0)
    return Qt[torch.argsort(perm)].T.contiguous()


def feature_norm(A: torch.Tensor, blocks: Blocks, subtract: torch.Tensor | None = None) -> float:
    """||(A - subtract) X^T||_F over every protected feature row of every block (X = U S V^T, so it is
    ||(A - subtract)[:, cols] V S||), in float64, on all rows of A, MEASURE_ROWS at a time."""
    sq = 0.0
    for r0 in range(0, A.shape[0], MEASURE_ROWS):
        a = A[r0:r0 + MEASURE_ROWS].to(torch.float64)
        if subtract is not None:
            a = a - subtract[r0:r0 + MEASURE_ROWS].to(a.device, torch.float64)
        for cols, b in blocks:
            if b.rank:
                sq += float(torch.linalg.vector_norm((a[:, cols] @ b.V.to(a.device, torch.float64))
                                                     * b.s.to(a.device, torch.float64)) ** 2)
    return sq**0.5
