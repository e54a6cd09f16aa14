from typing import Annotated, Optional

from zenml import step

from rainmerge import stage_steps
from rainmerge.artifacts import DirRef

from ._common import payload_dir


@step
def merge(view: dict, calibration: Optional[DirRef], projectors: Optional[DirRef], coefficients: Optional[DirRef],
          tracking_uri: str, code: str) -> Annotated[DirRef, "merged_model"]:
    """Stage 3: stream the trio and write the merged folder atomically (no partial model on failure)."""
    return stage_steps.merge(view, calibration, projectors, coefficients, payload_dir("merged_model"), tracking_uri)
