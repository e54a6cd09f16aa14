"""What an auditor reads: the lineage of one registered version and the audit of a registered model.
Both re-hash the registered weights against their recorded digests and compare every alias with the
position rainmerge recorded for it, so a flipped byte or an alias moved by hand is flagged."""

from __future__ import annotations

import json
from typing import Any

from ..errors import RainMergeError
from . import records
from .records import CHALLENGER, CHAMPION, PROMOTED, _client

MANAGED = (CHALLENGER, CHAMPION)


def champion_flag(aliases: list[str], tags: dict[str, str]) -> str | None:
    """Legacy check (models registered before alias positions were recorded): a champion whose history
    holds no promoted decision."""
    if CHAMPION not in aliases:
        return None
    ev = records.history(tags)
    if any(e.get("event") == "decision" and e.get("promote") for e in ev) or tags.get("promotion.decision") == PROMOTED:
        return None
    return (f"holds '{CHAMPION}' without a recorded promoted decision "
            f"(decision: {tags.get('promotion.decision') or 'none'}); alias moved outside rainmerge?")


def _alias_flags(aliases: dict[str, str], model_tags: dict[str, str], version_tags: dict[str, dict[str, str]],
                 only: str | None = None) -> list[str]:
    """Every alias position the registry did not record (moved, added or removed outside rainmerge);
    with `only`, those involving that version."""
    rec = records.recorded_aliases(model_tags)
    flags = []
    for alias in sorted(set(aliases) | set(rec)):
        actual, want = aliases.get(alias), rec.get(alias)
        if only is not None and only not in (actual, want):
            continue
        if want is not None and actual != want:
            where = f"is on v{actual}" if actual is not None else "was removed"
            flags.append(f"alias '{alias}' {where}, but rainmerge recorded it on v{want}; moved outside rainmerge?")
        elif want is None and alias not in MANAGED:
            flags.append(f"alias '{alias}' on v{actual} was not set by rainmerge")
        elif want is None and actual is not None:  # registered before positions were recorded
            f = champion_flag([alias], version_tags.get(actual, {}))
            if f:
                flags.append(f"v{actual} {f}")
    return flags


def _weights_flag(w: dict[str, Any]) -> str | None:
    return f"weights {w['status']}: {w['detail']}" if w["status"] in ("changed", "missing") else None


def _notes(v: str, aliases: list[str], tags: dict[str, str], w: dict[str, Any]) -> list[str]:
    notes = []
    if w["status"] in ("unrecorded", "remote"):
        notes.append(f"v{v}: weights not re-hashed ({w['detail']})")
    ev = [e for e in records.history(tags) if e.get("event") == "decision"]
    if CHAMPION in aliases and ev and not ev[-1].get("promote"):
        notes.append(f"v{v}: champion; its latest gate re-check ({ev[-1].get('time')}, {ev[-1].get('who')}) "
                     "rejected it and champion was kept (recorded)")
    hub = [e for e in records.history(tags) if e.get("event") in ("pushed", "push_failed")]
    if hub and hub[-1]["event"] == "push_failed":
        notes.append(f"v{v}: last Hub push failed ({hub[-1].get('why')})")
    return notes


def audit(name: str, uri: str | None = None) -> dict[str, Any]:
    """Every version with its aliases, weights check, decision history and audit fields. Flags: alias
    positions rainmerge did not record, and registered weights that differ from their digest."""
    from .tracking import tracking_uri

    c = _client(uri)
    try:
        rm = c.get_registered_model(name)
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" not in str(getattr(exc, "error_code", "")) and "not found" not in str(exc).lower():
            raise RainMergeError(f"cannot read registered model '{name}' from {tracking_uri(uri)}: "
                                 f"{type(exc).__name__}") from None
        raise RainMergeError(f"no registered model '{name}' in {tracking_uri(uri)}") from None
    aliases = {a: str(v) for a, v in (rm.aliases or {}).items()}
    by_version: dict[str, list[str]] = {}
    for a, v in aliases.items():
        by_version.setdefault(v, []).append(a)
    versions = sorted(c.search_model_versions(f"name = '{name}'"), key=lambda m: int(m.version))
    vtags = {str(mv.version): dict(mv.tags) for mv in versions}
    rows, flags, notes = [], _alias_flags(aliases, dict(rm.tags or {}), vtags), []
    for mv in versions:
        v, t = str(mv.version), vtags[str(mv.version)]
        w = records.verify(mv.source, t)
        row = {"version": v, "aliases": sorted(by_version.get(v, [])), "decision": t.get("promotion.decision"),
               "gates_decision": t.get("promotion.gates_decision"), "forced": t.get("promotion.forced") == "true",
               "operator": t.get("promotion.operator"), "reason": t.get("promotion.reason"),
               "time": t.get("promotion.time"), "method": t.get("method"), "weights": w,
               "history": records.history(t)}
        if (f := _weights_flag(w)):
            row["flag"] = f
            flags.append(f"v{v}: {f}")
        notes += _notes(v, row["aliases"], t, w)
        rows.append(row)
    return {"model": name, "versions": rows, "flags": flags, "notes": notes}


def format_audit(info: dict[str, Any]) -> str:
    lines = [f"{info['model']}: {len(info['versions'])} version(s)"]
    for r in info["versions"]:
        forced = f" FORCED by {r['operator']} at {r['time']}: {r['reason']}" if r["forced"] else ""
        lines.append(f"  v{r['version']:<4} aliases={','.join(r['aliases']) or '-':<22} "
                     f"decision={r['decision'] or '-'} gates={r['gates_decision'] or '-'} "
                     f"weights={r['weights']['status']} events={len(r['history'])}{forced}")
        if r.get("flag"):
            lines.append(f"    FLAG {r['flag']}")
    lines += [f"note: {n}" for n in info.get("notes", [])]
    lines += [f"FLAGGED {f}" for f in info["flags"]] or ["no flags"]
    return "\n".join(lines)


def _eval_sets(c: Any, tags: dict[str, str], run: Any) -> dict[str, str]:
    """Evaluation sets' digests: the version's eval_set.* tags, else the parent run's dataset inputs."""
    out = {k.removeprefix("eval_set."): v for k, v in tags.items() if k.startswith("eval_set.")}
    for di in (getattr(getattr(run, "inputs", None), "dataset_inputs", None) or []) if not out else []:
        ctx = {t.key: t.value for t in di.tags}.get("mlflow.data.context")
        if ctx == "evaluation":
            out[di.dataset.name] = di.dataset.digest
    return out


def _steps(c: Any, run: Any, parent: str, merge_run: str | None) -> list[dict[str, Any]]:
    """The parent run's step runs; the merge that produced the registered weights is marked (and added
    when it ran in an earlier, cached pipeline run)."""
    children = c.search_runs([run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    steps = []
    for ch in sorted(children, key=lambda r: r.info.start_time):
        steps.append({"step": ch.info.run_name, "zenml_step": ch.data.tags.get("zenml.step"),
                      "mlflow_run_id": ch.info.run_id, "zenml_step_run_id": ch.data.tags.get("zenml.step_run_id"),
                      "params": dict(ch.data.params), "metrics": dict(ch.data.metrics),
                      "produced_registered_weights": bool(merge_run) and ch.info.run_id == merge_run})
    if merge_run and not any(s["produced_registered_weights"] for s in steps):
        try:
            mr = c.get_run(merge_run)
            steps.append({"step": mr.info.run_name, "zenml_step": mr.data.tags.get("zenml.step"),
                          "mlflow_run_id": merge_run, "zenml_step_run_id": mr.data.tags.get("zenml.step_run_id"),
                          "params": dict(mr.data.params), "metrics": dict(mr.data.metrics),
                          "produced_registered_weights": True, "earlier_run": True})
        except Exception:  # noqa: BLE001 - the merge's run was deleted; the tags still name it
            pass
    return steps


def lineage(name: str, version: str, uri: str | None = None) -> dict[str, Any]:
    """Everything an auditor needs about one registered version, from MLflow (and ZenML when reachable):
    inputs, the merge that produced the weights, weights digests re-checked now, config, evaluation
    sets, metrics and the whole decision history."""
    from .tracking import tracking_uri

    c = _client(uri)
    try:
        mv = c.get_model_version(name, version)
    except Exception:
        raise RainMergeError(f"registered model '{name}' has no version {version} in {tracking_uri(uri)} "
                             "(set MLFLOW_TRACKING_URI or --tracking-uri to the store the pipeline used)") from None
    rm = c.get_registered_model(name)
    tags = dict(mv.tags)
    aliases = sorted(a for a, v in (rm.aliases or {}).items() if str(v) == str(version))
    weights = records.verify(mv.source, tags) | {"files": json.loads(tags.get(records.WEIGHTS_FILES) or "{}")}
    merge = {k.removeprefix("merge."): v for k, v in tags.items() if k.startswith("merge.")}
    out: dict[str, Any] = {"model": name, "version": str(version), "aliases": aliases, "source": mv.source,
                           "tags": tags, "mlflow_run_id": mv.run_id, "steps": [], "weights": weights,
                           "merge": merge, "config": json.loads(tags.get("config.json") or "null"),
                           "history": records.history(tags), "eval_sets": {}}
    vflags = _alias_flags({a: str(v) for a, v in (rm.aliases or {}).items()}, dict(rm.tags or {}),
                          {str(version): tags}, only=str(version))
    out["flags"] = vflags + [f for f in [_weights_flag(weights)] if f]
    if mv.run_id:
        run = c.get_run(mv.run_id)
        parent = run.data.tags.get("mlflow.parentRunId") or mv.run_id
        out["mlflow_parent_run_id"] = parent
        out["steps"] = _steps(c, run, parent, merge.get("mlflow_run_id"))
        out["eval_sets"] = _eval_sets(c, tags, c.get_run(parent))
    else:
        out["eval_sets"] = _eval_sets(c, tags, None)
    zid = tags.get("zenml.run_id")
    if zid:
        try:
            from zenml.client import Client

            zr = Client().get_pipeline_run(zid)
            out["zenml"] = {"run_id": zid, "run_name": zr.name, "status": str(zr.status),
                            "steps": {n: {"id": str(s.id), "status": str(s.status)} for n, s in zr.steps.items()}}
        except Exception as exc:  # the ZenML store may be elsewhere; MLflow alone still answers
            out["zenml"] = {"run_id": zid, "unavailable": str(exc)[:200]}
    return out


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def event_line(e: dict[str, Any]) -> str:
    """One history event as text: seq, time, who, what, verdict and why."""
    what = e.get("event", "?")
    if what == "decision":
        what = f"decision {e.get('decision')}" + (f" (FORCED; gates: {e.get('gates_decision')})" if e.get("forced")
                                                  else "")
    why = e.get("why") or "; ".join(e.get("reasons") or []) or ""
    extra = f" [{e['note']}]" if e.get("note") else ""
    return f"#{e.get('seq')} {e.get('time', '?')} {e.get('who', '?')}: {what}{extra}" + (f" - {why}" if why else "")


def format_lineage(info: dict[str, Any]) -> str:
    t, w = info["tags"], info.get("weights", {})
    lines = [f"{info['model']} v{info['version']}  aliases: {', '.join(info['aliases']) or '-'}",
             f"  weights: {info['source']}",
             f"    sha256 {w.get('recorded_sha256') or '-'}  re-hashed now: {w.get('status', '-')}"
             + (f" ({w['detail']})" if w.get("detail") else "")]
    lines += [f"    {f:<40} {d}" for f, d in sorted((w.get("files") or {}).items())]
    lines.append(f"  method: {t.get('method')}  git: {t.get('git_commit')}")
    m = info.get("merge") or {}
    if m:
        lines.append(f"  merged by: step {m.get('step') or 'merge'} (strength λ = {m.get('strength', '?')}) "
                     f"mlflow={m.get('mlflow_run_id', '-')}")
    lines.append("  inputs:")
    for role in ("base", "instruct", "reasoning"):
        rev, commit = t.get(f"input.{role}.revision"), t.get(f"input.{role}.commit")
        pinned = f"revision={rev} commit={commit}" if commit not in (None, "", "None") else "local folder"
        lines.append(f"    {role:<9} {t.get(f'input.{role}')}  {pinned} "
                     f"weights_sha256={t.get(f'input.{role}.weights_sha256')}")
    lines.append("  calibration:")
    for k in sorted(k for k in t if k.startswith("calibration.")):
        lines.append(f"    {k.removeprefix('calibration.'):<12} sha256={t[k]}")
    lines.append("  evaluation sets:")
    lines += [f"    {k:<24} sha256={v}" for k, v in sorted((info.get("eval_sets") or {}).items())] or ["    -"]
    lines.append(f"  config sha256: {t.get('config_sha256')}")
    if info.get("config"):
        lines += [f"    {k} = {json.dumps(v)}" for k, v in _flat(info["config"]).items()]
    z = info.get("zenml", {})
    lines.append(f"  zenml run: {t.get('zenml.run_name')} ({t.get('zenml.run_id')})")
    for n, s in z.get("steps", {}).items():
        lines.append(f"    step {n:<24} {s['id']}  {s['status']}")
    lines.append(f"  mlflow parent run: {info.get('mlflow_parent_run_id')}")
    for s in info["steps"]:
        mark = "  <- produced the registered weights" if s.get("produced_registered_weights") else ""
        lines.append(f"    step {s.get('zenml_step') or s['step']:<24} mlflow={s['mlflow_run_id']} "
                     f"zenml={s['zenml_step_run_id']}{mark}")
    lines.append("  metrics: " + ", ".join(f"{k.removeprefix('metric.')}={v}" for k, v in sorted(t.items())
                                          if k.startswith("metric.")))
    lines.append(f"  promotion: {t.get('promotion.decision')}  gates: {t.get('promotion.gates_decision')}")
    if t.get("promotion.forced") == "true":
        lines.append(f"    forced by {t.get('promotion.operator')} at {t.get('promotion.time')}: "
                     f"{t.get('promotion.reason')}")
    for r in json.loads(t.get("promotion.reasons", "[]")):
        lines.append(f"    {r}")
    lines.append("  history (append-only):")
    lines += [f"    {event_line(e)}" for e in info.get("history", [])] or ["    -"]
    for f in info.get("flags", []):
        lines.append(f"  FLAG {f}")
    return "\n".join(lines)
