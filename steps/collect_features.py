from typing import Annotated

from zenml import step

from rainmerge import stage_steps
from rainmerge.artifacts import DirRef

from ._common import payload_dir


@step
def collect_features(view: dict, calibration: DirRef, tracking_uri: str, code: str) -> Annotated[DirRef, "features"]:
    """Stage 1: one LRM forward per reasoning sample; inputs of every merged linear at Omega_think."""
    return stage_steps.collect_features(view, calibration, payload_dir("features"), tracking_uri)
