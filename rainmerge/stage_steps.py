"""Step bodies shared by the ZenML steps (steps/) and the Kubeflow components (rainmerge.kfp_step):
each opens its MLflow child run, calls rainmerge.workflow, logs what it produced."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from . import registry, workflow
from .artifacts import DirRef
from .tracking import flatten, parent_run_id, run_ids, step_run


def load_models(view: dict, uri: str) -> dict[str, Any]:
    import mlflow

    with step_run("load_models", uri):
        mlflow.log_params(flatten({k: view[k] for k in ("base", "instruct", "reasoning", "layers")}))
        info = workflow.load_models(view)
        mlflow.set_tags({f"input.{r}.commit": str(d["commit"]) for r, d in info["inputs"].items()})
        mlflow.log_dict(info, "models.json")
    return info


def build_calibration_sets(view: dict, out: Path, uri: str) -> DirRef:
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, InputTag

    with step_run("build_calibration_sets", uri):
        mlflow.log_params(flatten({k: view[k] for k in ("reasoning_calibration", "instruction_calibration",
                                                         "stage1", "stage2")}))
        ref = workflow.build_calibration_sets(view, out)
        datasets = []
        for role, rec in ref.meta["calibration"].items():
            mlflow.log_metrics({f"{role}.records": rec["records"], f"{role}.used": rec["used"]})
            df = pd.DataFrame([{"role": role, "records": float(rec["records"]), "used": float(rec["used"])}])
            ds = mlflow.data.from_pandas(df, source=rec["path"], name=f"{role}_calibration",
                                         digest=rec["sha256"][:36])
            mlflow.log_input(ds, context=f"calibration.{role}")
            tag = InputTag("mlflow.data.context", f"calibration.{role}")
            datasets.append(DatasetInput(ds._to_mlflow_entity(), [tag]))
        parent = parent_run_id()
        if parent and datasets:  # the registered version points at the parent run: link inputs there too
            MlflowClient().log_inputs(parent, datasets=datasets)
    return ref


def collect_features(view: dict, calibration: DirRef, out: Path, uri: str) -> DirRef:
    import mlflow

    with step_run("collect_features", uri):
        mlflow.log_params(flatten({"stage1": view["stage1"], "device": view["device"]}))
        ref = workflow.collect_features(view, calibration, out)
        mlflow.log_metric("seconds", ref.meta["seconds"])
    return ref


def compute_projectors(view: dict, features: DirRef, out: Path, uri: str) -> DirRef:
    import mlflow

    with step_run("compute_projectors", uri):
        mlflow.log_params(flatten({"stage1": view["stage1"]}))
        ref = workflow.compute_projectors(view, features, out)
        mlflow.log_metrics({"capped_groups": ref.meta["capped_groups"], "seconds": ref.meta["seconds"]})
    return ref


def score_attention_heads(view: dict, calibration: DirRef, projectors: DirRef, out: Path, uri: str) -> DirRef:
    import mlflow

    with step_run("score_attention_heads", uri):
        mlflow.log_params(flatten({"stage2": view["stage2"], "strength": view["strength"]}))
        ref = workflow.score_attention_heads(view, calibration, projectors, out)
        for name in ("rain_alpha.json", "alpha_heatmap.png"):
            if (ref.path / name).is_file():
                mlflow.log_artifact(str(ref.path / name))
    return ref


def merge(view: dict, calibration: DirRef | None, projectors: DirRef | None, coefficients: DirRef | None,
          out: Path, uri: str) -> DirRef:
    import mlflow

    with step_run("merge", uri):
        mlflow.log_params(flatten({k: view[k] for k in ("method", "strength", "density", "layers", "modules")}))
        ref = workflow.merge(view, calibration, projectors, coefficients, out)
        mlflow.log_artifact(str(ref.path / "rainmerge_provenance.json"))
        if (out / "projection_stats.png").is_file():
            mlflow.log_artifact(str(out / "projection_stats.png"))
        mlflow.log_metric("warnings", len(ref.meta["warnings"]))
    return ref


def evaluate(models: dict, target: str, evaluation: dict, data_dir: str, calibration_file: str | None, uri: str,
             merged: DirRef | None = None) -> dict[str, Any]:
    import mlflow

    from .eval.suite import evaluate_model
    from .runner import _device

    device = _device(evaluation["device"])
    folder = merged.verify().path if merged is not None else Path(models["inputs"][target]["resolved_dir"])
    with step_run(f"evaluate_{target}", uri):
        mlflow.log_params(flatten({"target": target, **evaluation}))
        res = evaluate_model(folder, data_dir, lrm_dir=models["inputs"]["reasoning"]["resolved_dir"],
                             calibration=calibration_file, device=device, batch_size=evaluation["batch_size"],
                             limit=evaluation["limit"], max_new_tokens=evaluation["max_new_tokens"], name=target)
        mlflow.log_dict(res.pop("examples"), "examples.json")
        mlflow.log_metrics({k: v for k, v in res.items() if isinstance(v, (int, float))})
    return res


def lineage_tags(config: dict, models: dict, calibration: DirRef | None, merged: DirRef, metrics: dict,
                 lrm_metrics: dict) -> dict[str, str]:
    """What an auditor needs on the registered version: inputs, digests, config, run ids, metrics."""
    from .runner import git_commit

    ids = run_ids()
    tags = {"method": config["method"], "git_commit": str(git_commit()), "weights_uri": merged.uri,
            "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
            "zenml.run_id": ids.get("zenml.run_id", ""), "zenml.run_name": ids.get("zenml.run_name", ""),
            "zenml.pipeline": ids.get("zenml.pipeline", "")}
    for role, d in models["inputs"].items():
        tags |= {f"input.{role}": d["path"], f"input.{role}.revision": str(d["revision"]),
                 f"input.{role}.commit": str(d["commit"]), f"input.{role}.config_sha256": d["config_sha256"]}
        if d.get("weights_sha256"):  # one digest over the per-file digests
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


def promote(merged: DirRef, metrics: dict, lrm_metrics: dict, models: dict, calibration: DirRef | None,
            config: dict, gates: dict, registered_model: str, out: Path, uri: str) -> registry.Decision:
    import mlflow

    from .eval.report import write as write_report
    from .pipeline_config import PromotionGates

    with step_run("promote", uri):
        mlflow.log_params(flatten({"gates": gates, "registered_model": registered_model}))
        report = write_report([lrm_metrics, metrics], out)
        mlflow.log_artifact(str(report["plot"]))
        mlflow.log_artifact(str(report["markdown"]))
        tags = lineage_tags(config, models, calibration, merged, metrics, lrm_metrics)
        version = registry.register(registered_model, merged.uri, parent_run_id(), tags, uri)
        prev, champ = registry.champion(registered_model, uri)
        decision = registry.decide(metrics, lrm_metrics, champ, PromotionGates(**gates))
        decision.version, decision.previous_champion = version, prev
        registry.record_decision(registered_model, version, decision, uri)
        mlflow.set_tags({"promotion.decision": "promoted" if decision.promote else "rejected",
                         "registered_version": version})
        mlflow.log_dict(decision.as_dict(), "decision.json")
    return decision


def push_to_hub(merged: DirRef, decision: dict, metrics: dict, lrm_metrics: dict, models: dict, config: dict,
                hub_cfg: dict, out: Path, uri: str) -> dict[str, Any]:
    import mlflow

    from . import hub

    if not hub_cfg["enabled"]:
        return {"status": "disabled"}
    with step_run("push_to_hub", uri):
        card = hub.model_card(config, models["inputs"], [lrm_metrics, metrics], decision.get("version"),
                              hub_cfg["extra_tags"])
        folder = hub.stage_folder(merged.verify().path, card, out / "upload")
        mlflow.log_text(card, "model_card.md")
        mlflow.log_params({"hub.repo_id": str(hub_cfg["repo_id"]), "hub.dry_run": hub_cfg["dry_run"]})
        if hub_cfg["dry_run"]:
            return {"status": "dry_run", "folder": str(folder)}
        token = hub.resolve_token(hub_cfg["token_env"], hub_cfg["zenml_secret"])
        res = hub.push(folder, hub_cfg["repo_id"], token, str(decision.get("version")), hub_cfg["private"],
                       hub_cfg["max_retries"])
        mlflow.set_tags({"hub.commit": res["commit"], "hub.tag": res["tag"]})
        return {"status": "pushed", **res}
