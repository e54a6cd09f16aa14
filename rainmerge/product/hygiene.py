"""Crash hygiene: runs left RUNNING by a killed process are marked FAILED.

Every MLflow run rainmerge opens (tracking.step_run) carries `rainmerge.pid` and `rainmerge.host`. At the
start of a pipeline run, `mark_dead_runs` finds RUNNING MLflow runs whose process is gone on this host and
terminates them as FAILED (tag `rainmerge.cleanup` = "process died"); ZenML pipeline runs still
running/initializing whose MLflow runs name a dead pid are marked failed too (ZenML records no pid).
`install_termination_handler` marks this process's own RUNNING runs FAILED on SIGTERM or at exit.

Runs recorded on another host (e.g. Kubernetes pods) are never touched: a pid means nothing elsewhere.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
from typing import Any

from .tracking import HOST_TAG, PID_TAG, process_tags, tracking_uri  # noqa: F401  (tags are part of this API)

log = logging.getLogger("rainmerge")

CLEANUP_TAG = "rainmerge.cleanup"
DIED = "process died"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _dead_here(tags: dict[str, str]) -> bool:
    pid = tags.get(PID_TAG)
    if not pid or tags.get(HOST_TAG) != socket.gethostname():
        return False
    try:
        return int(pid) != os.getpid() and not pid_alive(int(pid))
    except ValueError:
        return False


def _client(uri: str | None):
    import mlflow
    from mlflow import MlflowClient


    from .tracking import prepare_store

    mlflow.set_tracking_uri(prepare_store(uri))
    return MlflowClient()


def _tagged_runs(c: Any, extra_filter: str = "") -> list[Any]:
    from mlflow.entities import ViewType

    exps = [e.experiment_id for e in c.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if not exps:
        return []
    flt = f"tags.`{PID_TAG}` != ''" + (f" and {extra_filter}" if extra_filter else "")
    out, token = [], None
    while True:
        page = c.search_runs(exps, filter_string=flt, max_results=1000, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def mark_dead_mlflow_runs(uri: str | None = None) -> tuple[int, set[str]]:
    """RUNNING runs of a dead process on this host -> FAILED. Returns (count, their ZenML run ids)."""
    c = _client(uri)
    n, zids = 0, set()
    for r in _tagged_runs(c, "attributes.status = 'RUNNING'"):
        tags = r.data.tags
        if not _dead_here(tags):
            continue
        c.set_tag(r.info.run_id, CLEANUP_TAG, DIED)
        c.set_terminated(r.info.run_id, "FAILED")
        n += 1
        if tags.get("zenml.run_id"):
            zids.add(tags["zenml.run_id"])
    return n, zids


def mark_dead_zenml_runs(dead_zenml_ids: set[str], uri: str | None = None, current: str | None = None) -> int:
    """ZenML runs still running/initializing whose process is dead: their id is on a dead MLflow run, or on
    any MLflow run (even a finished step) whose recorded pid is dead on this host."""
    try:
        from zenml.client import Client
        from zenml.enums import ExecutionStatus
        from zenml.models import PipelineRunUpdate
    except ImportError:
        return 0
    client = Client()
    active = []
    for st in ("running", "initializing"):
        try:
            active += list(client.list_pipeline_runs(status=st, size=1000).items)
        except Exception as exc:  # an unreachable store must not stop the new run
            log.warning("crash hygiene: cannot list ZenML runs (%s)", str(exc)[:200])
            return 0
    if not active:
        return 0
    ids = {str(r.id) for r in active} - {str(current)} - dead_zenml_ids
    if ids:  # the process of a run killed between steps: its MLflow runs are finished but name the pid
        c = _client(uri)
        for r in _tagged_runs(c):
            z = r.data.tags.get("zenml.run_id")
            if z in ids and _dead_here(r.data.tags):
                dead_zenml_ids.add(z)
    n = 0
    for run in active:
        if str(run.id) not in dead_zenml_ids or str(run.id) == str(current):
            continue
        try:
            client.zen_store.update_run(run.id, PipelineRunUpdate(status=ExecutionStatus.FAILED,
                                                                  status_reason=f"rainmerge: {DIED}"))
            _fail_steps(client, run.id)
            n += 1
        except Exception as exc:
            log.warning("crash hygiene: cannot mark ZenML run %s failed (%s)", run.id, str(exc)[:200])
    return n


def _fail_steps(client: Any, run_id: Any) -> None:
    from zenml.enums import ExecutionStatus
    from zenml.models import StepRunUpdate

    for step in client.list_run_steps(pipeline_run_id=run_id, size=1000).items:
        if str(step.status).split(".")[-1].lower() in ("running", "initializing"):
            client.zen_store.update_run_step(step.id, StepRunUpdate(status=ExecutionStatus.FAILED))


def mark_dead_runs(uri: str | None = None, current_zenml_run: str | None = None,
                   echo: bool = True) -> dict[str, int]:
    """Both stores; prints the counts when anything was cleaned up."""
    n_ml, zids = mark_dead_mlflow_runs(uri)
    n_z = mark_dead_zenml_runs(zids, uri, current_zenml_run)
    if echo and (n_ml or n_z):
        print(f"rainmerge: marked {n_ml} MLflow run(s) and {n_z} ZenML run(s) of dead processes as FAILED")
    return {"mlflow": n_ml, "zenml": n_z}


def mark_own_runs_failed(uri: str | None = None, reason: str = "terminated") -> int:
    """This process's MLflow runs still RUNNING -> FAILED (the active-run stack first)."""
    n = 0
    try:
        import mlflow

        c = _client(uri)
        me = process_tags()
        for r in _tagged_runs(c, f"attributes.status = 'RUNNING' and tags.`{PID_TAG}` = '{me[PID_TAG]}'"):
            if r.data.tags.get(HOST_TAG) == me[HOST_TAG]:
                c.set_tag(r.info.run_id, CLEANUP_TAG, reason)
                c.set_terminated(r.info.run_id, "FAILED")
                n += 1
        while mlflow.active_run():
            mlflow.end_run("FAILED")
    except Exception as exc:  # last-chance handler: never raise
        log.warning("crash hygiene: could not mark own runs failed (%s)", str(exc)[:200])
    return n


_INSTALLED: dict[str, Any] = {}


def install_termination_handler(uri: str | None = None) -> None:
    """SIGTERM (and interpreter exit) mark this process's RUNNING MLflow runs FAILED. Idempotent."""
    if _INSTALLED:
        return
    _INSTALLED["uri"] = uri
    atexit.register(lambda: mark_own_runs_failed(_INSTALLED.get("uri"), "process exited with the run open"))
    try:
        prev = signal.getsignal(signal.SIGTERM)
    except ValueError:
        return

    def on_term(signum: int, frame: Any) -> None:
        mark_own_runs_failed(_INSTALLED.get("uri"), "SIGTERM")
        if callable(prev) and prev not in (signal.SIG_IGN, signal.SIG_DFL):
            prev(signum, frame)
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        pass
