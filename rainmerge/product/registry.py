"""MLflow model registry: every merged version gets `challenger`; gates decide `champion`; lineage."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import PromotionGates

CHALLENGER, CHAMPION = "challenger", "champion"


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    version: str | None = None
    previous_champion: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(merged: dict[str, float], lrm: dict[str, float], champion: dict[str, float] | None,
           gates: PromotionGates) -> Decision:
    """Apply every gate; the reasons say which passed and which failed, with the numbers."""
    d = Decision(True)
    m = gates.metric

    def check(ok: bool, text: str) -> None:
        d.reasons.append(("PASS " if ok else "FAIL ") + text)
        d.promote &= ok

    if m not in merged or m not in lrm:
        check(False, f"metric '{m}' missing from the evaluation")
        return d
    check(merged[m] >= lrm[m] + gates.min_gain_over_lrm,
          f"{m} {merged[m]:.4f} >= LRM {lrm[m]:.4f} + {gates.min_gain_over_lrm}")
    check(merged["think_well_formed"] >= gates.min_think_well_formed,
          f"think_well_formed {merged['think_well_formed']:.4f} >= {gates.min_think_well_formed}")
    check(merged["reasoning_acc"] >= lrm["reasoning_acc"] - gates.max_reasoning_drop,
          f"reasoning_acc {merged['reasoning_acc']:.4f} >= LRM {lrm['reasoning_acc']:.4f} - {gates.max_reasoning_drop}")
    if gates.require_beats_champion and champion is not None and m in champion:
        check(merged[m] >= champion[m], f"{m} {merged[m]:.4f} >= champion {champion[m]:.4f}")
    elif gates.require_beats_champion:
        d.reasons.append("PASS no current champion")
    return d


def _client(uri: str | None):
    import mlflow
    from mlflow import MlflowClient

    from .tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(uri))
    return MlflowClient()


def register(name: str, model_dir: str, run_id: str | None, tags: dict[str, str], uri: str | None = None) -> str:
    """Register the merged folder by reference (its artifact-store URI), tagged, alias `challenger`."""
    c = _client(uri)
    try:
        c.get_registered_model(name)
    except Exception:
        c.create_registered_model(name, description="RAIN-Merging outputs (rainmerge)")
    source = model_dir if "://" in model_dir else f"file://{model_dir}"
    mv = c.create_model_version(name, source=source, run_id=run_id, tags={k: str(v)[:5000] for k, v in tags.items()})
    c.set_registered_model_alias(name, CHALLENGER, mv.version)
    return str(mv.version)


def tag_metrics(tags: dict[str, str], prefix: str = "metric.") -> dict[str, float]:
    """Metrics stored as `<prefix><name>` tags on a model version."""
    return {k.removeprefix(prefix): float(v) for k, v in tags.items() if k.startswith(prefix)}


def champion(name: str, uri: str | None = None) -> tuple[str | None, dict[str, float] | None]:
    c = _client(uri)
    try:
        mv = c.get_model_version_by_alias(name, CHAMPION)
    except Exception:
        return None, None
    return str(mv.version), tag_metrics(mv.tags)


def record_decision(name: str, version: str, decision: Decision, uri: str | None = None) -> None:
    """Log the decision on the version either way; move `champion` only when it passed."""
    c = _client(uri)
    c.set_model_version_tag(name, version, "promotion.decision", "promoted" if decision.promote else "rejected")
    c.set_model_version_tag(name, version, "promotion.reasons", json.dumps(decision.reasons))
    if decision.promote:
        c.set_registered_model_alias(name, CHAMPION, version)


def lineage(name: str, version: str, uri: str | None = None) -> dict[str, Any]:
    """Everything an auditor needs about one registered version, from MLflow (and ZenML when reachable)."""
    from ..errors import RainMergeError
    from .tracking import tracking_uri

    c = _client(uri)
    try:
        mv = c.get_model_version(name, version)
    except Exception:
        raise RainMergeError(f"registered model '{name}' has no version {version} in {tracking_uri(uri)} "
                             "(set MLFLOW_TRACKING_URI or --tracking-uri to the store the pipeline used)") from None
    rm = c.get_registered_model(name)
    aliases = sorted(a for a, v in (rm.aliases or {}).items() if str(v) == str(version))
    out: dict[str, Any] = {"model": name, "version": str(version), "aliases": aliases, "source": mv.source,
                           "tags": dict(mv.tags), "mlflow_run_id": mv.run_id, "steps": []}
    if mv.run_id:
        run = c.get_run(mv.run_id)
        parent = run.data.tags.get("mlflow.parentRunId") or mv.run_id
        out["mlflow_parent_run_id"] = parent
        children = c.search_runs([run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
        for ch in sorted(children, key=lambda r: r.info.start_time):
            out["steps"].append({"step": ch.info.run_name, "mlflow_run_id": ch.info.run_id,
                                 "zenml_step_run_id": ch.data.tags.get("zenml.step_run_id"),
                                 "params": dict(ch.data.params), "metrics": dict(ch.data.metrics)})
    zid = mv.tags.get("zenml.run_id")
    if zid:
        try:
            from zenml.client import Client

            run = Client().get_pipeline_run(zid)
            out["zenml"] = {"run_id": zid, "run_name": run.name, "status": str(run.status),
                            "steps": {n: {"id": str(s.id), "status": str(s.status)} for n, s in run.steps.items()}}
        except Exception as exc:  # the ZenML store may be elsewhere; MLflow alone still answers
            out["zenml"] = {"run_id": zid, "unavailable": str(exc)[:200]}
    return out


def format_lineage(info: dict[str, Any]) -> str:
    t = info["tags"]
    lines = [f"{info['model']} v{info['version']}  aliases: {', '.join(info['aliases']) or '-'}",
             f"  weights: {info['source']}", f"  method: {t.get('method')}  git: {t.get('git_commit')}",
             "  inputs:"]
    for role in ("base", "instruct", "reasoning"):
        lines.append(f"    {role:<9} {t.get(f'input.{role}')}  revision={t.get(f'input.{role}.revision')} "
                     f"commit={t.get(f'input.{role}.commit')} weights_sha256={t.get(f'input.{role}.weights_sha256')}")
    lines.append("  calibration:")
    for k in sorted(k for k in t if k.startswith("calibration.")):
        lines.append(f"    {k.removeprefix('calibration.'):<12} sha256={t[k]}")
    lines.append(f"  config sha256: {t.get('config_sha256')}")
    z = info.get("zenml", {})
    lines.append(f"  zenml run: {t.get('zenml.run_name')} ({t.get('zenml.run_id')})")
    for n, s in z.get("steps", {}).items():
        lines.append(f"    step {n:<24} {s['id']}  {s['status']}")
    lines.append(f"  mlflow parent run: {info.get('mlflow_parent_run_id')}")
    for s in info["steps"]:
        lines.append(f"    step {s['step']:<24} mlflow={s['mlflow_run_id']} zenml={s['zenml_step_run_id']}")
    lines.append("  metrics: " + ", ".join(f"{k.removeprefix('metric.')}={v}" for k, v in sorted(t.items())
                                          if k.startswith("metric.")))
    lines.append(f"  promotion: {t.get('promotion.decision')}")
    for r in json.loads(t.get("promotion.reasons", "[]")):
        lines.append(f"    {r}")
    return "\n".join(lines)
