from pathlib import Path
from typing import Annotated, Any, Optional

import mlflow
from zenml import step

from rainmerge.artifacts import DirRef
from rainmerge.eval.suite import evaluate_model
from rainmerge.tracking import flatten, step_run


@step
def evaluate(models: dict, target: str, evaluation: dict, data_dir: str, calibration_file: Optional[str],
             tracking_uri: str, code: str, merged: Optional[DirRef] = None) -> Annotated[dict[str, Any], "metrics"]:
    """IFEval checkers, think format, reasoning accuracy and L_think for one model (merged or an input)."""
    import torch

    device = evaluation["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    folder = merged.verify().path if merged is not None else Path(models["inputs"][target]["resolved_dir"])
    with step_run(f"evaluate_{target}", tracking_uri):
        mlflow.log_params(flatten({"target": target, **evaluation}))
        res = evaluate_model(folder, data_dir, lrm_dir=models["inputs"]["reasoning"]["resolved_dir"],
                             calibration=calibration_file, device=device, batch_size=evaluation["batch_size"],
                             limit=evaluation["limit"], max_new_tokens=evaluation["max_new_tokens"], name=target)
        examples = res.pop("examples")
        mlflow.log_metrics({k: v for k, v in res.items() if isinstance(v, (int, float))})
        mlflow.log_dict(examples, "examples.json")
    return res
