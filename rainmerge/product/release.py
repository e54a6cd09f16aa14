"""The pipeline's last steps: register the merged weights (or link to the version that already holds
them), apply the gates, publish to the Hub; each records what it did on the registered version."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..config import MergeConfig
from ..merge import PROVENANCE_FILE
from ..provenance import git_commit
from . import artifacts as A
from . import registry
from .pipeline_config import HubConfig, PromotionGates
from .describe import clean_tags
from .tracking import flatten, run_ids, step_run

log = logging.getLogger("rainmerge")


def _config_of(merged: A.DirRef, fallback: MergeConfig) -> MergeConfig:
    """The config that produced these weights, from their provenance (a strength sweep picks one of
    several candidates, so the pipeline's own `strength` need not be the one promoted)."""
    from pydantic import ValidationError

    prov = merged.path / PROVENANCE_FILE
    try:
        return MergeConfig.model_validate(json.loads(prov.read_text())["config"])
    except (OSError, KeyError, ValueError, ValidationError):  # not ours, or an older record: the pipeline's
        return fallback


def _eval_set_tags(metrics: dict[str, Any], parent: str | None) -> dict[str, str]:
    """Evaluation sets' pins and digests: the evaluate step's `datasets` (rainmerge.eval.benchmarks: name,
    path, revision, sha256 of the rows used, counts), else the parent run's MLflow dataset inputs."""
    out = {}
    for d in metrics.get("datasets") or []:
        out |= {f"data.{d['name']}.{f}": str(d.get(f)) for f in ("path", "revision", "sha256", "rows_used",
                                                                  "held_out")}
        if d.get("sha256"):
            out[f"eval_set.{d['name']}"] = str(d["sha256"])
    if out or not parent:
        return out
    try:
        from mlflow import MlflowClient

        for di in MlflowClient().get_run(parent).inputs.dataset_inputs or []:
            if {t.key: t.value for t in di.tags}.get("mlflow.data.context") == "evaluation":
                out[f"eval_set.{di.dataset.name}"] = di.dataset.digest
    except Exception:  # noqa: BLE001 - no parent run readable: the version simply names no sets
        pass
    return out


def lineage_tags(config: MergeConfig, models: A.LoadedModels, calibration: A.DirRef | None, merged: A.DirRef,
                 metrics: dict[str, Any], lrm_metrics: dict[str, Any], gates: PromotionGates | None = None
                 ) -> dict[str, str]:
    """What an auditor needs on the registered version: inputs, digests (weights per file and overall,
    calibration, evaluation sets), the full resolved config, the merge that produced the weights, run
    ids and the exact metrics (repr floats, what the gates read back)."""
    import hashlib

    from . import records
    from .tracking import parent_run_id

    ids = run_ids()
    cfg_json = config.model_dump(mode="json")
    tags = {"method": config.method, "git_commit": str(git_commit()), "weights_uri": merged.uri,
            "config_sha256": hashlib.sha256(json.dumps(cfg_json, sort_keys=True).encode()).hexdigest(),
            "config.json": json.dumps(cfg_json, sort_keys=True),
            "zenml.run_id": ids.get("zenml.run_id", ""), "zenml.run_name": ids.get("zenml.run_name", ""),
            "zenml.pipeline": ids.get("zenml.pipeline", "")}
    tags |= records.digest_tags(merged.files)
    made_by = {k: merged.meta.get(k) for k in ("step", "mlflow_run_id", "candidate")}
    tags["merge.strength"] = repr(config.strength)
    tags |= {f"merge.{k}": str(v) for k, v in made_by.items() if v is not None}
    for role, d in models.inputs.items():
        tags |= {f"input.{role}": d.path, f"input.{role}.revision": str(d.revision),
                 f"input.{role}.commit": str(d.commit), f"input.{role}.config_sha256": d.config_sha256}
        if d.weights_sha256:  # one digest over the per-file digests
            tags[f"input.{role}.weights_sha256"] = hashlib.sha256(
                json.dumps(d.weights_sha256, sort_keys=True).encode()).hexdigest()
    for role, rec in ((calibration.meta.get("calibration", {}) if calibration else {}) or {}).items():
        tags[f"calibration.{role}"] = rec["sha256"]
    tags |= _eval_set_tags(metrics, parent_run_id())
    tags |= registry.metric_tags(metrics, lrm_metrics)
    if gates is not None:
        tags[registry.INPUTS_SHA] = registry.decision_inputs_digest(metrics, lrm_metrics, gates)
    return clean_tags(tags)  # no "None" strings (local inputs have no revision or commit)


def promote(merged: A.DirRef, metrics: dict[str, Any], lrm_metrics: dict[str, Any], models: A.LoadedModels,
            calibration: A.DirRef | None, config: MergeConfig, gates: PromotionGates, registered_model: str,
            out: Path, uri: str) -> registry.Decision:
    """Verify the merged folder against the digests the merge recorded, register it (alias `challenger`)
    or link to the version that already holds the same weights and decision inputs, apply the gates
    to the exact stored metrics, move `champion` if they pass.

    A baseline method registers under `<registered_model>-<method>` (registry.registered_name), so it never
    moves the RAIN model's aliases; the gate and the alias move are one locked compare-and-set."""
    import mlflow

    from ..eval.comparison import write as write_report
    from . import describe, records
    from .tracking import parent_run_id

    from .gates import flat, intervals

    config = _config_of(merged, config)
    name = registry.registered_name(registered_model, config.method)
    merged.verify()  # a byte changed since the merge wrote it: never registered, promoted or linked
    # the paired intervals, computed once from the per-prompt units and stored with the version (exact tags)
    metrics = {**metrics, **flat(intervals(metrics, lrm_metrics, gates))}
    with step_run("promote", uri):
        mlflow.log_params(flatten({"gates": gates.model_dump(mode="json"), "registered_model": name}))
        report = write_report([lrm_metrics, metrics], out)
        mlflow.log_artifact(str(report["plot"]))
        mlflow.log_artifact(str(report["markdown"]))
        tags = lineage_tags(config, models, calibration, merged, metrics, lrm_metrics, gates)
        version, linked = registry.register_or_link(name, merged.uri, parent_run_id(), tags, uri)
        if linked and (prior := _latest_decision(name, version, uri)) is not None:
            decision = prior  # the same weights and inputs were decided already: no second verdict
        else:
            who = f"pipeline {run_ids().get('zenml.run_name') or 'run'} ({records.who()})"
            decision = registry.promote_version(name, version, None, None, gates, uri, operator=who, verified=True)
        decision.linked = linked
        # the auditor's view: version description, parent-run summary and the HTML lineage report
        describe.set_version_description(name, version, tags, metrics, lrm_metrics, decision, uri, config=config,
                                         out=out)
        mlflow.set_tags({"promotion.decision": registry.PROMOTED if decision.promote else registry.REJECTED,
                         "registered_model": name, "registered_version": version,
                         "registered_linked": str(linked).lower()})
        mlflow.log_dict(decision.as_dict(), "decision.json")
    return decision


def _latest_decision(name: str, version: str, uri: str) -> registry.Decision | None:
    """The version's latest recorded decision, as a Decision (None when it was never decided)."""
    tags = registry._client(uri).get_model_version(name, version).tags
    if tags.get("promotion.decision") not in (registry.PROMOTED, registry.REJECTED):
        return None
    return registry.Decision(tags["promotion.decision"] == registry.PROMOTED,
                             json.loads(tags.get("promotion.reasons", "[]")), version=version,
                             previous_champion=tags.get("promotion.previous_champion") or None, model=name,
                             gates_decision=tags.get("promotion.gates_decision"),
                             forced=tags.get("promotion.forced") == "true", operator=tags.get("promotion.operator"),
                             reason=tags.get("promotion.reason"), time=tags.get("promotion.time"))


def _published_decision(decision: dict[str, Any], uri: str) -> str | None:
    """None when the version may be published (its decision and its registry tag both say promoted),
    else the reason it may not."""
    if not decision.get("promote"):
        return f"version {decision.get('version')} was rejected by the promotion gates"
    name, version = decision.get("model"), decision.get("version")
    if not name or not version:
        return "the decision names no registered model version"
    try:
        tag = registry._client(uri).get_model_version(name, str(version)).tags.get("promotion.decision")
    except Exception as exc:
        return f"registry version {name} v{version} unreadable ({type(exc).__name__})"
    if tag != registry.PROMOTED:
        return f"registry tag promotion.decision of {name} v{version} is {tag!r}, not 'promoted'"
    return None


def push_to_hub(merged: A.DirRef, decision: dict[str, Any], metrics: dict[str, Any], lrm_metrics: dict[str, Any],
                models: A.LoadedModels, config: MergeConfig, hub_cfg: HubConfig, out: Path, uri: str) -> dict[str, Any]:
    """Publish a promoted version only (forced or not), with a model card naming all three parents by Hub id
    or redacted local name; off by default, dry run writes the folder. A rejected version makes no Hub request.
    The weights are verified against the version's recorded digest first; every push, failed or not, is
    recorded on the version (history event and hub.* tags), so the registry and the Hub never disagree."""
    import mlflow

    from . import hub, records

    if not hub_cfg.enabled:
        return {"status": "disabled"}
    why_not = _published_decision(decision, uri)
    if why_not:
        log.warning("not publishing: %s", why_not)
        return {"status": "skipped", "reason": why_not}
    config = _config_of(merged, config)
    name, version = str(decision["model"]), str(decision["version"])
    mv = registry._client(uri).get_model_version(name, version)
    registry.verify_version(name, version, uri, action="Hub push")
    same_folder = records.local_folder(mv.source) == merged.path
    hub.check_same_weights(merged if same_folder else merged.verify(), mv.tags)
    with step_run("push_to_hub", uri):
        card = hub.model_card(config.model_dump(mode="json"), models.input_records(), [lrm_metrics, metrics],
                              version, hub_cfg.extra_tags, repo_id=hub_cfg.repo_id)
        folder = hub.stage_folder(merged.path, card, out / "upload", models.input_records())
        mlflow.log_text(card, "model_card.md")
        mlflow.log_params({"hub.repo_id": str(hub_cfg.repo_id), "hub.dry_run": hub_cfg.dry_run})
        if hub_cfg.dry_run:
            return {"status": "dry_run", "folder": str(folder)}
        token = hub.resolve_token(hub_cfg.token_env, hub_cfg.zenml_secret)
        res = hub.push_recorded(folder, str(hub_cfg.repo_id), token, name, version, hub_cfg.private,
                                hub_cfg.max_retries, uri)
        mlflow.set_tags({"hub.commit": res["commit"], "hub.tag": res["tag"]})
        return {"status": "pushed", **res}
