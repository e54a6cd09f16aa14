"""Stage 2 math: instruction-attention coefficients (paper Eq. 11, 14, 15) and their module mapping.

Per-sample statistics a[s, l, h], u[s, l, h] (attention.alignment_leakage) are NaN where sample s has
no located span for that statistic (no related span for a, no unrelated span for u); every average
over samples below is a masked mean over the samples that have the span (n_a, n_u of them), never a
zero-filled mean. A statistic no sample has averages to 0 (so H = 1 + E[u] = 1 without leakage spans).

Normalisation of alpha (stage2.normalize):
* ``paper``: alpha = clip(g / H, lo, hi), literally Eq. 15 (``none`` is accepted as an alias);
* ``mean`` (default, ours): alpha = clip((g / H) / mean_heads(g / H), lo, hi). Raw attention averages
  are O(1/T), so the literal ratio clips nearly every head to ``lo``; dividing by the mean keeps the
  per-head profile and leaves the overall strength to the global lambda;
* ``layer_mean`` (ours): the same, with the mean taken over each layer's heads, so alpha redistributes
  within a layer and no layer as a whole is scaled up or down (on the toy, ``mean`` pinned every layer-0
  head at ``hi`` and most of layer 2 near 0; docs/toy-v2.md).

A degenerate Stage 2 never throws finished Stage-1 work away by default. Degenerate means, per layer
(coefficients.degenerate_layers): a non-finite g/H in that layer (every mode); for ``layer_mean`` a layer
whose own mean gain is not positive; for ``mean`` every layer when the mean over the finite layers is not
positive. ``paper`` has no sign condition (Eq. 15 literally: non-positive gains clip to lo; a warning
when every head does). ``on_degenerate: uniform`` gives the degenerate layers alpha = 1 (the paper's
"Stage 1 only" ablation, there only) with one recorded warning; ``fail`` raises DegenerateStage2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .arch import ArchSpec


class DegenerateStage2(ValueError):
    """Stage 2 produced no usable instruction-attention signal (non-finite or non-positive mean gain)."""


def masked_mean(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Mean over `dim` ignoring NaN entries (samples without the span); 0 where no entry is present."""
    present = ~torch.isnan(x)
    n = present.sum(dim)
    total = torch.where(present, x, torch.zeros_like(x)).sum(dim)
    return torch.where(n > 0, total / n.clamp(min=1), torch.zeros_like(total))


def sample_count(x: torch.Tensor) -> int:
    """Samples whose statistic is present (not NaN). A sample's statistic is all-or-nothing over (l, h)."""
    if x.numel() == 0:
        return 0
    return int((~torch.isnan(x.reshape(x.shape[0], -1))).any(1).sum())


def proxy_objective(a: torch.Tensor, u: torch.Tensor, rho: float) -> torch.Tensor:
    """Paper Eq. 11: J_proxy = a_bar - rho * u_bar (per head, masked means over samples)."""
    return masked_mean(a) - rho * masked_mean(u)


def paper_gradient_curvature(a1: torch.Tensor, u1: torch.Tensor, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper Eq. 14: g = E[a - rho u] at the direct-merge point alpha=1; H = 1 + E[u]."""
    return proxy_objective(a1, u1, rho), 1.0 + masked_mean(u1)


def two_pass_gradient_curvature(
    a0: torch.Tensor, u0: torch.Tensor, a1: torch.Tensor, u1: torch.Tensor,
    rho: float, h_lambda: float, h_mu: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's finite-difference variant: g = E[da - rho du], H = lambda_H + mu_H E[u1]."""
    g = masked_mean(a1 - a0) - rho * masked_mean(u1 - u0)
    return g, h_lambda + h_mu * masked_mean(u1) + 1e-12


_NORMALIZE = {"paper": "paper", "none": "paper", "mean": "mean", "layer_mean": "layer_mean"}


def degenerate_layers(g: torch.Tensor, H: torch.Tensor, normalize: str = "mean") -> dict[int, str]:
    """Layers (row positions of g [L, heads]; a 1-D g is one layer) where g / H cannot give coefficients,
    with the reason. Every mode: a layer with a non-finite g/H. `layer_mean`: a layer whose own mean gain is
    not positive. `mean`: every layer when the mean over the finite layers is not positive. `paper` (Eq. 15
    literally) has no sign condition: a non-positive gain clips to lo, as the equation says."""
    mode = _NORMALIZE[normalize]
    ratio = (g / H).reshape(-1, g.shape[-1]) if g.dim() else (g / H).reshape(1, 1)
    out: dict[int, str] = {}
    for i, row in enumerate(ratio):
        bad = int((~torch.isfinite(row)).sum())
        if bad:
            out[i] = f"{bad} of {row.numel()} heads have a non-finite g/H"
        elif mode == "layer_mean" and not float(row.mean()) > 0:
            out[i] = f"its mean gain g/H is {float(row.mean()):.3g} (not positive; layer_mean needs one per layer)"
    if mode == "mean":
        good = [i for i in range(len(ratio)) if i not in out]
        mean = float(ratio[good].mean()) if good else float("nan")
        if good and not mean > 0:
            reason = (f"mean instruction-attention gain g/H is {mean:.3g} (not positive): the calibration set "
                      "shows no response->instruction attention gain; check the spans")
            out.update({i: reason for i in good})
    return out


def degenerate_reason(g: torch.Tensor, H: torch.Tensor, per_layer: bool = False) -> str | None:
    """Why g / H cannot give coefficients (normalize mean, or layer_mean when `per_layer`), or None."""
    bad = degenerate_layers(g, H, "layer_mean" if per_layer else "mean")
    if not bad:
        return None
    return "; ".join(f"layer position {i}: {r}" for i, r in bad.items()) if g.dim() == 2 else next(iter(bad.values()))


def _normalised(ratio: torch.Tensor, normalize: str, good: torch.Tensor) -> torch.Tensor:
    """ratio / its mean (over the good layers, or per layer); literal for paper."""
    mode = _NORMALIZE[normalize]
    if mode == "mean":  # good: a mask over the layers (rows), or over every entry
        return ratio / ratio[good].mean()
    if mode == "layer_mean":
        return ratio / ratio.mean(dim=-1, keepdim=True)
    return ratio


def closed_form_alpha(g: torch.Tensor, H: torch.Tensor, lo: float, hi: float, normalize: str = "mean"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper Eq. 15: alpha* = clip(g / H, lo, hi). Returns (alpha, ratio before clipping).

    normalize: 'paper' (alias 'none') literal, whatever the sign of the gains; 'mean' divides the ratio by
    its mean over all heads first, 'layer_mean' by the mean over each layer's heads.
    Raises DegenerateStage2 (a ValueError) when any layer is degenerate (degenerate_layers); solve_alpha
    has the per-layer fallback.
    """
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {sorted(_NORMALIZE)}, got {normalize!r}")
    bad = degenerate_layers(g, H, normalize)
    if bad:
        raise DegenerateStage2("; ".join(dict.fromkeys(bad.values())))
    ratio = g / H
    ratio = _normalised(ratio, normalize, torch.isfinite(ratio))
    return ratio.clamp(lo, hi), ratio


def solve_alpha(g: torch.Tensor, H: torch.Tensor, lo: float, hi: float, normalize: str = "mean",
                on_degenerate: str = "uniform") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """closed_form_alpha with the degenerate fallback, per layer: (alpha, ratio, warnings).

    on_degenerate='uniform': alpha = 1 for every head of each degenerate layer (all layers when Stage 2 as a
    whole is degenerate), ratio = NaN there, one warning naming them; the other layers keep their profile
    ('mean' normalises over them). on_degenerate='fail': raise DegenerateStage2 with the reason.
    normalize='paper' also warns (no fallback) when every alpha clips to lo: Eq. 15 then adds lo * P(tau).
    """
    if on_degenerate not in ("uniform", "fail"):
        raise ValueError(f"on_degenerate must be 'uniform' or 'fail', got {on_degenerate!r}")
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize must be one of {sorted(_NORMALIZE)}, got {normalize!r}")
    g2, H2 = (g, H) if g.dim() == 2 else (g.reshape(1, -1), H.reshape(1, -1))
    bad = degenerate_layers(g2, H2, normalize)
    warns: list[str] = []
    if bad:
        why = "; ".join(r if len(g2) == 1 else f"layer positions {[i for i in bad if bad[i] == r]}: {r}"
                        for r in dict.fromkeys(bad.values()))
        if on_degenerate == "fail":
            raise DegenerateStage2(f"stage 2 is degenerate: {why} (stage2.on_degenerate: fail)")
        if len(bad) == len(g2):
            warns.append(f"stage 2 is degenerate ({why}); using uniform alpha = 1 for every head "
                         "(Stage-1-only merge; set stage2.on_degenerate: fail to stop instead)")
        else:
            warns.append(f"stage 2 is degenerate in {len(bad)} of {len(g2)} layers ({why}); those layers use "
                         "uniform alpha = 1 (Stage-1-only there), the others keep their profile; set "
                         "stage2.on_degenerate: fail to stop instead")
    good = torch.tensor([i not in bad for i in range(len(g2))])
    ratio = torch.full_like(g2, float("nan"))
    alpha = torch.ones_like(g2, dtype=torch.float32)
    if good.any():
        r = _normalised(g2 / H2, normalize, good)
        ratio[good] = r[good]
        alpha[good] = r[good].clamp(lo, hi).to(alpha.dtype)
        if _NORMALIZE[normalize] == "paper" and bool((alpha[good] <= lo).all()):
            warns.append(f"normalize: paper (Eq. 15 literally): every head's alpha clips to lo = {lo:g} (largest g/H "
                         f"{float(r[good].max()):.3g}), so the merge adds lo * P(tau) only; raw attention averages "
                         "are O(1/T): stage2.normalize: mean keeps the per-head profile")
    return alpha.reshape(g.shape), ratio.reshape(g.shape), warns


@dataclass
class Stage2Solution:
    """Everything the orchestrator records for Stage 2 (alpha per layer x head, the estimator terms,
    the sample counts behind each masked average, and any warning)."""

    alpha: torch.Tensor  # [L, H]
    ratio: torch.Tensor  # [L, H] g/H (normalised unless normalize=paper); NaN in degenerate layers
    g: torch.Tensor
    H: torch.Tensor
    n_samples: int
    n_a: int  # samples with a located related span (used in the a averages)
    n_u: int  # samples with a located unrelated span (used in the u averages)
    estimator: str
    normalize: str
    degenerate: bool = False
    warnings: list[str] = field(default_factory=list)
    a_mean: torch.Tensor | None = None  # masked mean of a at the probe point
    u_mean: torch.Tensor | None = None

    def detail(self, layers: list[int]) -> dict[str, Any]:
        """JSON-ready record (NaN -> None)."""
        def j(t: torch.Tensor | None) -> Any:
            if t is None:
                return None
            return [[None if v != v else v for v in row] for row in t.tolist()]
        return {"layers": list(layers), "alpha": j(self.alpha), "g": j(self.g), "H": j(self.H),
                "ratio": j(self.ratio), "a_probe_mean": j(self.a_mean), "u_probe_mean": j(self.u_mean),
                "estimator": self.estimator, "normalize": self.normalize, "samples": self.n_samples,
                "n_a": self.n_a, "n_u": self.n_u, "degenerate": self.degenerate, "warnings": list(self.warnings)}


def solve_stage2(a1: torch.Tensor, u1: torch.Tensor, *, a0: torch.Tensor | None = None,
                 u0: torch.Tensor | None = None, estimator: str = "paper", rho: float = 0.5,
                 h_lambda: float = 1.0, h_mu: float = 1.0, lo: float = 0.0, hi: float = 1.5,
                 normalize: str = "mean", on_degenerate: str = "uniform") -> Stage2Solution:
    """Pure Stage 2 from the per-sample statistics [S, L, H] (NaN = span absent): g, H, alpha, counts.

    estimator 'paper' uses (a1, u1) at the probe point; 'two_pass' also needs (a0, u0) on the LRM.
    Call as solve_stage2(a1, u1, a0=a0, u0=u0, **cfg.stage2.solver_kwargs()).
    """
    if estimator == "two_pass":
        if a0 is None or u0 is None:
            raise ValueError("estimator two_pass needs a0 and u0 (statistics on the unmerged LRM)")
        g, H = two_pass_gradient_curvature(a0, u0, a1, u1, rho, h_lambda, h_mu)
    elif estimator == "paper":
        g, H = paper_gradient_curvature(a1, u1, rho)
    else:
        raise ValueError(f"estimator must be 'paper' or 'two_pass', got {estimator!r}")
    alpha, ratio, warns = solve_alpha(g, H, lo, hi, normalize, on_degenerate)
    return Stage2Solution(alpha=alpha, ratio=ratio, g=g, H=H, n_samples=int(a1.shape[0]),
                          n_a=sample_count(a1), n_u=sample_count(u1), estimator=estimator,
                          normalize=_NORMALIZE.get(normalize, normalize), degenerate=bool(torch.isnan(ratio).any()),
                          warnings=warns, a_mean=masked_mean(a1), u_mean=masked_mean(u1))


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
