"""Task-vector overlap: identities (a subspace with itself, orthogonal complements) and the random baseline."""

import math

import torch

from rainmerge.diagnostics import principal_subspace, random_overlap, subspace_overlap, task_vector_overlap


def test_overlap_identities():
    torch.manual_seed(0)
    a = torch.randn(48, 256)
    u = principal_subspace(a, 8)
    assert torch.allclose(u.T @ u, torch.eye(8), atol=1e-5)
    assert math.isclose(subspace_overlap(u, u), 1.0, rel_tol=1e-5)
    q = torch.linalg.qr(torch.randn(256, 256)).Q
    assert subspace_overlap(q[:, :8], q[:, 8:16]) < 1e-8  # orthogonal subspaces share nothing


def test_randomized_subspace_matches_the_exact_svd_on_a_low_rank_matrix():
    torch.manual_seed(1)
    low = torch.randn(300, 6) @ torch.randn(6, 500) + 1e-4 * torch.randn(300, 500)
    exact = torch.linalg.svd(low, full_matrices=False).Vh[:6].T
    assert subspace_overlap(principal_subspace(low, 6), exact) > 0.999


def test_random_pairs_sit_at_the_baseline_and_shared_directions_stand_out():
    torch.manual_seed(2)
    dim, r = 512, 8
    got = [task_vector_overlap(torch.randn(64, dim), torch.randn(64, dim), r) for _ in range(5)]
    mean = sum(g["overlap"] for g in got) / len(got)
    assert 0.3 < mean / random_overlap(dim, r, r) < 3.0  # independent task vectors ~ the random baseline
    shared = torch.randn(4, dim)
    a = torch.randn(64, 4) @ shared + 0.05 * torch.randn(64, dim)
    b = torch.randn(64, 4) @ shared + 0.05 * torch.randn(64, dim)
    assert task_vector_overlap(a, b, r)["ratio"] > 10  # a shared subspace is flagged far above it
