"""Stage 2 math: instruction-attention coefficients (paper Eq. 11, 14, 15) and their module mapping."""

from __future__ import annotations

import torch

from .arch import ArchSpec


def proxy_objective(a: torch.Tensor, u: torch.Tensor, rho: float) -> torch.Tensor:
    """Paper Eq. 11: J_proxy = a_bar - rho * u_bar (per head, averaged over samples)."""
    return a.mean(0) - rho * u.mean(0)


def paper_gradient_curvature(a1: torch.Tensor, u1: torch.Tensor, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper Eq. 14: g = E[a - rho u] at the direct-merge point alpha=1; H = 1 + E[u]."""
    return proxy_objective(a1, u1, rho), 1.0 + u1.mean(0)


def two_pass_gradient_curvature(
    a0: torch.Tensor, u0: torch.Tensor, a1: torch.Tensor, u1: torch.Tensor,
    rho: float, h_lambda: float, h_mu: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's finite-difference variant: g = E[da - rho du], H = lambda_H + mu_H E[u1]."""
    g = (a1 - a0).mean(0) - rho * (u1 - u0).mean(0)
    return g, h_lambda + h_mu * u1.mean(0) + 1e-12


def closed_form_alpha(g: torch.Tensor, H: torch.Tensor, lo: float, hi: float, normalize: str = "mean"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper Eq. 15: alpha* = clip(g / H, lo, hi). Returns (alpha, unclipped ratio).

    With normalize='mean' the ratio is divided by its mean over all scored heads first, so alpha
    redistributes strength across heads and the global lambda keeps its meaning (raw attention
    averages are O(1/T), which would otherwise clip every alpha to `lo`).
    """
    ratio = g / H
    if normalize == "mean":
        mean = ratio.mean()
        if not torch.isfinite(mean) or mean <= 0:
            raise ValueError(
                f"mean instruction-attention gain is {float(mean):.3g} (not positive): the calibration "
                "set shows no response->instruction attention gain; check the spans or use normalize: none"
            )
        ratio = ratio / mean
    return ratio.clamp(lo, hi), ratio


def module_coefficients(alpha: torch.Tensor, layers: list[int], arch: ArchSpec) -> dict[int, dict[str, torch.Tensor]]:
    """Per-layer coefficients: q/o per query head; k/v = mean over the kv group's query heads
    (so each kv block is applied once); gate/up/down = layer mean over heads."""
    out = {}
    for i, layer in enumerate(layers):
        a = alpha[i].double()
        kv = a.view(arch.num_kv_heads, arch.n_rep).mean(1)
        ffn = a.mean().reshape(1)
        out[layer] = {"q": a, "o": a, "k": kv, "v": kv, "gate": ffn, "up": ffn, "down": ffn}
    return out


def uniform_coefficients(layers: list[int], arch: ArchSpec) -> dict[int, dict[str, torch.Tensor]]:
    return module_coefficients(torch.ones(len(layers), arch.num_heads), layers, arch)
