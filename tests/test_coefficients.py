"""Closed-form alpha (paper Eq. 15) against a brute-force box QP."""

import torch

import math

import pytest

from rainmerge.coefficients import (DegenerateStage2, closed_form_alpha, masked_mean, paper_gradient_curvature,
                                    solve_alpha, solve_stage2, two_pass_gradient_curvature)


def test_closed_form_is_the_box_qp_minimiser():
    g = torch.tensor([0.3, -0.2, 2.5, 0.9])
    H = torch.tensor([1.2, 1.0, 1.1, 3.0])
    alpha, _ = closed_form_alpha(g, H, 0.0, 1.5, normalize="none")
    grid = torch.linspace(0.0, 1.5, 15001)
    for i in range(4):  # maximise g a - H a^2 / 2 on the box
        best = grid[torch.argmax(g[i] * grid - 0.5 * H[i] * grid**2)]
        assert abs(float(alpha[i] - best)) < 2e-4


def test_mean_normalisation_and_estimators():
    a1 = torch.tensor([[[0.2, 0.1]], [[0.4, 0.1]]])  # [S, L, H]
    u1 = torch.tensor([[[0.0, 0.1]], [[0.0, 0.1]]])
    g, H = paper_gradient_curvature(a1, u1, rho=0.5)
    assert torch.allclose(g, torch.tensor([[0.3, 0.05]])) and torch.allclose(H, torch.tensor([[1.0, 1.1]]))
    alpha, ratio = closed_form_alpha(g, H, 0.0, 5.0, "mean")
    assert torch.isclose(ratio.mean(), torch.tensor(1.0))
    assert alpha[0, 0] > 1 > alpha[0, 1]
    g2, _ = two_pass_gradient_curvature(a1 * 0, u1 * 0, a1, u1, 0.5, 1.0, 1.0)
    assert torch.allclose(g2, g)


def test_paper_normalisation_is_literal_and_none_is_its_alias():
    from rainmerge.config import CoefficientConfig

    g, H = torch.tensor([0.02, 0.01, 0.04]), torch.tensor([1.0, 1.0, 2.0])
    alpha, ratio = closed_form_alpha(g, H, 0.0, 1.5, normalize="paper")
    assert torch.equal(ratio, g / H) and torch.equal(alpha, (g / H).clamp(0.0, 1.5))
    assert torch.equal(closed_form_alpha(g, H, 0.0, 1.5, normalize="none")[0], alpha)
    assert CoefficientConfig(normalize="none").normalize == "paper"
    assert CoefficientConfig().normalize == "mean" and CoefficientConfig().on_degenerate == "uniform"


def test_layer_mean_normalisation_keeps_every_layer_at_mean_one():
    # layer 0 gains 10x more than layer 1: 'mean' pins layer 0 at the clip and shrinks layer 1,
    # 'layer_mean' keeps each layer's profile around 1
    g = torch.tensor([[2.0, 3.0], [0.1, 0.2]])
    H = torch.ones(2, 2)
    a_all, _ = closed_form_alpha(g, H, 0.0, 1.5, "mean")
    assert torch.equal(a_all[0], torch.tensor([1.5, 1.5])) and float(a_all[1].max()) < 0.2
    a_layer, ratio = closed_form_alpha(g, H, 0.0, 1.5, "layer_mean")
    assert torch.allclose(ratio.mean(dim=1), torch.ones(2))
    assert torch.allclose(a_layer, torch.tensor([[0.8, 1.2], [2 / 3, 4 / 3]]))
    # a layer without a positive mean gain cannot be normalised on its own: degenerate, not a sign flip
    g_bad = torch.tensor([[1.0, 3.0], [-0.2, 0.1]])
    with pytest.raises(DegenerateStage2, match="layer_mean"):
        closed_form_alpha(g_bad, H, 0.0, 1.5, "layer_mean")
    assert closed_form_alpha(g_bad, H, 0.0, 1.5, "mean")[0].shape == (2, 2)  # the global mean is positive


@pytest.mark.parametrize("g", [torch.tensor([[-0.1, 0.05]]), torch.tensor([[float("nan"), float("nan")]]),
                               torch.zeros(1, 2)])
def test_degenerate_stage2_falls_back_to_uniform_alpha_with_a_warning(g):
    H = torch.ones(1, 2)
    alpha, ratio, warns = solve_alpha(g, H, 0.0, 1.5, "mean", on_degenerate="uniform")
    assert torch.equal(alpha, torch.ones(1, 2)) and torch.isnan(ratio).all()
    assert len(warns) == 1 and "degenerate" in warns[0] and "uniform alpha = 1" in warns[0]
    with pytest.raises(DegenerateStage2, match="stage 2 is degenerate.*on_degenerate: fail"):
        solve_alpha(g, H, 0.0, 1.5, "mean", on_degenerate="fail")
    assert solve_alpha(torch.tensor([[float("nan"), 0.2]]), H, 0.0, 1.5)[2]  # one non-finite head is enough
    if torch.isnan(g).any():  # the bare closed form refuses a non-finite gain in any mode (a ValueError subclass)
        with pytest.raises(DegenerateStage2):
            closed_form_alpha(g, H, 0.0, 1.5, "paper")
    else:  # paper is Eq. 15 literally: no sign condition, non-positive gains clip to lo
        assert torch.equal(closed_form_alpha(g, H, 0.0, 1.5, "paper")[0], (g / H).clamp(0.0, 1.5))
    # the pure end-to-end function records it
    a1 = torch.stack([g, g])  # [S=2, L=1, H=2]; NaN there means "no related span in any sample"
    sol = solve_stage2(a1, torch.zeros_like(a1), rho=0.5)
    assert sol.degenerate and torch.equal(sol.alpha, torch.ones(1, 2))
    assert len(sol.warnings) == 1 and "uniform alpha = 1" in sol.warnings[0]
    assert sol.detail([3])["alpha"] == [[1.0, 1.0]] and sol.detail([3])["ratio"] == [[None, None]]


def test_layer_mean_fallback_acts_only_on_the_layer_with_a_negative_mean_gain():
    # layer 1's own mean gain is negative: only it falls back to alpha = 1; layers 0 and 2 keep exactly the
    # profile they get alone (each layer is normalised by its own mean)
    g = torch.tensor([[2.0, 3.0, 1.0], [-0.3, 0.1, 0.05], [0.1, 0.4, 0.1]])
    H = torch.tensor([[1.0, 1.5, 1.0], [1.0, 1.0, 1.0], [2.0, 1.0, 1.0]])
    alpha, ratio, warns = solve_alpha(g, H, 0.0, 1.5, "layer_mean")
    assert torch.equal(alpha[1], torch.ones(3)) and torch.isnan(ratio[1]).all()
    for i in (0, 2):
        alone, _ = closed_form_alpha(g[i:i + 1], H[i:i + 1], 0.0, 1.5, "layer_mean")
        assert torch.allclose(alpha[i], alone[0]) and float(alpha[i].max() - alpha[i].min()) > 0.3
    assert len(warns) == 1 and "1 of 3 layers" in warns[0] and "[1]" in warns[0] and "uniform alpha = 1" in warns[0]
    sol = solve_stage2(torch.stack([g, g]), torch.zeros(2, 3, 3), rho=0.5, normalize="layer_mean")
    assert sol.degenerate and sol.detail([4, 5, 6])["ratio"][1] == [None, None, None]
    with pytest.raises(DegenerateStage2, match=r"layer positions \[1\].*on_degenerate: fail"):
        solve_alpha(g, H, 0.0, 1.5, "layer_mean", on_degenerate="fail")
    # mean: the same layer is not degenerate (global mean positive); a NaN layer is, alone, and the mean
    # is then taken over the finite layers only
    assert not solve_alpha(g, H, 0.0, 1.5, "mean")[2]
    g_nan = g.clone()
    g_nan[1, 0] = float("nan")
    a_nan, _, w_nan = solve_alpha(g_nan, H, 0.0, 5.0, "mean")
    finite = (g / H)[[0, 2]]
    assert torch.equal(a_nan[1], torch.ones(3)) and torch.allclose(a_nan[[0, 2]], (finite / finite.mean()).clamp(0, 5))
    assert "non-finite" in w_nan[0] and "1 of 3 layers" in w_nan[0]


def test_paper_is_eq15_literally_when_the_mean_gain_is_not_positive():
    g, H = torch.tensor([[-0.2, 0.05], [-0.1, -0.3]]), torch.tensor([[1.0, 2.0], [1.0, 1.0]])
    alpha, ratio, warns = solve_alpha(g, H, 0.0, 1.5, "paper")
    assert torch.equal(alpha, torch.tensor([[0.0, 0.025], [0.0, 0.0]])) and torch.equal(ratio, g / H)
    assert warns == []  # one head is above lo: no warning, no fallback
    alpha, _, warns = solve_alpha(-g.abs(), H, 0.1, 1.5, "paper")  # every gain <= 0: every alpha at lo
    assert torch.equal(alpha, torch.full((2, 2), 0.1)) and len(warns) == 1
    assert "every head's alpha clips to lo = 0.1" in warns[0] and "uniform" not in warns[0]
    sol = solve_stage2(torch.stack([-g.abs()] * 2), torch.zeros(2, 2, 2), rho=0.5, lo=0.0, normalize="paper")
    assert not sol.degenerate and torch.equal(sol.alpha, torch.zeros(2, 2)) and len(sol.warnings) == 1


def test_masked_averages_leave_out_samples_without_a_span_and_count_the_rest():
    nan = float("nan")
    # 4 samples, 1 layer, 2 heads; sample 2 has no related span, samples 0 and 3 no unrelated span
    a1 = torch.tensor([[[0.4, 0.2]], [[0.2, 0.2]], [[nan, nan]], [[0.3, 0.5]]])
    u1 = torch.tensor([[[nan, nan]], [[0.1, 0.3]], [[0.3, 0.1]], [[nan, nan]]])
    assert torch.allclose(masked_mean(a1), torch.tensor([[0.3, 0.3]]))
    assert torch.allclose(masked_mean(u1), torch.tensor([[0.2, 0.2]]))
    g, H = paper_gradient_curvature(a1, u1, rho=0.5)
    assert torch.allclose(g, torch.tensor([[0.2, 0.2]])) and torch.allclose(H, torch.tensor([[1.2, 1.2]]))
    sol = solve_stage2(a1, u1, rho=0.5, normalize="paper")
    assert (sol.n_samples, sol.n_a, sol.n_u) == (4, 3, 2)
    assert torch.allclose(sol.alpha, torch.tensor([[0.2 / 1.2, 0.2 / 1.2]]))
    d = sol.detail([1])
    assert d["n_a"] == 3 and d["n_u"] == 2 and not d["degenerate"] and math.isclose(d["a_probe_mean"][0][0], 0.3,
                                                                                       rel_tol=1e-6)
    # two_pass: differences are masked the same way; no leakage span anywhere -> E[u] = 0, not NaN
    a0 = a1 * 0.5
    none = torch.full_like(u1, nan)
    sol2 = solve_stage2(a1, none, a0=a0, u0=none, estimator="two_pass", rho=0.5, h_lambda=1.0, h_mu=1.0,
                        normalize="paper")
    assert sol2.n_u == 0 and torch.allclose(sol2.g, torch.tensor([[0.15, 0.15]]))
    assert torch.allclose(sol2.H, torch.ones(1, 2))
