from typing import Annotated

from zenml import step

from rainmerge import stage_steps
from rainmerge.artifacts import DirRef

from ._common import payload_dir


@step
def score_attention_heads(view: dict, calibration: DirRef, projectors: DirRef, tracking_uri: str,
                          code: str) -> Annotated[DirRef, "coefficients"]:
    """Stage 2: response->instruction attention on the probe merge; alpha = clip(g / H) per head."""
    return stage_steps.score_attention_heads(view, calibration, projectors, payload_dir("coefficients"),
                                             tracking_uri)
