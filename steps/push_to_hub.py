from typing import Annotated, Any

from zenml import step

from rainmerge.config import MergeConfig
from rainmerge.product.artifacts import DirRef, LoadedModels
from rainmerge.product.pipeline_config import HubConfig
from rainmerge.product.step_bodies import STEPS

from ._common import payload_dir


@step(enable_cache=False)
def push_to_hub(merged: DirRef, decision: dict, metrics: dict, lrm_metrics: dict, models: LoadedModels,
                config: MergeConfig, hub_cfg: HubConfig, tracking_uri: str,
                code: str) -> Annotated[dict[str, Any], "hub"]:
    """Publish with a model card naming all three parents; off by default, dry run writes the folder."""
    return STEPS["push_to_hub"](merged, decision, metrics, lrm_metrics, models, config, hub_cfg, payload_dir("hub"),
                                tracking_uri)
