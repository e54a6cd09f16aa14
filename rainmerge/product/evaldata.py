"""The evaluate step's records in MLflow: benchmarks as dataset inputs, per-sample records (artifact +
table), and the LRM's evaluation cached by content so later runs and every sweep candidate reuse it.

Cache key: sha256 over the LRM's weights digest, the evaluation settings that change completions
(decoding, budgets, engine kind) and the digests of the rows used. An entry is a finished MLflow run
in the experiment `rainmerge-eval-cache`, tagged with the key, holding metrics.json and the records.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from .artifacts import LoadedModels
from .pipeline_config import EvaluationConfig

log = logging.getLogger("rainmerge")
CACHE_EXPERIMENT = "rainmerge-eval-cache"
CACHE_TAG = "rainmerge.eval_cache_key"


def settings(evaluation: EvaluationConfig) -> dict[str, Any]:
    """What decides the completions (not where or how fast they are made)."""
    out = {"sampling": evaluation.sampling.model_dump(mode="json"), "max_new_tokens": evaluation.max_new_tokens,
           "engine": evaluation.engine.kind}
    if evaluation.engine.dtype != "auto":  # a named dtype changes the logits; auto keeps the keys made before it
        out["dtype"] = evaluation.engine.dtype
    return out


def model_digest(models: LoadedModels, target: str, merged: Any = None) -> str:
    """The evaluated weights' identity: the merged folder's file digests, or an input's weights digests
    (commit when the load step did not hash them)."""
    if merged is not None:
        return hashlib.sha256(json.dumps(merged.files, sort_keys=True).encode()).hexdigest()
    d = models.inputs[target]
    ident = d.weights_sha256 or {"path": d.path, "commit": d.commit}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def content_key(weights: str, evaluation: EvaluationConfig, datasets: list[dict[str, Any]]) -> str:
    """One key per (weights digest, evaluation settings, data digests), with each set's budget."""
    data = sorted((d["name"], d["sha256"], d.get("max_new_tokens")) for d in datasets)
    blob = json.dumps({"weights": weights, "settings": settings(evaluation), "data": data}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _cache_experiment(client: Any) -> str:
    exp = client.get_experiment_by_name(CACHE_EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(CACHE_EXPERIMENT)
    except Exception:  # created meanwhile by a concurrent run
        return client.get_experiment_by_name(CACHE_EXPERIMENT).experiment_id


def cached(key: str) -> tuple[dict[str, Any], str] | None:
    """(metrics, run id) of a finished evaluation with this key, or None."""
    import mlflow
    from mlflow import MlflowClient

    c = MlflowClient()
    exp = c.get_experiment_by_name(CACHE_EXPERIMENT)
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`{CACHE_TAG}` = '{key}' and "
                         "attributes.status = 'FINISHED'", max_results=1, order_by=["attributes.start_time DESC"])
    if not runs:
        return None
    try:
        got = mlflow.artifacts.load_dict(f"{runs[0].info.artifact_uri}/metrics.json")
    except Exception as exc:  # an entry without its payload is skipped (and replaced by this run's)
        log.warning("eval cache entry %s unreadable (%s); evaluating again", runs[0].info.run_id, type(exc).__name__)
        return None
    return got, runs[0].info.run_id


def store(key: str, metrics: dict[str, Any], records_path: Path, name: str) -> str:
    """Record an evaluation under its key (its own run, so the active step run is untouched)."""
    from mlflow import MlflowClient

    c = MlflowClient()
    run = c.create_run(_cache_experiment(c), run_name=f"{name} eval {key[:12]}", tags={CACHE_TAG: key})
    rid = run.info.run_id
    try:
        c.log_dict(rid, metrics, "metrics.json")
        c.log_artifact(rid, str(records_path))
        c.set_terminated(rid, "FINISHED")
    except Exception:
        c.set_terminated(rid, "FAILED")
        raise
    return rid


def log_datasets(metas: list[dict[str, Any]], context: str) -> None:
    """Each benchmark as an MLflow dataset input (source = path@revision, digest = rows sha256) on this
    step's run and the parent run, with its pin and counts as params."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, InputTag

    from .tracking import parent_run_id

    inputs = []
    for m in metas:
        df = pd.DataFrame([{k: str(v) for k, v in m.items()}])
        src = m["source"] if m.get("revision") is None else f"{m['path']}@{m['revision']}"
        ds = mlflow.data.from_pandas(df, source=src, name=m["name"], digest=m["sha256"][:36])
        mlflow.log_input(ds, context=context)
        inputs.append(DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", context)]))
        mlflow.log_params({f"data.{m['name']}.{k}": str(m[k]) for k in ("path", "revision", "split", "sha256",
                                                                        "rows_total", "held_out", "rows_used")})
    parent = parent_run_id()
    if parent and inputs:
        try:
            MlflowClient().log_inputs(parent, datasets=inputs)
        except Exception:  # the same datasets from the other evaluation: already there
            pass


def log_records(records: list[dict[str, Any]], records_path: Path, target: str) -> None:
    """The generations behind the decision: the JSONL artifact and a table an auditor can filter."""
    import mlflow
    import pandas as pd

    from ..eval.scoring import RECORD_FIELDS

    mlflow.log_artifact(str(records_path), artifact_path="records")
    df = pd.DataFrame([{k: (json.dumps(r[k]) if isinstance(r.get(k), list) else r.get(k)) for k in RECORD_FIELDS}
                       for r in records])
    mlflow.log_table(df, artifact_file=f"records/{target}_table.json")
