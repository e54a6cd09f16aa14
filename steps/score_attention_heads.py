from typing import Annotated

import mlflow
from zenml import step

from rainmerge import workflow
from rainmerge.artifacts import DirRef
from rainmerge.tracking import flatten, step_run

from ._common import payload_dir


@step
def score_attention_heads(view: dict, calibration: DirRef, projectors: DirRef, tracking_uri: str,
                          code: str) -> Annotated[DirRef, "coefficients"]:
    """Stage 2: response->instruction attention on the probe merge; alpha = clip(g / H) per head."""
    with step_run("score_attention_heads", tracking_uri):
        mlflow.log_params(flatten({"stage2": view["stage2"], "strength": view["strength"]}))
        ref = workflow.score_attention_heads(view, calibration, projectors, payload_dir("coefficients"))
        for name in ("rain_alpha.json", "alpha_heatmap.png"):
            if (ref.path / name).is_file():
                mlflow.log_artifact(str(ref.path / name))
    return ref
