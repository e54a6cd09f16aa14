import hashlib
import json
from typing import Annotated, Any, Optional

import mlflow
from zenml import get_step_context, step
from zenml.enums import ModelStages

from rainmerge import registry
from rainmerge.artifacts import DirRef
from rainmerge.eval.report import write as write_report
from rainmerge.pipeline_config import PromotionGates
from rainmerge.runner import git_commit
from rainmerge.tracking import flatten, parent_run_id, step_run

from ._common import payload_dir


def lineage_tags(config: dict, models: dict, calibration: Optional[DirRef], merged: DirRef,
                 metrics: dict, lrm_metrics: dict) -> dict[str, str]:
    ctx = get_step_context()
    tags = {"method": config["method"], "git_commit": str(git_commit()), "weights_uri": merged.uri,
            "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
            "zenml.run_id": str(ctx.pipeline_run.id), "zenml.run_name": ctx.pipeline_run.name,
            "zenml.pipeline": ctx.pipeline.name}
    for role, d in models["inputs"].items():
        tags |= {f"input.{role}": d["path"], f"input.{role}.revision": str(d["revision"]),
                 f"input.{role}.commit": str(d["commit"]), f"input.{role}.config_sha256": d["config_sha256"]}
        if d.get("weights_sha256"):  # one digest over the per-file digests, in file order
            tags[f"input.{role}.weights_sha256"] = hashlib.sha256(
                json.dumps(d["weights_sha256"], sort_keys=True).encode()).hexdigest()
    for role, rec in ((calibration.meta.get("calibration", {}) if calibration else {}) or {}).items():
        tags[f"calibration.{role}"] = rec["sha256"]
    for k in ("if_prompt_strict", "if_inst_strict", "if_prompt_loose", "if_inst_loose", "reasoning_acc",
              "think_well_formed", "think_close_missing", "l_think"):
        if k in metrics:
            tags[f"metric.{k}"] = str(round(metrics[k], 6))
        if k in lrm_metrics:
            tags[f"lrm_metric.{k}"] = str(round(lrm_metrics[k], 6))
    return tags


@step(enable_cache=False)
def promote(merged: DirRef, metrics: dict, lrm_metrics: dict, models: dict, calibration: Optional[DirRef],
            config: dict, gates: dict, registered_model: str, tracking_uri: str,
            code: str) -> Annotated[dict[str, Any], "decision"]:
    """Register the merged model (alias `challenger`), apply the gates, move `champion` if they pass."""
    with step_run("promote", tracking_uri):
        mlflow.log_params(flatten({"gates": gates, "registered_model": registered_model}))
        report = write_report([lrm_metrics, metrics], payload_dir("decision"))
        mlflow.log_artifact(str(report["plot"]))
        mlflow.log_artifact(str(report["markdown"]))
        tags = lineage_tags(config, models, calibration, merged, metrics, lrm_metrics)
        version = registry.register(registered_model, merged.uri, parent_run_id(), tags, tracking_uri)
        prev, champ = registry.champion(registered_model, tracking_uri)
        decision = registry.decide(metrics, lrm_metrics, champ, PromotionGates(**gates))
        decision.version, decision.previous_champion = version, prev
        registry.record_decision(registered_model, version, decision, tracking_uri)
        mlflow.set_tags({"promotion.decision": "promoted" if decision.promote else "rejected",
                         "registered_version": version})
        mlflow.log_dict(decision.as_dict(), "decision.json")
        model = get_step_context().model
        if model is not None:
            model.log_metadata({"registered_version": version, "decision": decision.as_dict(), "metrics": metrics})
            if decision.promote:
                model.set_stage(ModelStages.PRODUCTION, force=True)
    return decision.as_dict()
