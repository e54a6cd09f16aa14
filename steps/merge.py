from typing import Annotated, Optional

from zenml import step

from rainmerge.config import MergeConfig
from rainmerge.product.artifacts import DirRef, LoadedModels
from rainmerge.product.step_bodies import STEPS

from ._common import payload_dir


@step
def merge(models: LoadedModels, config: MergeConfig, calibration: Optional[DirRef], projectors: Optional[DirRef],
          coefficients: Optional[DirRef], tracking_uri: str, code: str) -> Annotated[DirRef, "merged_model"]:
    """Stage 3: stream the trio and write the merged folder atomically (no partial model on failure)."""
    return STEPS["merge"](models, config, calibration, projectors, coefficients, payload_dir("merged_model"),
                          tracking_uri)
