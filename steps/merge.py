from typing import Annotated, Optional

import mlflow
from zenml import step

from rainmerge import workflow
from rainmerge.artifacts import DirRef
from rainmerge.tracking import flatten, step_run

from ._common import payload_dir


@step
def merge(view: dict, calibration: Optional[DirRef], projectors: Optional[DirRef], coefficients: Optional[DirRef],
          tracking_uri: str, code: str) -> Annotated[DirRef, "merged_model"]:
    """Stage 3: stream the trio and write the merged folder atomically (no partial model on failure)."""
    with step_run("merge", tracking_uri):
        mlflow.log_params(flatten({k: view[k] for k in ("method", "strength", "density", "layers", "modules")}))
        out = payload_dir("merged_model")
        ref = workflow.merge(view, calibration, projectors, coefficients, out)
        mlflow.log_artifact(str(ref.path / "rainmerge_provenance.json"))
        if (out / "projection_stats.png").is_file():
            mlflow.log_artifact(str(out / "projection_stats.png"))
        mlflow.log_metric("warnings", len(ref.meta["warnings"]))
    return ref
