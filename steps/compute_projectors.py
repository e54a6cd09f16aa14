from typing import Annotated

import mlflow
from zenml import step

from rainmerge import workflow
from rainmerge.artifacts import DirRef
from rainmerge.tracking import flatten, step_run

from ._common import payload_dir


@step
def compute_projectors(view: dict, features: DirRef, tracking_uri: str, code: str) -> Annotated[DirRef, "projectors"]:
    """Stage 1: one SVD per feature group (paper Eq. 4), shared by every module reading that input."""
    with step_run("compute_projectors", tracking_uri):
        mlflow.log_params(flatten({"stage1": view["stage1"]}))
        ref = workflow.compute_projectors(view, features, payload_dir("projectors"))
        mlflow.log_metrics({"capped_groups": ref.meta["capped_groups"], "seconds": ref.meta["seconds"]})
    return ref
