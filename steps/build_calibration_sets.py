from typing import Annotated

from zenml import step

from rainmerge.config import CalibrationSpec
from rainmerge.product.artifacts import DirRef, LoadedModels
from rainmerge.product.step_bodies import STEPS

from ._common import payload_dir


@step
def build_calibration_sets(models: LoadedModels, spec: CalibrationSpec, tracking_uri: str,
                           code: str) -> Annotated[DirRef, "calibration"]:
    """Verify (sha256), render with the LRM template, locate think tags and spans; log as MLflow datasets."""
    return STEPS["build_calibration_sets"](models, spec, payload_dir("calibration"), tracking_uri)
