"""MLflow lineage: one experiment per pipeline, one parent run per pipeline run, a child run per step."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import TrackingStoreError
from ..redact import redact

# which process holds a run: crash hygiene (product.hygiene) marks the runs of dead processes failed
PID_TAG, HOST_TAG = "rainmerge.pid", "rainmerge.host"


def process_tags() -> dict[str, str]:
    import socket

    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


_SECRET = re.compile(r"token|secret|password|api[_-]?key", re.I)
PROJECT = Path(__file__).resolve().parents[2]
# MLflow 3 opens an experiment in the classic (model training) UI when this tag says so; without it the
# UI may infer the GenAI view. Values from mlflow/server/js ExperimentKind: "custom_model_development".
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# the held-out evaluation files (in the eval data dir) logged as dataset inputs
EVAL_FILES = ("eval_instructions.jsonl", "eval_problems.jsonl", "eval_reasoning_heldout.json")
KEY_METRICS = ("if_prompt_strict", "if_inst_strict", "if_prompt_loose", "if_inst_loose", "reasoning_acc",
               "think_well_formed", "think_close_missing", "l_think")


def tracking_uri(configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT / '.mlflow' / 'mlflow.db'}"


# a tracking server that does not answer a probe within this many seconds is reported as down, instead of
# MLflow's default of 7 retries with backoff (minutes) ending in a long traceback
PROBE_SECONDS = 5.0
_FIX = "start it, or point tracking.tracking_uri (or $MLFLOW_TRACKING_URI) at a reachable store"


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def _probe_server(uri: str, timeout: float) -> None:
    import requests

    base = uri.rstrip("/")
    try:  # any HTTP answer (even 401/404) means a server is there; auth is MLflow's business
        requests.get(f"{base}/health", timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        why = "no answer within %.0f s" % timeout if isinstance(exc, requests.Timeout) else "connection failed"
        raise TrackingStoreError(f"the MLflow tracking server {redact(base)} is not reachable ({why}); {_FIX}") from None


def _probe_writable(db: Path) -> None:
    """A read-only store fails here, in one line, instead of at the first step: the folder must take a new
    file and an existing database a write transaction (works for permissions, read-only mounts, root)."""
    import sqlite3
    import tempfile

    folder = db.parent
    while not folder.exists():
        folder = folder.parent
    fix = "make it writable, or point tracking.tracking_uri (or $MLFLOW_TRACKING_URI) at a writable store"
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".rainmerge-probe-"):
            pass
        if db.exists():
            con = sqlite3.connect(db, timeout=30)
            try:
                con.execute("BEGIN IMMEDIATE")
                con.rollback()
            finally:
                con.close()
    except (OSError, sqlite3.Error) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise TrackingStoreError(f"the MLflow store {db} is read-only ({why}); {fix}") from None


def credentials_to_env(uri: str | None = None) -> str:
    """The tracking URI without its `user:password@` part, which moves to MLflow's own variables
    (MLFLOW_TRACKING_USERNAME / _PASSWORD, read by every MLflow client of this process): what is passed on
    to steps, stored by ZenML as step parameters and by Kubeflow as arguments, then holds no secret."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    u = tracking_uri(uri)
    parts = urlsplit(u)
    if not u.startswith(("http://", "https://")) or parts.password is None:
        return u
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username or "")
    os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    clean = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    if os.environ.get("MLFLOW_TRACKING_URI") == u:
        os.environ["MLFLOW_TRACKING_URI"] = clean
    return clean


def check_store(uri: str | None = None, write: bool = True, timeout: float | None = None) -> str:
    """One clear line before any work when the tracking store cannot serve the run: a server that does not
    answer within `timeout` seconds, a local store that cannot be written (when `write`). Returns the URI."""
    u = tracking_uri(uri)
    if u.startswith(("http://", "https://")):
        _probe_server(u, PROBE_SECONDS if timeout is None else timeout)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a server lost mid-run: seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    elif write and _sqlite_path(u) is not None:
        _probe_writable(_sqlite_path(u))
    return u


@contextmanager
def init_lock(folder: str | Path, name: str = ".rainmerge-store-init.lock") -> Iterator[None]:
    """Serialise the first use of a store between processes: two runs started together on fresh stores
    would both run the schema migrations (`duplicate column name: step`)."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def prepare_store(uri: str | None = None) -> str:
    """Create (or migrate) a local MLflow store under an inter-process lock; a no-op for a server."""
    import mlflow
    from mlflow import MlflowClient

    u = tracking_uri(uri)
    db = _sqlite_path(u)
    mlflow.set_tracking_uri(u)
    if db is None or _PREPARED.get(u):
        return u
    with init_lock(db.parent):
        MlflowClient(tracking_uri=u).search_experiments(max_results=1)
    _PREPARED[u] = True
    return u


_PREPARED: dict[str, bool] = {}


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
            out[key] = redact(v)[:500]
    return out


def experiment(name: str, uri: str | None = None):
    import mlflow

    u = prepare_store(uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        mlflow.create_experiment(name, artifact_location=_artifact_root(u),
                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    elif exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
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


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _count_records(path: Path) -> int:
    if path.suffix == ".jsonl":
        return sum(1 for line in path.read_text().splitlines() if line.strip())
    import json

    data = json.loads(path.read_text())
    return len(data) if isinstance(data, (list, dict)) else 1


def eval_datasets(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The held-out evaluation files present in data_dir: path, sha256, record count."""
    out = {}
    for name in EVAL_FILES:
        p = Path(data_dir) / name
        if p.is_file():
            out[name.split(".")[0]] = {"path": str(p.resolve()), "sha256": _sha256(p), "records": _count_records(p)}
    return out


def log_eval_datasets(data_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Evaluation files as MLflow datasets (digest = sha256 prefix) on this step's run and the parent run."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput, InputTag

    found = eval_datasets(data_dir)
    datasets = []
    for name, rec in found.items():
        df = pd.DataFrame([{"file": Path(rec["path"]).name, "records": float(rec["records"]), "sha256": rec["sha256"]}])
        ds = mlflow.data.from_pandas(df, source=rec["path"], name=name, digest=rec["sha256"][:36])
        mlflow.log_input(ds, context="evaluation")
        datasets.append(DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context", "evaluation")]))
    parent = parent_run_id()
    if parent and datasets:
        try:
            MlflowClient().log_inputs(parent, datasets=datasets)
        except Exception:  # the same digest logged twice (both evaluations) is fine to skip
            pass
    return found


def log_parent_metrics(metrics: dict[str, Any], prefix: str) -> None:
    """Key metrics on the pipeline's parent run as `<prefix>.<name>` (merged.*, lrm.*)."""
    from mlflow import MlflowClient

    parent = parent_run_id()
    if not parent:
        return
    c = MlflowClient()
    for k in KEY_METRICS:
        if isinstance(metrics.get(k), (int, float)):
            c.log_metric(parent, f"{prefix}.{k}", float(metrics[k]))


def parent_description(metrics: dict[str, Any], lrm_metrics: dict[str, Any], decision: dict[str, Any] | None = None,
                       params: dict[str, Any] | None = None, datasets: dict[str, dict[str, Any]] | None = None) -> str:
    """The markdown shown on the parent run: inputs, method, merged vs LRM metrics, gate verdict."""
    p = params or {}
    lines = ["## RAIN-Merging pipeline run", "",
             "Merges an instruction-tuned model's task vector into a reasoning model (LRM): Stage 1 projects "
             "the task vector off the LRM's thinking features (null space), Stage 2 scales attention heads "
             "by how much they attend to the instruction; the merged model is evaluated against the LRM.", ""]
    if p:
        lines += ["### Inputs and method", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | `{v}` |" for k, v in p.items() if v not in (None, "", "None")]
        lines.append("")
    keys = [k for k in KEY_METRICS if k in metrics or k in lrm_metrics]
    if keys:
        lines += ["### Metrics (held-out evaluation)", "", "| metric | merged | LRM | delta |", "|---|---:|---:|---:|"]
        for k in keys:
            m, b = metrics.get(k), lrm_metrics.get(k)
            d = f"{m - b:+.4f}" if isinstance(m, (int, float)) and isinstance(b, (int, float)) else ""
            f = lambda x: f"{x:.4f}" if isinstance(x, (int, float)) else "-"  # noqa: E731
            lines.append(f"| {k} | {f(m)} | {f(b)} | {d} |")
        lines.append("")
    if datasets:
        lines += ["### Evaluation sets", ""] + [f"- `{n}`: {r['records']} records, sha256 `{r['sha256'][:16]}…`"
                                                for n, r in datasets.items()] + [""]
    if decision:
        verdict = "PROMOTED to champion" if decision.get("promote") else "REJECTED (stays challenger)"
        lines += ["### Promotion gates", "", f"**{verdict}** — registered version {decision.get('version')}", ""]
        lines += [f"- {r}" for r in decision.get("reasons", [])]
    else:
        lines += ["### Promotion gates", "", "_pending (see the promote step)_"]
    return "\n".join(lines)


def log_parent_summary(metrics: dict[str, Any], lrm_metrics: dict[str, Any], decision: dict[str, Any] | None = None,
                       plot_path: str | Path | None = None, params: dict[str, Any] | None = None,
                       data_dir: str | Path | None = None) -> None:
    """The story on the pipeline's parent run: merged.* and lrm.* metrics, the markdown description
    (mlflow.note.content), the decision tag and the comparison plot. Call from inside a step_run."""
    from mlflow import MlflowClient

    parent = parent_run_id()
    if not parent:
        return
    log_parent_metrics(metrics, "merged")
    log_parent_metrics(lrm_metrics, "lrm")
    c = MlflowClient()
    datasets = eval_datasets(data_dir) if data_dir else None
    c.set_tag(parent, "mlflow.note.content", parent_description(metrics, lrm_metrics, decision, params, datasets))
    if decision is not None:
        c.set_tag(parent, "promotion.decision", "promoted" if decision.get("promote") else "rejected")
        if decision.get("version") is not None:
            c.set_tag(parent, "registered_version", str(decision["version"]))
    if plot_path and Path(plot_path).is_file():
        c.log_artifact(parent, str(plot_path))
