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
    # per-direction ridge lambda_i = ridge * s_i^2: Eq. 4 with (X X^T + Lambda)^-1 = ((1 + ridge) X X^T)^-1
    paper = dW @ (torch.eye(40, dtype=torch.float64) - X.T @ torch.linalg.solve((1 + ridge) * X @ X.T, X))
    assert torch.allclose(project_delta(dW, b), paper, atol=1e-10)
    exact = dW @ (torch.eye(40, dtype=torch.float64) - X.T @ torch.linalg.solve(X @ X.T, X))
    assert not torch.allclose(project_delta(dW, b), exact, atol=1e-6)  # the ridge is applied, not dropped


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


def _arch16():
    from rainmerge.arch import arch_from_config

    return arch_from_config({"model_type": "qwen2", "hidden_size": 16, "num_attention_heads": 2,
                             "num_key_value_heads": 1, "num_hidden_layers": 1, "intermediate_size": 8,
                             "vocab_size": 10})


def test_capped_projection_is_one_summary_line_not_a_warning_per_module(caplog):
    from rainmerge.coefficients import uniform_coefficients
    from rainmerge.methods import Site
    from rainmerge.methods.rain import Rain

    arch = _arch16()
    X = torch.randn(64, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    b = protected_basis(X, max_rank_fraction=0.5, energy_when_capped=1.0)
    rain = Rain(arch, {0: {"attn_in": b, "mlp_in": b}}, uniform_coefficients([0], arch), 1.0, min_kept_norm=0.9)
    with caplog.at_level("WARNING", logger="rainmerge"):
        for m in ("q", "gate", "up"):
            rain.delta(Site(0, m, f"layers.0.{m}"), torch.randn(arch.weight_shape(m), dtype=torch.float64))
    assert caplog.text == ""  # nothing logged per module; the orchestrator logs the summary once
    assert len(rain.warnings) == 1
    line = rain.warnings[0]
    assert line.startswith("stage 1: 3 modules, projection exact") and "on 0 " in line
    assert "rule: exact 0 / energy 0 / capped 3" in line and "(layer 0 " in line
    st = rain.stats()["layers.0.q"]
    assert st["capped"] is True and st["rule"] == "capped" and st["rows"] == 64 and st["rank_removed"] == 8


def test_rule_exact_below_cap_energy_fallback_then_cap():
    g = torch.Generator().manual_seed(6)
    width = 40
    # 30 rows: rank 30 <= cap 36 -> exact
    b = protected_basis(torch.randn(30, width, generator=g, dtype=torch.float64))
    assert b.rule == "exact" and b.k == 30 and not b.capped and b.rows == 30
    # rank 40 > cap 36, but 99% of the energy lies in 5 strong directions -> energy fallback, k << cap
    strong = torch.randn(200, 5, generator=g, dtype=torch.float64) @ torch.randn(5, width, generator=g,
                                                                                  dtype=torch.float64)
    X = strong + 1e-3 * torch.randn(200, width, generator=g, dtype=torch.float64)
    b = protected_basis(X, energy_when_capped=0.99)
    assert b.rule == "energy" and b.k == 5 and not b.capped
    # isotropic rank 40: the 99% set still exceeds the cap -> capped at 36
    b = protected_basis(torch.randn(200, width, generator=g, dtype=torch.float64), energy_when_capped=0.99)
    assert b.rule == "capped" and b.k == 36 and b.capped


def test_summary_line_counts_rules_and_names_the_weakest_module():
    from rainmerge.projection import projection_summary

    stats = {
        "a": {"residual": 3e-9, "kept_norm": 0.8, "rule": "exact", "layer": 1, "module": "q"},
        "b": {"residual": 2e-2, "kept_norm": 0.42, "rule": "energy", "layer": 3, "module": "o"},
        "c": {"residual": 1e-10, "kept_norm": 0.9, "rule": "exact", "layer": 3, "module": "down"},
    }
    line = projection_summary(stats)
    assert line == ("stage 1: 3 modules, projection exact (residual <= 1e-04) on 2 (max residual 2.0e-02), "
                    "mean kept-norm 0.71, min 0.42 (layer 3 o); rule: exact 2 / energy 1 / capped 0")
    assert "\n" not in line


def test_capacity_reports_rows_against_every_input_width():
    from rainmerge.projection import capacity, positions_per_sample

    arch = _arch16()
    assert positions_per_sample("window", 5) == 12 and positions_per_sample("tags", 3) == 2
    cap = capacity(arch, rows=12, max_rank_fraction=0.9)
    assert cap["attn_in"] == {"width": 16, "cap": 14, "rows": 12, "exact_guaranteed": True, "rows_over_width": 0.75}
    assert cap["down_in"]["width"] == 8 and not cap["down_in"]["exact_guaranteed"]
    assert capacity(arch, 12, o_proj="per_head")["o_in"]["width"] == 8


def test_ridge_is_per_direction_so_a_massive_channel_leaves_no_weak_direction_unprojected():
    """Issue 24 item 3: one input channel 1e4x larger than the rest (massive activations) and a task vector
    weak in that channel. A ridge relative to the total feature energy (the old rule) is set by that channel
    and leaves the weak directions partly in place; the per-direction ridge keeps the identity in float64."""
    import dataclasses

    g = torch.Generator().manual_seed(11)
    X = torch.randn(48, 128, generator=g, dtype=torch.float64)
    X[:, 0] *= 1e4
    tau = torch.randn(64, 128, generator=g, dtype=torch.float64)
    tau[:, 0] *= 1e-4

    def residual(b):
        return float(torch.linalg.norm(project_delta(tau, b) @ X.T) / torch.linalg.norm(tau @ X.T))

    b = protected_basis(X)  # default ridge 1e-10, float64
    assert b.rule == "exact" and residual(b) <= 1e-6
    old = dataclasses.replace(protected_basis(X, ridge=0.0), lam=1e-10 * float((X**2).sum()) / X.shape[0])
    assert residual(old) > 1e-5  # the old rule's lambda, set by the massive channel
