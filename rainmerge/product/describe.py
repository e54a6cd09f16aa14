"""Registered-version descriptions an auditor can read (markdown), the same summary as ZenML metadata,
and tag hygiene (no "None" strings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .tracking import KEY_METRICS

_NONE = {None, "None", "none", "null", ""}


def clean_tags(tags: dict[str, Any]) -> dict[str, str]:
    """Drop None-ish values (str(None) included) so no tag reads "None"; everything else as str."""
    return {k: str(v) for k, v in tags.items() if v not in _NONE and str(v) not in _NONE}


def _f(x: Any) -> str:
    try:
        return f"{float(x):.4f}"
    except (TypeError, ValueError):
        return "-"


def _input_line(role: str, t: dict[str, str]) -> str:
    path = t.get(f"input.{role}", "?")
    rev, commit = t.get(f"input.{role}.revision"), t.get(f"input.{role}.commit")
    wsha, csha = t.get(f"input.{role}.weights_sha256"), t.get(f"input.{role}.config_sha256")
    if commit:  # resolved from the Hub (or a snapshot folder named by its commit)
        where = f"Hub `{path}` revision `{rev or 'main'}` commit `{commit}`"
    else:
        where = f"local folder `{path}`"
    dig = f", weights sha256 `{wsha}`" if wsha else ""
    dig += f", config sha256 `{csha[:16]}…`" if csha else ""
    return f"| {role} | {where}{dig} |"


def version_description(tags: dict[str, str], metrics: dict[str, Any] | None = None,
                        lrm_metrics: dict[str, Any] | None = None, decision: dict[str, Any] | None = None,
                        config: dict[str, Any] | None = None) -> str:
    """Markdown for a registered model version: inputs, calibration, method and settings, metrics vs LRM,
    gate verdict, ZenML run and git commit. Works from the version's tags alone (metrics fall back to
    the metric.* / lrm_metric.* tags; the decision to promotion.* tags)."""
    t = clean_tags(tags)
    metrics = metrics or {k.removeprefix("metric."): v for k, v in t.items() if k.startswith("metric.")}
    lrm_metrics = lrm_metrics or {k.removeprefix("lrm_metric."): v for k, v in t.items() if k.startswith("lrm_metric.")}
    if decision is None and "promotion.decision" in t:
        decision = {"promote": t["promotion.decision"] == "promoted",
                    "reasons": json.loads(t.get("promotion.reasons", "[]"))}
    out = [f"**RAIN-Merging output** — method `{t.get('method', '?')}`", ""]
    if decision is not None:
        verdict = "PROMOTED (champion)" if decision.get("promote") else "REJECTED (challenger only)"
        out += [f"**Gate verdict: {verdict}**", ""] + [f"- {r}" for r in decision.get("reasons", [])] + [""]
    out += ["### Inputs", "", "| role | source |", "|---|---|"]
    out += [_input_line(r, t) for r in ("base", "instruct", "reasoning") if f"input.{r}" in t] + [""]
    cal = sorted(k for k in t if k.startswith("calibration."))
    if cal:
        out += ["### Calibration sets (sha256)", ""] + [f"- {k.removeprefix('calibration.')}: `{t[k]}`" for k in cal]
        out.append("")
    out += ["### Method and key settings", ""]
    c = config or {}
    keys = ("method", "strength", "density", "layers", "modules")
    settings = {k: c[k] for k in keys if k in c and c[k] is not None}
    for sec in ("stage1", "stage2"):
        if isinstance(c.get(sec), dict):
            settings |= {f"{sec}.{k}": v for k, v in c[sec].items() if v is not None and not isinstance(v, dict)}
    settings = settings or {"method": t.get("method", "?")}
    out += [f"- {k}: `{v}`" for k, v in settings.items()]
    out += [f"- config sha256: `{t['config_sha256']}`" if "config_sha256" in t else "", ""]
    keys_m = [k for k in KEY_METRICS if k in metrics or k in lrm_metrics]
    if keys_m:
        out += ["### Metrics vs LRM (held-out)", "", "| metric | merged | LRM |", "|---|---:|---:|"]
        out += [f"| {k} | {_f(metrics.get(k))} | {_f(lrm_metrics.get(k))} |" for k in keys_m] + [""]
    out += _record_sections(t, config)
    out += ["### Provenance", "",
            f"- ZenML run: `{t.get('zenml.run_name', '-')}` (`{t.get('zenml.run_id', '-')}`), "
            f"pipeline `{t.get('zenml.pipeline', '-')}`",
            f"- git commit: `{t.get('git_commit', '-')}`", f"- weights: `{t.get('weights_uri', '-')}`"]
    return "\n".join(x for x in out if x is not None)


def _record_sections(t: dict[str, str], config: dict[str, Any] | None) -> list[str]:
    """Weights digests, the merge that made them, evaluation sets, the full config, the decision history."""
    from .lineage import event_line
    from .records import WEIGHTS_FILES, WEIGHTS_SHA, history

    out: list[str] = []
    if WEIGHTS_SHA in t:
        files = json.loads(t.get(WEIGHTS_FILES) or "{}")
        out += ["### Merged weights (sha256)", "", f"- overall: `{t[WEIGHTS_SHA]}`"]
        out += [f"- `{f}`: `{d}`" for f, d in sorted(files.items())] + [""]
    merge = {k.removeprefix("merge."): v for k, v in t.items() if k.startswith("merge.")}
    if merge:
        out += ["### Produced by", "", f"- merge step `{merge.get('step', 'merge')}`, strength λ = "
                f"`{merge.get('strength', '?')}`, MLflow run `{merge.get('mlflow_run_id', '-')}`", ""]
    sets = sorted((k.removeprefix("eval_set."), v) for k, v in t.items() if k.startswith("eval_set."))
    if sets:
        out += ["### Evaluation sets (sha256)", ""] + [f"- {n}: `{d}`" for n, d in sets] + [""]
    ev = history(t)
    if ev:
        out += ["### Decision history (append-only)", ""] + [f"- {event_line(e)}" for e in ev] + [""]
    cfg = config or (json.loads(t["config.json"]) if t.get("config.json") else None)
    if cfg:
        out += ["### Full resolved config", "", "```json", json.dumps(cfg, indent=1, sort_keys=True), "```", ""]
    return out


def refresh_description(name: str, version: str, uri: str | None = None) -> str:
    """Rewrite the version's description from its tags (after a decision or a push outside the pipeline)."""
    from .registry import _client, tag_metrics

    t = dict(_client(uri).get_model_version(name, version).tags)
    return set_version_description(name, version, {}, tag_metrics(t), tag_metrics(t, "lrm_metric."), None, uri,
                                   config=json.loads(t["config.json"]) if t.get("config.json") else None)


def set_version_description(name: str, version: str, tags: dict[str, Any], metrics: dict[str, Any],
                            lrm_metrics: dict[str, Any], decision: Any = None, uri: str | None = None,
                            config: Any = None, out: Path | None = None) -> str:
    """Write the version's markdown description; drop "None" tags from it; with `out`, also the parent run's
    summary and the HTML lineage report (written to out, logged to the version's run). Returns the markdown."""
    from .registry import _client

    d = decision.as_dict() if hasattr(decision, "as_dict") else decision
    cfg = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    c = _client(uri)
    mv = c.get_model_version(name, version)
    all_tags = {**mv.tags, **{k: v for k, v in tags.items() if v not in _NONE}}
    for k, v in mv.tags.items():  # str(None) from lineage_tags: leave no "None" on the version
        if v in _NONE:
            c.delete_model_version_tag(name, version, k)
    if d is None and all_tags.get("promotion.decision") in ("promoted", "rejected"):
        d = {"promote": all_tags["promotion.decision"] == "promoted", "version": str(version),
             "reasons": json.loads(all_tags.get("promotion.reasons", "[]"))}
    md = version_description(all_tags, metrics, lrm_metrics, d, cfg)
    c.update_model_version(name, version, description=md)
    if out is not None:
        from .html_report import write_and_log_report
        from .tracking import log_parent_summary

        try:
            log_parent_summary(metrics, lrm_metrics, d, Path(out) / "comparison.png",
                               params={"method": all_tags.get("method"), "registered": f"{name} v{version}"})
        except Exception:  # noqa: BLE001 - a dashboard nicety never fails the promotion
            pass
        write_and_log_report(name, version, Path(out), uri)
    return md


def zenml_metadata(name: str, version: str, uri: str | None = None) -> dict[str, Any]:
    """The same summary for the ZenML model version: description markdown plus the flat facts."""
    from .registry import _client

    mv = _client(uri).get_model_version(name, version)
    t = clean_tags(mv.tags)
    return {"mlflow_registered_model": name, "mlflow_version": str(version),
            "description": mv.description or version_description(t),
            "inputs": {k: v for k, v in t.items() if k.startswith("input.")},
            "calibration": {k: v for k, v in t.items() if k.startswith("calibration.")},
            "metrics": {k: v for k, v in t.items() if k.startswith(("metric.", "lrm_metric."))},
            "decision": t.get("promotion.decision", "-"), "git_commit": t.get("git_commit", "-"),
            "zenml_run_id": t.get("zenml.run_id", "-")}
