from typing import Annotated

from zenml import step

from rainmerge.config import Runtime
from rainmerge.product.artifacts import DirRef, LoadedModels
from rainmerge.product.step_bodies import STEPS

from ._common import payload_dir


@step
def collect_features(models: LoadedModels, calibration: DirRef, runtime: Runtime, tracking_uri: str,
                     code: str) -> Annotated[DirRef, "features"]:
    """Stage 1: one LRM forward per reasoning sample; inputs of every merged linear at Omega_think."""
    return STEPS["collect_features"](models, calibration, runtime, payload_dir("features"), tracking_uri)
