from typing import Annotated, Any, Optional

from zenml import step

from rainmerge.product.artifacts import DirRef, LoadedModels
from rainmerge.product.pipeline_config import EvaluationConfig
from rainmerge.product.step_bodies import STEPS


@step
def evaluate(models: LoadedModels, target: str, evaluation: EvaluationConfig, data_dir: str,
             calibration_file: Optional[str], tracking_uri: str, code: str,
             merged: Optional[DirRef] = None) -> Annotated[dict[str, Any], "metrics"]:
    """IFEval checkers, think format, reasoning accuracy and L_think for one model (merged or an input)."""
    return STEPS["evaluate"](models, target, evaluation, data_dir, calibration_file, tracking_uri, merged)
