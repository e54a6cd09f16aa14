from typing import Annotated, Any

from zenml import step

from rainmerge.product.artifacts import DirRef
from rainmerge.product.pipeline_config import PromotionGates
from rainmerge.product.step_bodies import STEPS

from ._common import payload_dir


@step
def select_candidate(merged: list[DirRef], metrics: list[dict], strengths: list[float], lrm_metrics: dict,
                     gates: PromotionGates, baseline_labels: list[dict], baseline_metrics: list[dict],
                     tracking_uri: str, code: str
                     ) -> tuple[Annotated[DirRef, "merged_model"], Annotated[dict[str, Any], "metrics"],
                                Annotated[dict[str, Any], "selection"]]:
    """Strength sweep fan-in: the best RAIN candidate that passes the gates, and the trade-off plot."""
    chosen, chosen_metrics, selection = STEPS["select_candidate"](
        merged, metrics, strengths, lrm_metrics, gates, baseline_labels, baseline_metrics, payload_dir("selection"),
        tracking_uri)
    return chosen, chosen_metrics, selection  # a tuple literal: ZenML reads it as three outputs
