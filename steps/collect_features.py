from typing import Annotated

import mlflow
from zenml import step

from rainmerge import workflow
from rainmerge.artifacts import DirRef
from rainmerge.tracking import flatten, step_run

from ._common import payload_dir


@step
def collect_features(view: dict, calibration: DirRef, tracking_uri: str, code: str) -> Annotated[DirRef, "features"]:
    """Stage 1: one LRM forward per reasoning sample; inputs of every merged linear at Omega_think."""
    with step_run("collect_features", tracking_uri):
        mlflow.log_params(flatten({"stage1": view["stage1"], "device": view["device"]}))
        ref = workflow.collect_features(view, calibration, payload_dir("features"))
        mlflow.log_metric("seconds", ref.meta["seconds"])
    return ref
