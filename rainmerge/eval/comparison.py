"""Comparison outputs: JSON, a Markdown table and a grouped bar plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = [("if_prompt_strict", "IF prompt strict"), ("if_inst_strict", "IF inst strict"),
           ("if_prompt_loose", "IF prompt loose"), ("if_inst_loose", "IF inst loose"),
           ("reasoning_acc", "reasoning acc"), ("truncation_rate", "truncated"), ("malformed_rate", "malformed"),
           ("think_well_formed", "think well-formed"),
           ("think_close_missing", "</think> missing"), ("l_think", "L_think")]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| model | " + " | ".join(c[1] for c in COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(COLUMNS)
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _ in COLUMNS:
            v = r.get(key)
            if v is None:
                cells.append("–")
            elif key == "l_think":
                cells.append(f"{v:.4f}")
            else:
                cells.append(f"{100 * v:.1f}")
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """The comparison bar chart; False (no file) when matplotlib, an optional extra, is missing."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k, _ in COLUMNS if k not in ("l_think", "if_prompt_loose", "if_inst_loose", "malformed_rate")]
    labels = [dict(COLUMNS)[k] for k in keys]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        xs = [j + i * width for j in range(len(keys))]
        ax.bar(xs, [100 * (r.get(k) or 0) for k in keys], width, label=r["model"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))], labels, rotation=15)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, ncol=min(len(rows), 5), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    # the title names exactly the models shown (LRM vs merged in the pipeline, every method in `compare`)
    ax.set_title("Held-out evaluation: " + " vs ".join(r["model"] for r in rows))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write(rows: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "comparison.png"}
    # per-prompt units stay with the step outputs and the records; the summary keeps the scores
    slim = [{k: v for k, v in r.items() if k != "paired"} for r in rows]
    paths["json"].write_text(json.dumps(slim, indent=2, sort_keys=True))
    paths["markdown"].write_text(markdown_table(rows) + "\n")
    if not plot(rows, paths["plot"]):
        del paths["plot"]
    return paths
