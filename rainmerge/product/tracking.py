"""MLflow lineage: one experiment per pipeline, one parent run per pipeline run, a child run per step."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_SECRET = re.compile(r"token|secret|password|api[_-]?key", re.I)
PROJECT = Path(__file__).resolve().parents[2]


def tracking_uri(configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT / '.mlflow' / 'mlflow.db'}"


def _artifact_root(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        return (db.parent / "artifacts").as_uri()
    return None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flat params for MLflow; keys that look like secrets are dropped, never logged."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if _SECRET.search(k) and k != "token_env":
            continue
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:500]
    return out


def experiment(name: str, uri: str | None = None):
    import mlflow

    u = tracking_uri(uri)
    mlflow.set_tracking_uri(u)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        mlflow.create_experiment(name, artifact_location=_artifact_root(u))
    return mlflow.set_experiment(name)


def run_ids() -> dict[str, str]:
    """Ids of the orchestrator run: the ZenML step context, else RAINMERGE_RUN_* (set by the KFP entry)."""
    try:
        from zenml import get_step_context

        ctx = get_step_context()
        return {"zenml.pipeline": ctx.pipeline.name, "zenml.run_id": str(ctx.pipeline_run.id),
                "zenml.run_name": ctx.pipeline_run.name, "zenml.step_run_id": str(ctx.step_run.id),
                "zenml.step": ctx.step_run.name}
    except Exception:  # outside a ZenML step: Kubeflow, library use, tests
        env = {"zenml.pipeline": os.environ.get("RAINMERGE_PIPELINE"),
               "zenml.run_id": os.environ.get("RAINMERGE_RUN_ID"),
               "zenml.run_name": os.environ.get("RAINMERGE_RUN_NAME"),
               "orchestrator": os.environ.get("RAINMERGE_ORCHESTRATOR")}
        return {k: v for k, v in env.items() if v}


@contextmanager
def step_run(step: str, uri: str | None = None, experiment_name: str | None = None) -> Iterator[Any]:
    """Open (or find) the parent run of this pipeline run, then a nested run for `step`."""
    import mlflow

    from .hygiene import process_tags

    ids = run_ids()
    exp = experiment(experiment_name or ids.get("zenml.pipeline", "rainmerge"), uri)
    run_key = ids.get("zenml.run_id", "standalone")
    found = mlflow.search_runs([exp.experiment_id], filter_string=f"tags.`zenml.run_id` = '{run_key}'"
                               " and tags.`rainmerge.level` = 'pipeline'", output_format="list")
    parent_tags = {k: v for k, v in ids.items() if k in ("zenml.pipeline", "zenml.run_id", "zenml.run_name")}
    parent_tags |= {"zenml.run_id": run_key, "rainmerge.level": "pipeline"} | process_tags()
    while mlflow.active_run():
        mlflow.end_run()
    if found:
        parent = mlflow.start_run(run_id=found[0].info.run_id)
        mlflow.set_tags(process_tags())  # crash hygiene: the process now holding it
    else:
        parent = mlflow.start_run(run_name=ids.get("zenml.run_name", "rainmerge"), tags=parent_tags)
    with parent:
        child_tags = ids | {"rainmerge.level": "step"} | process_tags()
        with mlflow.start_run(run_name=step, nested=True, tags=child_tags) as child:
            yield child


def parent_run_id() -> str | None:
    import mlflow

    run = mlflow.active_run()
    return run.data.tags.get("mlflow.parentRunId") if run else None


def log_calibration_datasets(record: dict[str, Any]) -> None:
    """Calibration files as MLflow datasets (digest = the file's sha256), inputs of this step's run and
    of the pipeline's parent run, which the registered version points at."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, InputTag

    datasets = []
    for role, rec in record.items():
        df = pd.DataFrame([{"role": role, "records": float(rec["records"]), "used": float(rec["used"])}])
        ds = mlflow.data.from_pandas(df, source=rec["path"], name=f"{role}_calibration", digest=rec["sha256"][:36])
        mlflow.log_input(ds, context=f"calibration.{role}")
        datasets.append(DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", f"calibration.{role}")]))
    parent = parent_run_id()
    if parent and datasets:
        MlflowClient().log_inputs(parent, datasets=datasets)
