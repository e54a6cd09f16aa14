"""Plots people would rather look at than read: alpha heat-map and projection statistics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def alpha_heatmap(alpha: list[list[float]], layers: list[int], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(alpha[0]) + 2), max(3, 0.3 * len(layers) + 1.5)))
    im = ax.imshow(alpha, aspect="auto", cmap="viridis")
    ax.set_xlabel("query head")
    ax.set_ylabel("layer")
    ax.set_yticks(range(len(layers)), [str(l) for l in layers])
    ax.set_title("RAIN Stage 2: alpha per (layer, head)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def projection_plot(stats: dict[str, dict[str, Any]], path: Path) -> Path:
    """Kept norm and constraint residual per (layer, module)."""
    plt = _plt()
    rows: dict[str, list[tuple[int, float, float]]] = {}
    for name, s in stats.items():
        m = re.search(r"layers\.(\d+)\.\w+\.(\w+)_proj", name)
        if m and "kept_norm" in s:
            rows.setdefault(m.group(2), []).append((int(m.group(1)), s["kept_norm"], max(s["residual"], 1e-16)))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for mod, pts in sorted(rows.items()):
        pts.sort()
        a1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mod)
        a2.semilogy([p[0] for p in pts], [p[2] for p in pts], marker="o", label=mod)
    a1.set(title="kept norm ||dW_perp|| / ||dW||", xlabel="layer", ylim=(0, 1.05))
    a2.set(title="residual ||dW_perp X^T|| / ||dW X^T||", xlabel="layer")
    a1.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
