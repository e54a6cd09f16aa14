from typing import Annotated, Any

from zenml import step

from rainmerge import stage_steps
from rainmerge.artifacts import DirRef

from ._common import payload_dir


@step(enable_cache=False)
def push_to_hub(merged: DirRef, decision: dict, metrics: dict, lrm_metrics: dict, models: dict, config: dict,
                hub_cfg: dict, tracking_uri: str, code: str) -> Annotated[dict[str, Any], "hub"]:
    """Publish with a model card naming all three parents; off by default, dry run writes the folder."""
    return stage_steps.push_to_hub(merged, decision, metrics, lrm_metrics, models, config, hub_cfg,
                                   payload_dir("hub"), tracking_uri)
