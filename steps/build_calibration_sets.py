from typing import Annotated

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag
from zenml import step

from rainmerge import workflow
from rainmerge.artifacts import DirRef
from rainmerge.tracking import flatten, parent_run_id, step_run

from ._common import payload_dir


@step
def build_calibration_sets(view: dict, fingerprint: dict, models: dict, tracking_uri: str,
                           code: str) -> Annotated[DirRef, "calibration"]:
    """Verify (sha256), render with the LRM template, locate think tags and spans; log as MLflow datasets."""
    with step_run("build_calibration_sets", tracking_uri):
        mlflow.log_params(flatten({k: view[k] for k in ("reasoning_calibration", "instruction_calibration",
                                                         "stage1", "stage2")}))
        ref = workflow.build_calibration_sets(view, payload_dir("calibration"))
        datasets = []
        for role, rec in ref.meta["calibration"].items():
            mlflow.log_metrics({f"{role}.records": rec["records"], f"{role}.used": rec["used"]})
            df = pd.DataFrame([{"role": role, "records": rec["records"], "used": rec["used"]}])
            ds = mlflow.data.from_pandas(df, source=rec["path"], name=f"{role}_calibration", digest=rec["sha256"][:36])
            mlflow.log_input(ds, context=f"calibration.{role}")
            datasets.append(DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", f"calibration.{role}")]))
        parent = parent_run_id()
        if parent and datasets:
            MlflowClient().log_inputs(parent, datasets=datasets)
    return ref
