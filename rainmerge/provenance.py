"""The provenance record written beside every merged model: inputs, calibration, config, versions."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from .config import MergeConfig
    from .context import MergeContext


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "safetensors", "huggingface_hub", "peft", "pydantic"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                           text=True, timeout=5)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(c: MergeConfig, ctx: MergeContext, inputs: dict[str, Any], calibration: dict[str, Any],
               timings: dict[str, float]) -> dict[str, Any]:
    """`inputs` are the models' descriptions (taken once per run, with their weight digests)."""
    return {
        "tool": "rainmerge", "rainmerge_version": __version__, "git_commit": git_commit(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "method": c.method, "config": c.model_dump(mode="json"), "inputs": inputs,
        "calibration": calibration, "arch": ctx.arch.dims() | {"model_type": ctx.arch.model_type},
        "layers": list(ctx.layers), "modules": list(c.modules), "device": ctx.device,
        "forward_dtype": str(ctx.forward_dtype), "libraries": library_versions(),
        "warnings": list(ctx.warnings), "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
