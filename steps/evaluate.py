from typing import Annotated, Any, Optional

from zenml import step

from rainmerge import stage_steps
from rainmerge.artifacts import DirRef


@step
def evaluate(models: dict, target: str, evaluation: dict, data_dir: str, calibration_file: Optional[str],
             tracking_uri: str, code: str, merged: Optional[DirRef] = None) -> Annotated[dict[str, Any], "metrics"]:
    """IFEval checkers, think format, reasoning accuracy and L_think for one model (merged or an input)."""
    return stage_steps.evaluate(models, target, evaluation, data_dir, calibration_file, tracking_uri, merged)
