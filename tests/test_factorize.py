"""The two factorizations of the protected features (rainmerge.factorize) protect the same subspace:
the Gram path is checked against the paper's closed form and the identity, not against itself."""

import os

import torch

from rainmerge import factorize
from rainmerge.factorize import GRAM_TOL, factorize as factor
from rainmerge.io import lazy
from rainmerge.projection import bases_from_features, project_delta, protected_basis

F64 = torch.float64


def _spectrum(m: int, width: int, s: torch.Tensor, seed: int) -> torch.Tensor:
    """X = U diag(s) V^T with random orthonormal U, V."""
    g = torch.Generator().manual_seed(seed)
    n = len(s)
    U = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=F64))[0]
    V = torch.linalg.qr(torch.randn(width, n, generator=g, dtype=F64))[0]
    return (U * s) @ V.T


def _residual(tau: torch.Tensor, X: torch.Tensor, **kw) -> float:
    P = project_delta(tau, protected_basis(X, **kw))
    return float(torch.linalg.norm(P @ X.T) / torch.linalg.norm(tau @ X.T))


def test_gram_matches_the_closed_form_projector_wide_and_tall():
    g = torch.Generator().manual_seed(0)
    for m, width in ((30, 80), (120, 24)):  # wide: eigh of X X^T + QR; tall: eigh of X^T X
        X = torch.randn(m, width, generator=g, dtype=F64)
        dW = torch.randn(16, width, generator=g, dtype=F64)
        b = protected_basis(X, ridge=1e-3, max_rank_fraction=1.0, factorization="gram")
        # per-direction ridge lambda_i = 1e-3 s_i^2: (X X^T + Lambda)^-1 = ((1 + 1e-3) X X^T)^-1
        if m <= width:  # Eq. 4-5 as written: dW (I - X^T (X X^T + Lambda)^-1 X)
            paper = dW @ (torch.eye(width, dtype=F64) - X.T @ torch.linalg.solve((1 + 1e-3) * X @ X.T, X))
        else:  # the same operator through the push-through identity
            paper = dW @ (torch.eye(width, dtype=F64) - torch.linalg.solve((1 + 1e-3) * X.T @ X, X.T @ X))
        assert torch.allclose(project_delta(dW, b), paper, atol=1e-10)
        assert torch.allclose(b.V.T @ b.V, torch.eye(b.rank, dtype=F64), atol=1e-12)


def test_gram_keeps_the_identity_on_ill_conditioned_features():
    tau = torch.randn(24, 96, generator=torch.Generator().manual_seed(1), dtype=F64)
    X = _spectrum(40, 96, torch.logspace(0, -6, 40, dtype=F64), seed=2)  # condition number 1e6
    b = protected_basis(X, factorization="gram", ridge=0.0)
    assert b.rank == 40 and b.rule == "exact"
    assert _residual(tau, X, factorization="gram", ridge=0.0) < 1e-8
    # directions below GRAM_RTOL are left out, but what they carry is far under the exactness tolerance
    X9 = _spectrum(40, 96, torch.logspace(0, -9, 40, dtype=F64), seed=3)
    assert protected_basis(X9, factorization="gram").rank < 40
    assert _residual(tau, X9, factorization="gram", ridge=0.0) < 1e-6


def test_gram_hands_a_factor_to_svd_when_it_would_leave_out_too_much():
    # one strong direction and 60 weak ones just under GRAM_RTOL: together ~sqrt(60) * 5e-8 of ||X||
    s = torch.cat([torch.ones(1, dtype=F64), torch.full((60,), 5e-8, dtype=F64)])
    X = _spectrum(61, 128, s, seed=4)
    good = torch.randn(61, 128, generator=torch.Generator().manual_seed(5), dtype=F64)
    f = factor(torch.stack([good, X]), "gram", rank_rtol=1e-12)
    assert f.redone == 1
    ref = factor(X[None], "svd", rank_rtol=1e-12)
    assert f.rank == [61, ref.rank[0]] and ref.rank[0] == 61
    r = f.rank[1]
    P, Pref = f.V[1, :, :r] @ f.V[1, :, :r].T, ref.V[0, :, :r] @ ref.V[0, :, :r].T
    assert torch.allclose(P, Pref, atol=1e-10)
    left = torch.linalg.norm(X - X @ P) / torch.linalg.norm(X)
    assert left < GRAM_TOL


def test_auto_is_svd_for_small_cpu_factors_and_gram_for_large_ones():
    assert factorize.resolve("auto", torch.empty(64, 896)) == "svd"
    assert factorize.resolve("auto", torch.empty(2, 1800, 3584)) == "gram"
    assert factorize.resolve("svd", torch.empty(1800, 3584)) == "svd"
    try:
        factorize.resolve("qr", torch.empty(2, 2))
    except ValueError as exc:
        assert "factorization must be one of" in str(exc)
    else:
        raise AssertionError("an unknown factorization was accepted")


def test_per_head_bases_annihilate_each_head_block():
    """One batched factorization for all heads: each o_in.{h} basis protects exactly head h's columns."""
    g = torch.Generator().manual_seed(6)
    heads, hd = 4, 32
    X = torch.randn(20, heads * hd, generator=g, dtype=torch.float32) * torch.arange(1, heads * hd + 1)
    for meth in ("svd", "gram"):
        bases = bases_from_features({"o_in": X}, heads, hd, o_proj="per_head", factorization=meth)
        assert sorted(bases) == [f"o_in.{h}" for h in range(heads)]
        for h in range(heads):
            Xh = X[:, h * hd:(h + 1) * hd].double()
            tau = torch.randn(16, hd, generator=g, dtype=F64)
            P = project_delta(tau, bases[f"o_in.{h}"])
            assert bases[f"o_in.{h}"].rule == "exact"
            assert torch.linalg.norm(P @ Xh.T) <= 1e-9 * torch.linalg.norm(tau @ Xh.T)


def test_file_digests_hash_each_inode_once_and_match_hashlib(tmp_path, monkeypatch):
    import hashlib

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(os.urandom(3 << 20))
    b.write_bytes(b"other bytes")
    os.link(a, tmp_path / "a-link.bin")
    calls = []
    real = lazy.sha256_file
    monkeypatch.setattr(lazy, "sha256_file", lambda p: calls.append(p) or real(p))
    lazy._DIGESTS.clear()
    got = lazy.sha256_files([a, b, tmp_path / "a-link.bin"], workers=3)
    assert got == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, a)]
    assert len(calls) == 2  # the hard link is the same inode: read once
    b.write_bytes(b"changed, longer bytes")  # a new size and mtime: hashed again, not served from memory
    assert lazy.sha256_files([b]) == [hashlib.sha256(b"changed, longer bytes").hexdigest()] and len(calls) == 3


def test_stage1_projectors_consume_reads_each_layer_once_and_gives_the_same_bases(tmp_path, monkeypatch):
    """The pipeline's compute_projectors step: features come from per-layer files, each read once and
    dropped as soon as its bases exist; the bases equal those made from features held in memory."""
    from types import SimpleNamespace

    from rainmerge import stages
    from rainmerge.config import ProjectionConfig
    from rainmerge.product import artifacts as A

    g = torch.Generator().manual_seed(9)
    feats = {l: {"attn_in": torch.randn(12, 64, generator=g), "down_in": torch.randn(12, 96, generator=g)}
             for l in range(3)}
    ctx = SimpleNamespace(layers=(0, 1, 2), device="cpu", arch=SimpleNamespace(num_heads=4, head_dim=16))
    s1 = ProjectionConfig()
    ref = stages.stage1_projectors(ctx, feats, s1)
    A.save_features(tmp_path, feats)
    reads = []
    real = A.load_file
    monkeypatch.setattr(A, "load_file", lambda p: reads.append(p) or real(p))
    files = A.load_features(tmp_path)
    got = stages.stage1_projectors(ctx, files, s1, consume=True)
    assert len(reads) == 3 and len(set(reads)) == 3 and len(files) == 0
    for l in ctx.layers:
        for k, b in ref[l].items():
            assert got[l][k].k == b.k and torch.allclose(got[l][k].V @ got[l][k].V.T, b.V @ b.V.T, atol=1e-6)
