from typing import Annotated

from zenml import step

from rainmerge import stage_steps
from rainmerge.artifacts import DirRef

from ._common import payload_dir


@step
def build_calibration_sets(view: dict, fingerprint: dict, models: dict, tracking_uri: str,
                           code: str) -> Annotated[DirRef, "calibration"]:
    """Verify (sha256), render with the LRM template, locate think tags and spans; log as MLflow datasets."""
    return stage_steps.build_calibration_sets(view, payload_dir("calibration"), tracking_uri)
