"""Helpers shared by the steps: where a step writes its payload, and the MLflow child run."""

from __future__ import annotations

import hashlib
from pathlib import Path

from zenml import get_step_context

import rainmerge


def payload_dir(output: str) -> Path:
    """A folder next to this step's output artifact; large data lives here and travels by reference."""
    from rainmerge.product.artifacts import payload_folder

    return payload_folder(get_step_context().get_output_artifact_uri(output))


def code_digest() -> str:
    """Hash of the library source: part of every step's cache key, so a code change reruns the steps."""
    h = hashlib.sha256()
    for f in sorted(Path(rainmerge.__file__).parent.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
