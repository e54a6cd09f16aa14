"""Helpers shared by the steps: where a step writes its payload."""

from __future__ import annotations

from pathlib import Path

from zenml import get_step_context


def payload_dir(output: str) -> Path:
    """A folder next to this step's output artifact; large data lives here and travels by reference."""
    from rainmerge.product.artifacts import payload_folder

    return payload_folder(get_step_context().get_output_artifact_uri(output))

