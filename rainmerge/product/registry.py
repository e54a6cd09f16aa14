"""MLflow model registry: every merged version gets `challenger`; gates decide `champion`; lineage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import RainMergeError
from . import records
from .pipeline_config import PromotionGates
from .gates import Decision, decide  # noqa: F401  (the one decision function and its record)
from .records import CHALLENGER, CHAMPION, PROMOTED, REJECTED, _client  # noqa: F401 - the registry's names

INPUTS_SHA = "decision_inputs.sha256"
MODEL_ARTIFACT = "merged_model"  # the run artifact path of the weights registered on a remote server
log = logging.getLogger("rainmerge")


def registered_name(registered_model: str, method: str) -> str:
    """The RAIN model keeps the configured name; a baseline (`needs_stages` False) registers under
    `<name>-<method>`, so a baseline A/B run never moves the RAIN model's `challenger` or `champion`."""
    from ..method_catalog import needs_stages

    return registered_model if needs_stages(method) else f"{registered_model}-{method}"


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def metric_tags(metrics: dict[str, Any], lrm_metrics: dict[str, Any]) -> dict[str, str]:
    """Every numeric metric as `metric.<k>` / `lrm_metric.<k>`, written with repr: a float's repr reads
    back as the very same float, so the gates compare what evaluation measured (no rounding)."""
    out = {f"metric.{k}": repr(float(v)) for k, v in metrics.items() if _numeric(v)}
    return out | {f"lrm_metric.{k}": repr(float(v)) for k, v in lrm_metrics.items() if _numeric(v)}


def tag_metrics(tags: dict[str, str], prefix: str = "metric.") -> dict[str, float]:
    """Metrics stored as `<prefix><name>` tags on a model version; a non-numeric value is left out
    (and so reported as missing by the gates' metric check), never a crash."""
    out = {}
    for k, v in tags.items():
        if k.startswith(prefix):
            try:
                out[k.removeprefix(prefix)] = float(v)
            except (TypeError, ValueError):
                log.warning("tag %s=%r is not a number; ignored", k, str(v)[:40])
    return {k: v for k, v in out.items() if math.isfinite(v)}


def decision_inputs_digest(metrics: dict[str, Any], lrm_metrics: dict[str, Any], gates: PromotionGates) -> str:
    """What a gate verdict depends on besides the champion: the exact quality metrics (the key metrics,
    the gate's own and the sample counts; never a timing, which differs between identical runs) and
    the gate settings."""
    from .tracking import KEY_METRICS

    def keep(k: str) -> bool:
        return k in KEY_METRICS or k == gates.metric or k.startswith("n_")

    doc = {"metrics": {k: v for k, v in metric_tags(metrics, lrm_metrics).items() if keep(k.split(".", 1)[1])},
           "gates": gates.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _blocked(c: Any, name: str, version: str, what: str, detail: str, event: str = "blocked") -> RainMergeError:
    records.append(c, name, version, {"event": event, "what": what, "why": detail})
    return RainMergeError(f"{name} v{version}: {what} blocked: {detail}")


def verify_version(name: str, version: str, uri: str | None = None, action: str | None = None) -> dict[str, Any]:
    """Re-hash a registered version's weights against its recorded digests. With `action` (promotion,
    push, re-registration), a change or a missing folder blocks it: recorded on the version, then raised."""
    from .tracking import tracking_uri

    c = _client(uri)
    try:
        mv = c.get_model_version(name, str(version))
    except Exception:
        raise RainMergeError(f"registered model '{name}' has no version {version} in {tracking_uri(uri)}") from None
    res = records.verify(mv.source, dict(mv.tags))
    if action and res["status"] in ("changed", "missing"):
        raise _blocked(c, name, str(version), action, res["detail"] + "; re-run the pipeline with --no-cache to "
                       "rebuild the weights, or restore the registered folder")
    return res


def find_same(name: str, weights_sha256: str, inputs_sha256: str, uri: str | None = None) -> str | None:
    """The existing version with these weights (by digest) and these decision inputs, if any."""
    c = _client(uri)
    try:
        c.get_registered_model(name)
    except Exception:
        return None
    for mv in sorted(c.search_model_versions(f"name = '{name}'"), key=lambda m: int(m.version)):
        t = mv.tags or {}
        if t.get(records.WEIGHTS_SHA) == weights_sha256 and t.get(INPUTS_SHA) == inputs_sha256:
            return str(mv.version)
    return None


def register(name: str, model_dir: str, run_id: str | None, tags: dict[str, str], uri: str | None = None) -> str:
    """Register the merged folder, tagged, alias `challenger`; the history starts with a `registered` event.
    The version source is one the tracking server accepts: an object-store URI as is; a local folder by
    reference (`file://`) only when the registry itself is local (SQLite/file store); against a remote
    server the folder is uploaded once as artifacts of `run_id` through the server's proxied artifact
    store and registered as `runs:/` (a remote server refuses local paths: other clients could not read them)."""
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
    mv = c.create_model_version(name, source=source, run_id=run_id, tags={k: str(v) for k, v in tags.items()})
    version = str(mv.version)
    records.append(c, name, version, {"event": "registered", "run": tags.get("zenml.run_name") or run_id,
                                      "weights_sha256": tags.get(records.WEIGHTS_SHA)})
    records.set_alias(c, name, CHALLENGER, version)
    return version


def register_or_link(name: str, model_dir: str, run_id: str | None, tags: dict[str, str],
                     uri: str | None = None) -> tuple[str, bool]:
    """Idempotent on content: when a version already holds the same weights (digest) with the same
    decision inputs, verify its weights, link to it (history event `linked`, alias `challenger`) and
    return (version, True); otherwise register a new version: (version, False)."""
    same = None
    if tags.get(records.WEIGHTS_SHA) and tags.get(INPUTS_SHA):
        same = find_same(name, tags[records.WEIGHTS_SHA], tags[INPUTS_SHA], uri)
    if same is None:
        return register(name, model_dir, run_id, tags, uri), False
    verify_version(name, same, uri, action="re-registration")
    c = _client(uri)
    records.append(c, name, same, {"event": "linked", "run": tags.get("zenml.run_name") or run_id,
                                   "why": "same weights sha256 and decision inputs; no new version"})
    records.set_alias(c, name, CHALLENGER, same)
    log.info("%s: the same weights (sha256 %s) and decision inputs are already v%s; linked to it, no new version",
             name, tags[records.WEIGHTS_SHA][:16], same)
    return same, True


def champion(name: str, uri: str | None = None) -> tuple[str | None, dict[str, float] | None]:
    """(version, its exact metrics) of the current champion; (None, None) when there is none. A champion
    whose metrics are missing comes back with an empty dict, never as "no champion"."""
    c = _client(uri)
    try:
        mv = c.get_model_version_by_alias(name, CHAMPION)
    except Exception:
        return None, None
    return str(mv.version), tag_metrics(mv.tags)


def record_decision(name: str, version: str, decision: Decision, uri: str | None = None) -> None:
    """Append the decision to the version's history (never replacing an earlier one), mirror the latest
    in the promotion.* tags, and move `champion` only when it passed. Callers that compare against the
    champion go through `promote_version` (locked)."""
    c = _client(uri)
    decision.model = decision.model or name
    decision.gates_decision = decision.gates_decision or (PROMOTED if decision.promote else REJECTED)
    decision.time = decision.time or records.now()
    latest = PROMOTED if decision.promote else REJECTED
    tags = {"promotion.decision": latest, "promotion.gates_decision": decision.gates_decision,
            "promotion.forced": str(decision.forced).lower(),
            "promotion.reasons": json.dumps(decision.reasons), "promotion.time": decision.time,
            "promotion.previous_champion": str(decision.previous_champion or "")}
    if decision.operator:
        tags["promotion.operator"] = decision.operator
    if decision.reason:
        tags["promotion.reason"] = decision.reason[:5000]
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, v)
    kept = not decision.promote and decision.previous_champion == str(version)
    records.append(c, name, version, {
        "event": "decision", "decision": latest, "promote": decision.promote, "gates_decision": decision.gates_decision,
        "forced": decision.forced, "who": records.who(decision.operator), "time": decision.time,
        "why": decision.reason, "reasons": decision.reasons, "previous_champion": decision.previous_champion,
        "champion_after": str(version) if decision.promote else decision.previous_champion,
        "note": "re-check of the current champion: champion kept (a gate re-check never demotes)" if kept else None})
    if decision.promote:
        records.set_alias(c, name, CHAMPION, version)


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


# what the gates read from each side; a name missing here is an error before anything is recorded
NEEDED = {"merged": ("think_well_formed", "reasoning_acc"), "lrm": ("reasoning_acc",)}


def check_metrics(name: str, version: str, merged: dict[str, float], lrm: dict[str, float],
                  gates: PromotionGates) -> None:
    """A misspelt `promotion.metric` (or an evaluation that lacks a gate's metric) is a clear error
    before any verdict is written, so no half-recorded state is left for audit to misread."""
    for side, got in (("merged", merged), ("lrm", lrm)):
        missing = [k for k in (gates.metric, *NEEDED[side]) if k not in got]
        if missing:
            known = ", ".join(sorted(got)) or "none"
            raise RainMergeError(f"{name} v{version}: no numeric {side} metric {', '.join(map(repr, missing))} "
                                 f"recorded (recorded: {known}); check promotion.metric in the config")


def _against(name: str, version: str, prev: str | None, champ: dict[str, float] | None, gates: PromotionGates,
             merged: dict[str, float], lrm: dict[str, float], force: bool, uri: str | None) -> Decision:
    """One gate verdict. No champion -> compared with none; this version is the champion -> a re-check
    of the gates alone; a champion without the gate metric -> an error to resolve (forced: recorded FAIL)."""
    if prev is None or prev == version:
        g = gates.model_copy(update={"require_beats_champion": False}) if prev == version else gates
        d = decide(merged, lrm, None, g)
        if prev == version:
            d.reasons.append(f"PASS v{version} is the current champion (re-check of the gates)")
        return d
    if gates.require_beats_champion and gates.metric not in (champ or {}):
        msg = (f"champion v{prev} of '{name}' has no numeric '{gates.metric}' recorded, so v{version} cannot be "
               f"compared with it; re-register the champion's evaluation, or replace it with "
               f"`rainmerge promote {name} <version> --force --reason ...`")
        if not force:
            raise _blocked(_client(uri), name, version, "promotion", msg)
        d = decide(merged, lrm, None, gates.model_copy(update={"require_beats_champion": False}))
        d.promote = False
        d.reasons.append(f"FAIL champion v{prev} has no recorded '{gates.metric}' (error to resolve)")
        return d
    return decide(merged, lrm, champ, gates, champion_version=prev)


def promote_version(name: str, version: str, merged: dict[str, float] | None = None,
                    lrm: dict[str, float] | None = None, gates: PromotionGates | None = None,
                    uri: str | None = None, force: bool = False, operator: str | None = None,
                    reason: str | None = None, retries: int = 5, verified: bool = False) -> Decision:
    """Compare-and-set promotion: verify the weights, read the champion, decide, re-read it right before
    moving the alias (retrying the decision when it changed), all under `promotion_lock`, so concurrent
    candidates are compared with each other. Metrics left None are read from the version's exact
    metric tags: the pipeline and `rainmerge promote` pass None and so decide on the same values.
    `verified`: the caller has just re-hashed the registered folder (skips a second pass)."""
    version, gates = str(version), gates or PromotionGates()
    with promotion_lock(name, uri):
        if not verified:  # the pipeline has just checked these very files against the merge's digests
            verify_version(name, version, uri, action="forced promotion" if force else "promotion")
        tags = dict(_client(uri).get_model_version(name, version).tags)
        merged = tag_metrics(tags) if merged is None else merged
        lrm = tag_metrics(tags, "lrm_metric.") if lrm is None else lrm
        try:
            check_metrics(name, version, merged, lrm, gates)
            missing = None
        except RainMergeError as exc:
            if not force:
                raise
            missing = Decision(False, [f"FAIL {exc}"])  # forced anyway: the record says what was missing
        for _ in range(retries + 1):
            prev, champ = champion(name, uri)
            d = missing or _against(name, version, prev, champ, gates, merged, lrm, force, uri)
            now, _m = champion(name, uri)
            if now == prev:
                break
            log.info("champion of %s moved %s -> %s during the decision; deciding again", name, prev, now)
        else:
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


# the auditor's reads live in lineage.py; re-exported so `registry.lineage` / `registry.audit` keep working
from .lineage import audit, champion_flag, format_audit, format_lineage, lineage  # noqa: E402,F401
