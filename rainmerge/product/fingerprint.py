"""Cheap identities of the inputs, taken when a pipeline is built, so step caching sees edited files
(the weights themselves are hashed once per run, by load_models), and of the library's own code."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..config import MergeConfig
from ..io.lazy import sha256_file


def fingerprint(cfg: MergeConfig) -> dict[str, str]:
    fp = {}
    for role in ("base", "instruct", "reasoning"):
        ref = getattr(cfg, role)
        p = Path(ref.path).expanduser()
        if p.is_dir():
            parts = [sha256_file(p / "config.json")] if (p / "config.json").is_file() else []
            parts += [f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in sorted(p.glob("*.safetensors"))]
            fp[role] = "|".join(parts)
        else:
            fp[role] = f"{ref.path}@{ref.revision or 'main'}"
    for role in ("reasoning_calibration", "instruction_calibration"):
        ref = getattr(cfg, role)
        if ref is not None:
            p = Path(ref.path).expanduser() if ref.path else None
            fp[role] = sha256_file(p) if p and p.is_file() else (ref.sha256 or "")
    return fp


def code_digest() -> str:
    """Hash of the library source: part of every step's cache key, so a code change reruns the steps."""
    root = Path(__file__).resolve().parents[1]  # the rainmerge package
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
