"""Closed-form alpha (paper Eq. 15) against a brute-force box QP."""

import torch

from rainmerge.coefficients import closed_form_alpha, paper_gradient_curvature, two_pass_gradient_curvature


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


def test_promotion_gates():
    from rainmerge.product.config import PromotionGates
    from rainmerge.product.registry import decide

    lrm = {"if_inst_strict": 0.1, "think_well_formed": 1.0, "reasoning_acc": 0.9}
    good = {"if_inst_strict": 0.4, "think_well_formed": 0.995, "reasoning_acc": 0.89}
    g = PromotionGates()
    assert decide(good, lrm, None, g).promote
    assert not decide(good | {"think_well_formed": 0.9}, lrm, None, g).promote
    assert not decide(good | {"reasoning_acc": 0.8}, lrm, None, g).promote
    d = decide(good, lrm, {"if_inst_strict": 0.5}, g)
    assert not d.promote and any(r.startswith("FAIL if_inst_strict 0.4000 >= champion") for r in d.reasons)
    assert decide(good, lrm, {"if_inst_strict": 0.5}, PromotionGates(require_beats_champion=False)).promote
