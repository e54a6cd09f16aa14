"""MLflow model registry: every merged version gets `challenger`; gates decide `champion`; lineage."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import PromotionGates

CHALLENGER, CHAMPION = "challenger", "champion"
PROMOTED, REJECTED = "promoted", "rejected"
MODEL_ARTIFACT = "merged_model"  # the run artifact path of the weights registered on a remote server
log = logging.getLogger("rainmerge")


def registered_name(registered_model: str, method: str) -> str:
    """The RAIN model keeps the configured name; a baseline (`needs_stages` False) registers under
    `<name>-<method>`, so a baseline A/B run never moves the RAIN model's `challenger` or `champion`."""
    from ..methods import METHODS

    return registered_model if METHODS[method].needs_stages else f"{registered_model}-{method}"


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    version: str | None = None
    previous_champion: str | None = None
    model: str | None = None
    gates_decision: str | None = None
    forced: bool = False
    operator: str | None = None
    reason: str | None = None
    time: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide(merged: dict[str, float], lrm: dict[str, float], champion: dict[str, float] | None,
           gates: PromotionGates, champion_version: str | None = None) -> Decision:
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
        who = f"champion v{champion_version}" if champion_version else "champion"
        check(merged[m] >= champion[m], f"{m} {merged[m]:.4f} >= {who} {champion[m]:.4f}")
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
    """Register the merged folder, tagged, alias `challenger`. The version source is one the tracking
    server accepts: an object-store URI as is; a local folder by reference (`file://`) only when the
    registry itself is local (SQLite/file store); against a remote server the folder is uploaded once
    as artifacts of `run_id` through the server's proxied artifact store and registered as `runs:/`
    (a remote server refuses local paths: other clients could not read them)."""
    from .tracking import tracking_uri

    c = _client(uri)
    try:
        c.get_registered_model(name)
    except Exception:
        c.create_registered_model(name, description="RAIN-Merging outputs (rainmerge)")
    if "://" in model_dir and not model_dir.startswith("file://"):
        source = model_dir
    elif not tracking_uri(uri).startswith(("http://", "https://", "databricks")):
        source = model_dir if model_dir.startswith("file://") else f"file://{model_dir}"
    else:
        if run_id is None:
            raise ValueError("registering on a remote MLflow server needs the run that carries the weights")
        c.log_artifacts(run_id, model_dir.removeprefix("file://"), MODEL_ARTIFACT)
        source = f"runs:/{run_id}/{MODEL_ARTIFACT}"
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
    """Log the decision on the version either way (with the audit fields); move `champion` only when
    it passed. Callers that compare against the champion go through `promote_version` (locked)."""
    c = _client(uri)
    decision.model = decision.model or name
    decision.gates_decision = decision.gates_decision or (PROMOTED if decision.promote else REJECTED)
    decision.time = decision.time or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    tags = {"promotion.decision": PROMOTED if decision.promote else REJECTED,
            "promotion.gates_decision": decision.gates_decision,
            "promotion.forced": str(decision.forced).lower(),
            "promotion.reasons": json.dumps(decision.reasons), "promotion.time": decision.time,
            "promotion.previous_champion": str(decision.previous_champion or "")}
    if decision.operator:
        tags["promotion.operator"] = decision.operator
    if decision.reason:
        tags["promotion.reason"] = decision.reason[:5000]
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, v)
    if decision.promote:
        c.set_registered_model_alias(name, CHAMPION, version)


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _lock_dir(uri: str) -> Path | None:
    """Where promotion locks live: next to the store for sqlite and file stores; None for servers."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / ".promotion-locks"
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://")) / ".promotion-locks"
    if "://" not in uri:
        return Path(uri) / ".promotion-locks"
    return None


@contextlib.contextmanager
def promotion_lock(name: str, uri: str | None = None) -> Iterator[None]:
    """One promotion at a time per registered model: an in-process lock plus an fcntl file lock beside
    a sqlite/file store (covers every process on this machine sharing the store).

    Limitation: for a remote tracking server (http/https/databricks) there is no shared filesystem, so
    only the in-process lock and the compare-and-set re-read in `promote_version` protect the move;
    two machines promoting at the very same instant can still race in the window between the re-read
    and the alias write."""
    from .tracking import tracking_uri

    u = tracking_uri(uri)
    key = f"{u}::{name}"
    with _THREAD_LOCKS_GUARD:
        tl = _THREAD_LOCKS.setdefault(key, threading.Lock())
    with tl:
        d = _lock_dir(u)
        if d is None:
            log.warning("promotion lock: %s is a remote store; only compare-and-set protects champion", u)
            yield
            return
        import fcntl

        d.mkdir(parents=True, exist_ok=True)
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        with open(d / f"{safe}.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def promote_version(name: str, version: str, merged: dict[str, float], lrm: dict[str, float],
                    gates: PromotionGates, uri: str | None = None, force: bool = False,
                    operator: str | None = None, reason: str | None = None, retries: int = 5) -> Decision:
    """Compare-and-set promotion: read the champion, decide, re-read it right before moving the alias
    (retrying the decision when it changed), all under `promotion_lock`, so concurrent candidates are
    compared with each other."""
    version = str(version)
    with promotion_lock(name, uri):
        for _ in range(retries + 1):
            prev, champ = champion(name, uri)
            d = decide(merged, lrm, champ if prev != version else None, gates,
                       champion_version=prev if prev != version else None)
            now, _m = champion(name, uri)
            if now == prev:
                break
            log.info("champion of %s moved %s -> %s during the decision; deciding again", name, prev, now)
        else:
            from ..errors import RainMergeError

            raise RainMergeError(f"champion of '{name}' kept changing; promotion of v{version} not recorded")
        d.version, d.previous_champion, d.model = version, prev, name
        d.gates_decision = PROMOTED if d.promote else REJECTED
        if force:
            d.forced, d.promote = True, True
            d.operator, d.reason = operator, reason
        elif operator:
            d.operator = operator
        record_decision(name, version, d, uri)
    return d


def audit(name: str, uri: str | None = None) -> dict[str, Any]:
    """Every version with its aliases, decision and audit fields; flags a `champion` (or any version)
    whose alias has no recorded "promoted" decision (e.g. an alias moved in the MLflow UI)."""
    from ..errors import RainMergeError
    from .tracking import tracking_uri

    c = _client(uri)
    try:
        rm = c.get_registered_model(name)
    except Exception:
        raise RainMergeError(f"no registered model '{name}' in {tracking_uri(uri)}") from None
    by_version: dict[str, list[str]] = {}
    for a, v in (rm.aliases or {}).items():
        by_version.setdefault(str(v), []).append(a)
    rows, flags = [], []
    for mv in sorted(c.search_model_versions(f"name = '{name}'"), key=lambda m: int(m.version)):
        t = dict(mv.tags)
        v = str(mv.version)
        row = {"version": v, "aliases": sorted(by_version.get(v, [])), "decision": t.get("promotion.decision"),
               "gates_decision": t.get("promotion.gates_decision"), "forced": t.get("promotion.forced") == "true",
               "operator": t.get("promotion.operator"), "reason": t.get("promotion.reason"),
               "time": t.get("promotion.time"), "method": t.get("method")}
        f = champion_flag(row["aliases"], t)
        if f:
            row["flag"] = f
            flags.append(f"v{v}: {f}")
        rows.append(row)
    return {"model": name, "versions": rows, "flags": flags}


def champion_flag(aliases: list[str], tags: dict[str, str]) -> str | None:
    if CHAMPION in aliases and tags.get("promotion.decision") != PROMOTED:
        return (f"holds '{CHAMPION}' without a recorded promoted decision "
                f"(decision: {tags.get('promotion.decision') or 'none'}); alias moved outside rainmerge?")
    return None


def format_audit(info: dict[str, Any]) -> str:
    lines = [f"{info['model']}: {len(info['versions'])} version(s)"]
    for r in info["versions"]:
        forced = f" FORCED by {r['operator']} at {r['time']}: {r['reason']}" if r["forced"] else ""
        lines.append(f"  v{r['version']:<4} aliases={','.join(r['aliases']) or '-':<22} "
                     f"decision={r['decision'] or '-'} gates={r['gates_decision'] or '-'}{forced}")
        if r.get("flag"):
            lines.append(f"    FLAG {r['flag']}")
    lines += [f"FLAGGED {f}" for f in info["flags"]] or ["no flags"]
    return "\n".join(lines)


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
    flag = champion_flag(aliases, dict(mv.tags))
    out["flags"] = [flag] if flag else []
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
        rev, commit = t.get(f"input.{role}.revision"), t.get(f"input.{role}.commit")
        pinned = f"revision={rev} commit={commit}" if commit not in (None, "", "None") else "local folder"
        lines.append(f"    {role:<9} {t.get(f'input.{role}')}  {pinned} "
                     f"weights_sha256={t.get(f'input.{role}.weights_sha256')}")
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
    lines.append(f"  promotion: {t.get('promotion.decision')}  gates: {t.get('promotion.gates_decision')}")
    if t.get("promotion.forced") == "true":
        lines.append(f"    forced by {t.get('promotion.operator')} at {t.get('promotion.time')}: "
                     f"{t.get('promotion.reason')}")
    for f in info.get("flags", []):
        lines.append(f"  FLAG {f}")
    for r in json.loads(t.get("promotion.reasons", "[]")):
        lines.append(f"    {r}")
    return "\n".join(lines)


def select_candidate(candidates: list[dict[str, Any]], lrm: dict[str, float], gates: PromotionGates
                     ) -> tuple[int, list[dict[str, Any]]]:
    """The strength sweep's choice: the best candidate that passes the gates (champion comparison
    left to promotion), ranked by the gate metric, then IF instruction strict, then the lowest L_think;
    when none passes, the best by the same order (promotion will then record why it is rejected).
    `candidates` are {"strength", "metrics"}; returns the index and every candidate's verdict."""
    table = []
    for i, c in enumerate(candidates):
        d = decide(c["metrics"], lrm, None, gates.model_copy(update={"require_beats_champion": False}))
        table.append({"index": i, "strength": c["strength"], "passes": d.promote, "reasons": d.reasons,
                      **{k: c["metrics"].get(k) for k in (gates.metric, "if_inst_strict", "think_well_formed",
                                                         "reasoning_acc", "l_think")}})

    def rank(row: dict[str, Any]) -> tuple:
        return (row["passes"], row.get(gates.metric) or 0.0, row.get("if_inst_strict") or 0.0,
                -(row.get("l_think") or 0.0))

    best = max(table, key=rank)
    for row in table:
        row["selected"] = row is best
    return best["index"], table
