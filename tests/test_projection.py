"""Identities of the Stage-1 projector (paper Eq. 4-5)."""

import torch

from rainmerge.projection import project_delta, projection_stats, protected_basis


def test_projected_delta_annihilates_protected_features():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 64, generator=g, dtype=torch.float64)
    dW = torch.randn(32, 64, generator=g, dtype=torch.float64)
    P = project_delta(dW, protected_basis(X))
    assert torch.linalg.norm(P @ X.T) <= 1e-8 * torch.linalg.norm(dW @ X.T)
    # and it is the orthogonal projection: the removed part lies in the row space of X
    removed = dW - P
    coef = torch.linalg.lstsq(X.T, removed.T).solution
    assert torch.allclose(X.T @ coef, removed.T, atol=1e-9)


def test_matches_paper_closed_form_with_ridge():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(10, 40, generator=g, dtype=torch.float64)
    dW = torch.randn(8, 40, generator=g, dtype=torch.float64)
    ridge = 1e-3
    b = protected_basis(X, ridge=ridge)
    lam = ridge * float((X**2).sum()) / X.shape[0]
    paper = dW @ (torch.eye(40, dtype=torch.float64) - X.T @ torch.linalg.solve(X @ X.T + lam * torch.eye(10,
                  dtype=torch.float64), X))
    assert torch.allclose(project_delta(dW, b), paper, atol=1e-10)


def test_rank_cap_keeps_part_of_delta_when_features_fill_the_width():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(200, 16, generator=g, dtype=torch.float64)  # m >> width: exact projector would be 0
    dW = torch.randn(8, 16, generator=g, dtype=torch.float64)
    b = protected_basis(X, max_rank_fraction=0.5)
    P = project_delta(dW, b)
    st = projection_stats(dW, P, b)
    assert b.capped and st["rank_removed"] == 8
    assert 0.3 < st["kept_norm"] < 1.0
    exact = project_delta(dW, protected_basis(X, max_rank_fraction=1.0))
    assert torch.linalg.norm(exact) < 1e-8 * torch.linalg.norm(dW)


def test_energy_threshold_removes_dominant_directions_only():
    g = torch.Generator().manual_seed(3)
    U = torch.linalg.qr(torch.randn(32, 32, generator=g, dtype=torch.float64))[0]
    s = torch.tensor([10.0, 5.0, 1e-3, 1e-3], dtype=torch.float64)
    X = (torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0] * s) @ U[:, :4].T
    b = protected_basis(X, energy=0.999)
    assert b.k == 2 and not b.capped


def test_stats_residual_matches_direct_computation():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(6, 30, generator=g, dtype=torch.float64)
    dW = torch.randn(5, 30, generator=g, dtype=torch.float64)
    b = protected_basis(X, max_rank_fraction=0.1)  # k = 3 of 6: inexact on purpose
    P = project_delta(dW, b)
    st = projection_stats(dW, P, b)
    direct = torch.linalg.norm(P @ X.T) / torch.linalg.norm(dW @ X.T)
    assert abs(st["residual"] - float(direct)) < 1e-10 and st["residual"] > 1e-3


def test_capped_projection_is_reported_not_silent(caplog):
    from rainmerge.arch import arch_from_config
    from rainmerge.coefficients import uniform_coefficients
    from rainmerge.methods import Site
    from rainmerge.methods.rain import Rain

    arch = arch_from_config({"model_type": "qwen2", "hidden_size": 16, "num_attention_heads": 2,
                             "num_key_value_heads": 1, "num_hidden_layers": 1, "intermediate_size": 8,
                             "vocab_size": 10})
    X = torch.randn(64, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    rain = Rain(arch, {0: {"attn_in": protected_basis(X, max_rank_fraction=0.5)}},
                uniform_coefficients([0], arch), 1.0, min_kept_norm=0.9)
    tau = torch.randn(16, 16, dtype=torch.float64)
    with caplog.at_level("WARNING", logger="rainmerge"):
        rain.delta(Site(0, "q", "q"), tau)
    assert rain.warnings and "rank cap bound" in rain.warnings[0] and "rank cap bound" in caplog.text
    assert rain.stats()["q"]["capped"] is True
