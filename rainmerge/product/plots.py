"""Plots people would rather look at than read: alpha heat-map and projection statistics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..method_catalog import needs_stages


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _int_ticks(n: int, most: int = 16) -> list[int]:
    step = max(1, -(-n // most))
    return list(range(0, n, step))


def alpha_heatmap(alpha: list[list[float]], layers: list[int], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.5, 0.35 * len(alpha[0]) + 2), max(3, 0.3 * len(layers) + 1.5)))
    im = ax.imshow(alpha, aspect="auto", cmap="viridis")
    ax.set_xlabel("query head (index)")
    ax.set_ylabel("decoder layer (index)")
    ax.set_yticks(range(len(layers)), [str(int(l)) for l in layers])
    ax.set_xticks(_int_ticks(len(alpha[0])))
    ax.set_title("RAIN Stage 2: head scale alpha per (layer, head)\n"
                 "larger = attends more to the instruction", fontsize=9)
    fig.colorbar(im, ax=ax, label="alpha")
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
    from matplotlib.ticker import MaxNLocator

    a1.set(title="Stage 1: share of task vector kept after projection\n||dW_perp|| / ||dW|| (1 = nothing removed)",
           xlabel="decoder layer (index)", ylabel="kept norm", ylim=(0, 1.05))
    a2.set(title="Stage 1: leak into LRM thinking features\n||dW_perp X^T|| / ||dW X^T|| (0 = fully projected)",
           xlabel="decoder layer (index)", ylabel="residual (log)")
    for a in (a1, a2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.title.set_fontsize(9)
    if rows:
        a1.legend(title="module", fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tradeoff_plot(rows: list[dict[str, Any]], path: Path, selected: float | None = None,
                  lrm: dict[str, Any] | None = None, bars: dict[str, float] | None = None) -> Path:
    """Per strength: IF instruction strict, well-formed think and reasoning, RAIN solid and each
    baseline dashed, so the chosen strength can be seen against what it traded. `lrm`: the LRM's
    metrics (a grey line: where merging starts); `bars`: per metric the value a candidate must reach
    to pass the gates (a red dashed line)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharex=True)
    keys = (("if_inst_strict", "IF instruction strict"), ("think_well_formed", "well-formed think"),
            ("reasoning_acc", "reasoning accuracy"))
    methods = sorted({r["method"] for r in rows}, key=lambda m: (not needs_stages(m), m))
    for ax, (k, label) in zip(axes, keys):
        for m in methods:
            pts = sorted((r["strength"], 100 * (r["metrics"].get(k) or 0.0)) for r in rows if r["method"] == m)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if needs_stages(m) else "s--", label=m)
        if selected is not None:
            ax.axvline(selected, color="grey", lw=1, ls=":")
        if lrm and lrm.get(k) is not None:
            ax.axhline(100 * lrm[k], color="grey", lw=1.5, label="LRM")
        if bars and bars.get(k) is not None:
            ax.axhline(100 * bars[k], color="tab:red", lw=1, ls="--", label="gate")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("strength lambda")
        ax.set_ylim(-2, 102)
    axes[0].set_ylabel("% of held-out prompts")
    axes[0].legend(fontsize=8)
    fig.suptitle("Strength sweep: what each lambda trades" + (f" (dotted: chosen {selected:g})"
                                                               if selected is not None else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def overlap_plot(per: dict[str, dict[str, float]], path: Path, warn_ratio: float) -> Path:
    """Per (layer, module): task-vector subspace overlap over the random baseline (1 = as if random)."""
    import math

    plt = _plt()
    cells: dict[tuple[int, str], float] = {}
    for name, p in per.items():
        m = re.search(r"layers\.(\d+)\.\w+\.(\w+)_proj", name)
        if m:
            cells[(int(m.group(1)), m.group(2))] = p["ratio"]
    layers = sorted({l for l, _ in cells})
    mods = [m for m in ("q", "k", "v", "o", "gate", "up", "down") if any(k[1] == m for k in cells)]
    grid = [[math.log10(max(cells.get((l, m), float("nan")), 1e-3)) for m in mods] for l in layers]
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(mods) + 2), max(3, 0.28 * len(layers) + 1.6)))
    im = ax.imshow(grid, aspect="auto", cmap="coolwarm", vmin=-1, vmax=max(1.0, math.log10(warn_ratio) + 0.5))
    ax.set_xticks(range(len(mods)), mods)
    ax.set_yticks(_int_ticks(len(layers)), [str(layers[i]) for i in _int_ticks(len(layers))])
    ax.set_xlabel("module")
    ax.set_ylabel("decoder layer (index)")
    ax.set_title("Task-vector overlap, tau_ITM vs tau_LRM (log10 of overlap / random baseline)\n"
                 f"0 = as random subspaces; warning above {warn_ratio:g}x", fontsize=9)
    fig.colorbar(im, ax=ax, label="log10 ratio")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
