"""The Stage-3 fast path: in-place projection with statistics, float32 bases with a float64 fallback."""

import dataclasses
import torch

from rainmerge.coefficients import uniform_coefficients
from rainmerge.methods import Site
from rainmerge.methods.rain import Rain
from rainmerge.projection import (project_delta, project_delta_, project_with_stats_, projection_stats,
                                  protected_basis)


def _ill_conditioned(m: int, width: int, seed: int) -> torch.Tensor:
    """Features whose singular values span 1 .. 1e-6 (like a layer-0 input with outlier dimensions)."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(width, m, generator=g, dtype=torch.float64))[0]
    return (U * torch.logspace(0, -6, m, dtype=torch.float64)) @ V.T


def test_in_place_projection_of_a_column_block_equals_the_paper_form():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(12, 24, generator=g, dtype=torch.float64)
    b = protected_basis(X, ridge=1e-3)
    d = torch.randn(10, 48, generator=g, dtype=torch.float64)
    expect = d.clone()
    expect[:, 24:] = d[:, 24:] @ (torch.eye(24, dtype=torch.float64)  # per-direction ridge 1e-3 * s_i^2
                                  - X.T @ torch.linalg.solve((1 + 1e-3) * X @ X.T, X))
    out = project_delta_(d[:, 24:], b)
    assert out.data_ptr() == d[:, 24:].data_ptr()  # the view was written, no copy
    assert torch.allclose(d, expect, atol=1e-10)
    assert torch.equal(d[:, :24], expect[:, :24])  # the other block is untouched


def test_stats_of_the_fast_path_match_the_post_hoc_statistics():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 30, generator=g, dtype=torch.float64)
    b = protected_basis(X, max_rank_fraction=0.5)  # capped: residual well above 0
    dW = torch.randn(600, 30, generator=g, dtype=torch.float64)  # > RESIDUAL_ROWS: the residual is sampled
    ref = projection_stats(dW, project_delta(dW, b), b)
    d = dW.clone()
    st = project_with_stats_(d, b)
    assert torch.allclose(d, project_delta(dW, b), atol=1e-12)
    assert abs(st["kept_norm"] - ref["kept_norm"]) < 1e-12
    assert ref["residual"] > 0.1 and abs(st["residual"] - ref["residual"]) < 0.1 * ref["residual"]
    # every row measured when there are few
    d = dW[:200].clone()
    st = project_with_stats_(d, b)
    assert abs(st["residual"] - projection_stats(dW[:200], d, b)["residual"]) < 1e-12


def test_float32_bases_keep_the_identity_on_ill_conditioned_features():
    X = _ill_conditioned(24, 64, seed=2)
    tau = torch.randn(32, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    b32 = protected_basis(X, dtype="float32")
    assert b32.V.dtype == torch.float32 and b32.rule == "exact"
    P = project_delta(tau, b32).double()
    assert float(torch.linalg.norm(P @ X.T) / torch.linalg.norm(tau @ X.T)) < 1e-4


def _rain(bases, tol):
    from rainmerge.arch import arch_from_config

    arch = arch_from_config({"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4,
                             "num_key_value_heads": 2, "num_hidden_layers": 1, "intermediate_size": 32,
                             "vocab_size": 10})
    return Rain(arch, {0: bases}, uniform_coefficients([0], arch), 1.0, exact_tol=tol), arch


def test_float32_module_missing_the_tolerance_is_redone_in_float64():
    X = _ill_conditioned(24, 64, seed=4)
    g = torch.Generator().manual_seed(5)
    base, inst, lrm = (torch.randn(64, 64, generator=g, dtype=torch.float64).to(torch.bfloat16) for _ in range(3))
    tau = inst.double() - base.double()
    site = Site(0, "q", "layers.0.q")
    # without the ridge, float32 arithmetic leaves ~1.6e-7 here and float64 over the same float32-stored
    # directions ~3e-8: a tolerance of 1e-7 separates them (the shipped 1e-4 is far above both)
    rain, _ = _rain({"attn_in": protected_basis(X, dtype="float32", ridge=0.0)}, tol=1e-7)
    lrm = lrm.double()  # a float64 checkpoint: the cast adds nothing, so the solver's accuracy is what is written
    out = rain.merge(site, lrm, base, inst)
    st = rain.stats()[site.name]
    assert rain.fallbacks == 1 and st["solve_dtype"] == "float64 (redo)" and out.dtype == torch.float64
    assert st["residual"] <= 1e-7 and st["residual_float32"] > 1e-7 and st["redo"].startswith("float32 arithmetic")
    assert st["cast_rounding"] == "none" and st["cast_residual"] < 1e-7
    assert float(torch.linalg.norm((out - lrm.double()) @ X.T) / torch.linalg.norm(tau @ X.T)) < 1e-7
    assert "1 float32 modules redone in float64" in rain.summary()
    # at the shipped tolerance float32 stands
    rain, _ = _rain({"attn_in": protected_basis(X, dtype="float32", ridge=0.0)}, tol=1e-4)
    out = rain.merge(site, lrm, base, inst)
    assert rain.fallbacks == 0 and rain.stats()[site.name]["solve_dtype"] == "float32" and out.dtype == torch.float64
    assert float(torch.linalg.norm((out.double() - lrm.double()) @ X.T) / torch.linalg.norm(tau @ X.T)) < 1e-4


def test_complement_form_equals_the_paper_form_with_ridge_kept_where_it_matters():
    """A layer whose protected rows fill its width: Eq. 5 runs as (d W) W^T plus the removed directions
    whose ridge share is not negligible; it must still be the paper's operator."""
    g = torch.Generator().manual_seed(7)
    U = torch.linalg.qr(torch.randn(60, 24, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(24, 24, generator=g, dtype=torch.float64))[0]
    s = torch.cat([torch.linspace(1.0, 0.5, 20, dtype=torch.float64), torch.full((4,), 1e-3, dtype=torch.float64)])
    X = (U * s) @ V.T
    ridge = 1e-8
    # an absolute ridge (bases made before the per-direction ridge carry one): weak directions keep a share
    lam = ridge * float((X**2).sum()) / 60
    b = dataclasses.replace(protected_basis(X, ridge=0.0, max_rank_fraction=1.0), lam=lam)
    W, Ve, we = b.complement()
    assert W.shape == (24, 0) and Ve.shape == (24, 4)  # nothing kept but the four weak directions' ridge share
    dW = torch.randn(600, 24, generator=g, dtype=torch.float64)
    paper = dW @ (torch.eye(24, dtype=torch.float64)
                  - torch.linalg.solve(X.T @ X + lam * torch.eye(24, dtype=torch.float64), X.T @ X))
    # ridge shares below RIDGE_KEEP (1e-6) are dropped by design; the four weak directions keep ~2e-3
    tol = 1e-6 * float(dW.abs().max())
    assert torch.allclose(project_delta(dW, b), paper, atol=tol)
    assert not torch.allclose(dW @ W @ W.T, paper, atol=100 * tol)  # without them it would be off
    d = dW.clone()
    st = project_with_stats_(d, b)
    ref = projection_stats(dW, paper, b)
    assert torch.allclose(d, paper, atol=tol) and abs(st["kept_norm"] / ref["kept_norm"] - 1) < 1e-3


def test_complement_form_of_a_capped_wide_basis_matches_the_direct_form_in_float32():
    g = torch.Generator().manual_seed(8)
    X = torch.randn(30, 32, generator=g, dtype=torch.float64)  # rank 30 > cap 28: the 28 leading are removed
    b64 = protected_basis(X, max_rank_fraction=0.9)
    b32 = protected_basis(X, max_rank_fraction=0.9, dtype="float32")
    assert b64.k == 28 and b64.rule == "capped" and b64.complement()[0].shape == (32, 4)
    dW = torch.randn(40, 32, generator=g, dtype=torch.float64)
    Vk = b64.V[:, :28]
    direct = dW - (dW @ Vk * b64.shrink()) @ Vk.T  # Eq. 5's low-rank form, written out
    assert torch.allclose(project_delta(dW, b64), direct, atol=1e-12)
    assert torch.allclose(project_delta(dW, b32).double(), direct, atol=1e-5)
    # the o_proj head-block path projects column views in place: the other block is untouched
    d = torch.randn(40, 64, generator=g, dtype=torch.float64)
    left = d[:, :32].clone()
    project_delta_(d[:, 32:], b64)
    assert torch.equal(d[:, :32], left) and torch.allclose(d[:, 32:], project_delta(d[:, 32:].clone(), b64), atol=0)


def test_stage1_keeps_the_float64_factor_where_float32_storage_would_miss(monkeypatch):
    """Issue 24 item 4: a float32-stored factor is checked against its own features at Stage 1 (probe deltas,
    float64 arithmetic): storage alone leaves ~1e-7 on ill-conditioned features, so float32 stands and a
    Stage-3 redo in float64 is a float64 solve to that accuracy; where storage would miss (here: a tolerance
    lowered below what float32 can store), the float64 factor is kept and the module runs in float64."""
    import rainmerge.projection as proj

    X = _ill_conditioned(24, 64, seed=4)
    b = protected_basis(X, dtype="float32", ridge=0.0)
    assert b.V.dtype == torch.float32 and 0 < b.float32_residual < 1e-6
    other = protected_basis(torch.randn(8, 64, dtype=torch.float64), dtype="float32")
    monkeypatch.setattr(proj, "STORE_TOL", 1e-9)
    kept = protected_basis(X, dtype="float32", ridge=0.0)
    assert kept.V.dtype == torch.float64 and kept.float32_residual == b.float32_residual
    g = torch.Generator().manual_seed(5)
    base, inst = (torch.randn(64, 64, generator=g, dtype=torch.float64).to(torch.bfloat16) for _ in range(2))
    lrm = torch.randn(64, 64, generator=g, dtype=torch.float64)  # a float64 checkpoint: no cast error
    tau = inst.double() - base.double()
    site = Site(0, "q", "layers.0.q")
    rain, _ = _rain({"attn_in": kept, "mlp_in": other}, tol=1e-7)
    assert rain.solver_dtype == torch.float32  # the kept factor is the exception
    out = rain.merge(site, lrm, base, inst)
    st = rain.stats()[site.name]
    assert st["solve_dtype"] == "float64 (float64 factor kept)" and rain.fallbacks == 0 and "redo" not in st
    assert st["float32_storage_residual"] == b.float32_residual
    assert float(torch.linalg.norm((out - lrm) @ X.T) / torch.linalg.norm(tau @ X.T)) < 1e-9
