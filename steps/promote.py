from typing import Annotated, Any, Optional

from zenml import get_step_context, step
from zenml.enums import ModelStages

from rainmerge.config import MergeConfig
from rainmerge.product import describe
from rainmerge.product.artifacts import DirRef, LoadedModels
from rainmerge.product.pipeline_config import PromotionGates
from rainmerge.product.step_bodies import STEPS

from ._common import payload_dir


@step(enable_cache=False)
def promote(merged: DirRef, metrics: dict, lrm_metrics: dict, models: LoadedModels, calibration: Optional[DirRef],
            config: MergeConfig, gates: PromotionGates, registered_model: str, tracking_uri: str,
            code: str) -> Annotated[dict[str, Any], "decision"]:
    """Register the merged model (alias `challenger`), apply the gates, move `champion` if they pass;
    mirror the decision on the ZenML model version (stage production when promoted)."""
    decision = STEPS["promote"](merged, metrics, lrm_metrics, models, calibration, config, gates, registered_model,
                                payload_dir("decision"), tracking_uri)
    model = get_step_context().model
    if model is not None:
        model.log_metadata({"registered_version": decision.version, "decision": decision.as_dict(),
                            "metrics": metrics})
        model.log_metadata({"audit": describe.zenml_metadata(decision.model, decision.version, tracking_uri)})
        if decision.promote:
            model.set_stage(ModelStages.PRODUCTION, force=True)
    return decision.as_dict()
