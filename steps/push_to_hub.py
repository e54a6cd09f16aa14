from typing import Annotated, Any

import mlflow
from zenml import step

from rainmerge import hub
from rainmerge.artifacts import DirRef
from rainmerge.tracking import step_run

from ._common import payload_dir


@step(enable_cache=False)
def push_to_hub(merged: DirRef, decision: dict, metrics: dict, lrm_metrics: dict, models: dict, config: dict,
                hub_cfg: dict, tracking_uri: str, code: str) -> Annotated[dict[str, Any], "hub"]:
    """Publish with a model card naming all three parents; off by default, dry run writes the folder."""
    if not hub_cfg["enabled"]:
        return {"status": "disabled"}
    with step_run("push_to_hub", tracking_uri):
        card = hub.model_card(config, models["inputs"], [lrm_metrics, metrics], decision.get("version"),
                              hub_cfg["extra_tags"])
        folder = hub.stage_folder(merged.verify().path, card, payload_dir("hub") / "upload")
        mlflow.log_text(card, "model_card.md")
        mlflow.log_params({"hub.repo_id": str(hub_cfg["repo_id"]), "hub.dry_run": hub_cfg["dry_run"]})
        if hub_cfg["dry_run"]:
            return {"status": "dry_run", "folder": str(folder)}
        token = hub.resolve_token(hub_cfg["token_env"], hub_cfg["zenml_secret"])
        res = hub.push(folder, hub_cfg["repo_id"], token, str(decision.get("version")), hub_cfg["private"],
                       hub_cfg["max_retries"])
        mlflow.set_tags({"hub.commit": res["commit"], "hub.tag": res["tag"]})
        return {"status": "pushed", **res}
