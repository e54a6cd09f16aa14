"""o_proj is scaled per head, then projected over its full input width (issue #9).

Protected rows (120) exceed head_dim (32) but stay below every input width (192, 256): the identity
(W_merged - W_LRM) x = 0 must hold on every module with per-head alpha spread, o_proj included.
"""

import pytest
import torch

from rainmerge.arch import arch_from_config
from rainmerge.coefficients import module_coefficients
from rainmerge.methods import Site
from rainmerge.methods.rain import Rain
from rainmerge.projection import bases_from_features

ARCH = arch_from_config({"model_type": "qwen2", "hidden_size": 192, "num_attention_heads": 6,
                         "num_key_value_heads": 2, "num_hidden_layers": 1, "intermediate_size": 256,
                         "vocab_size": 10})
GROUP = {"q": "attn_in", "k": "attn_in", "v": "attn_in", "o": "o_in", "gate": "mlp_in", "up": "mlp_in",
         "down": "down_in"}
ALPHA = torch.tensor([[0.2, 0.5, 0.9, 1.1, 1.3, 1.5]])
STRENGTH = 0.8


def _setup(o_proj="full", m=120):
    g = torch.Generator().manual_seed(0)
    feats = {"attn_in": torch.randn(m, 192, generator=g), "o_in": torch.randn(m, 192, generator=g),
             "mlp_in": torch.randn(m, 192, generator=g), "down_in": torch.randn(m, 256, generator=g)}
    bases = {0: bases_from_features(feats, ARCH.num_heads, ARCH.head_dim, o_proj=o_proj)}
    rain = Rain(ARCH, bases, module_coefficients(ALPHA, [0], ARCH), STRENGTH)
    taus = {mod: torch.randn(ARCH.weight_shape(mod), generator=g, dtype=torch.float64) for mod in GROUP}
    return feats, rain, taus


def test_identity_on_every_module_with_spread_alpha():
    feats, rain, taus = _setup()
    assert ALPHA.std() > 0.3
    for mod, tau in taus.items():
        X = feats[GROUP[mod]].double()
        d = rain.delta(Site(0, mod, mod), tau)
        assert torch.linalg.norm(d @ X.T) <= 1e-4 * torch.linalg.norm(tau @ X.T), mod
        assert torch.linalg.norm(d) > 0.2 * torch.linalg.norm(tau), f"{mod}: delta mostly erased"
    st = rain.stats()
    assert all(s["rule"] == "exact" and s["residual"] < 1e-8 for s in st.values()), st
    assert "projection exact (residual <= 1e-04) on 7 " in rain.summary() and rain.warnings == []


def test_o_proj_delta_is_lambda_tau_diag_alpha_times_independent_projector():
    feats, rain, taus = _setup()
    X = feats["o_in"].double()
    P_perp = torch.eye(192, dtype=torch.float64) - torch.linalg.pinv(X) @ X  # I - X^+ X, no basis code
    alpha_cols = ALPHA[0].double().repeat_interleave(ARCH.head_dim)  # alpha of head h on its hd input columns
    want = STRENGTH * (taus["o"] * alpha_cols[None, :]) @ P_perp
    got = rain.delta(Site(0, "o", "o"), taus["o"])
    assert torch.linalg.norm(got - want) <= 1e-8 * torch.linalg.norm(want)
    # projecting first and scaling after would NOT satisfy the identity (alpha acts on input columns)
    wrong = STRENGTH * (taus["o"] @ P_perp) * alpha_cols[None, :]
    assert torch.linalg.norm(wrong @ X.T) > 1e-2 * torch.linalg.norm(taus["o"] @ X.T)


def test_per_head_option_is_kept_and_reports_the_binding_cap():
    feats, rain, taus = _setup(o_proj="per_head")
    assert set(rain.bases[0]) == {"attn_in", "mlp_in", "down_in"} | {f"o_in.{h}" for h in range(6)}
    X = feats["o_in"].double()
    d = rain.delta(Site(0, "o", "o"), taus["o"])
    st = rain.stats()["o"]
    assert st["rule"] in ("energy", "capped") and st["residual"] > 1e-3
    assert torch.linalg.norm(d @ X.T) > 1e-3 * torch.linalg.norm(taus["o"] @ X.T)
    with pytest.raises(ValueError, match="o_proj"):
        bases_from_features(feats, 6, 32, o_proj="blocks")
