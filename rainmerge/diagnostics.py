"""See the trio before merging: do the two task vectors share directions?

RAIN's premise (and the paper's orthogonality analysis) is that the instruction task vector
tau_ITM = ITM - base and the reasoning one tau_LRM = LRM - base occupy nearly orthogonal subspaces, so
adding the first disturbs the second little. Per module we compare their principal input-space
subspaces against what two random subspaces of the same ranks would share.
"""

from __future__ import annotations

import torch


def principal_subspace(delta: torch.Tensor, rank: int, seed: int = 0) -> torch.Tensor:
    """Orthonormal basis [in, rank] of the top right singular vectors of delta [out, in]."""
    d = delta.float()
    rank = max(1, min(rank, min(d.shape)))
    if rank * 4 >= min(d.shape):  # small matrices: the exact SVD is cheap and exact
        return torch.linalg.svd(d, full_matrices=False).Vh[:rank].T
    g = torch.Generator().manual_seed(seed)
    # randomized range finder on d^T (the input space), two power iterations for a sharp top-r
    omega = torch.randn(d.shape[0], rank + 8, generator=g)
    y = d.T @ omega
    for _ in range(2):
        y = d.T @ (d @ y)
    q = torch.linalg.qr(y).Q
    _, _, vh = torch.linalg.svd(d @ q, full_matrices=False)
    return q @ vh[:rank].T


def subspace_overlap(u: torch.Tensor, v: torch.Tensor) -> float:
    """||U^T V||_F^2 / min(r_u, r_v): the mean squared cosine of the principal angles (1 = shared, 0 = orthogonal)."""
    return float(torch.linalg.norm(u.T @ v) ** 2 / min(u.shape[1], v.shape[1]))


def random_overlap(dim: int, r_u: int, r_v: int) -> float:
    """What two uniformly random subspaces of ranks r_u, r_v in R^dim share on average: max(r_u, r_v) / dim."""
    return max(r_u, r_v) / dim


def task_vector_overlap(tau_itm: torch.Tensor, tau_lrm: torch.Tensor, rank: int = 16) -> dict[str, float]:
    """One module: overlap of the two task vectors' principal subspaces, the random baseline, their ratio."""
    u, v = principal_subspace(tau_itm, rank), principal_subspace(tau_lrm, rank)
    got, base = subspace_overlap(u, v), random_overlap(tau_itm.shape[1], u.shape[1], v.shape[1])
    return {"overlap": got, "random": base, "ratio": got / base if base > 0 else float("inf"), "rank": u.shape[1]}
