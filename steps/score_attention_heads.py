from typing import Annotated

from zenml import step

from rainmerge.config import CoefficientConfig, Runtime
from rainmerge.product.artifacts import DirRef, LoadedModels
from rainmerge.product.step_bodies import STEPS

from ._common import payload_dir


@step
def score_attention_heads(models: LoadedModels, calibration: DirRef, projectors: DirRef, stage2: CoefficientConfig,
                          strength: float, runtime: Runtime, tracking_uri: str,
                          code: str) -> Annotated[DirRef, "coefficients"]:
    """Stage 2: response->instruction attention on the probe merge; alpha per head (paper Eq. 15)."""
    return STEPS["score_attention_heads"](models, calibration, projectors, stage2, strength, runtime,
                                          payload_dir("coefficients"), tracking_uri)
