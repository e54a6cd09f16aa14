"""One self-contained HTML lineage report per registered version: inline CSS, plots as base64 PNG,
the step DAG as inline SVG, inputs with digests, metrics vs LRM, and the promotion decision."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .dag import edges
from .tracking import KEY_METRICS

# the pipeline's step graph; steps absent from a run are left out, from the one DAG table (a sweep adds select_candidate between merge and promote)
EDGES = list(dict.fromkeys(edges() + edges(sweep=True)))
PLOTS = {"alpha_heatmap.png": "Stage 2: alpha per (layer, head)",
         "projection_stats.png": "Stage 1: projection per (layer, module)",
         "comparison.png": "Merged vs LRM on the held-out evaluation"}

CSS = """body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;
color:#1d2733;padding:0 16px}h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:26px 0 8px;
border-bottom:1px solid #d8dee6;padding-bottom:4px}table{border-collapse:collapse;width:100%;font-size:13px}
td,th{border:1px solid #d8dee6;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f2f5f8}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;font-weight:600;color:#fff}
.ok{background:#2e7d32}.bad{background:#c62828}.muted{color:#67737f}.num{text-align:right}
.plots img{max-width:100%;border:1px solid #d8dee6;margin:6px 0}.pass{color:#2e7d32}.fail{color:#c62828}"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def dag_svg(steps: list[str]) -> str:
    """The steps that ran, placed by depth in the pipeline's data flow, with arrows for the edges."""
    present = list(dict.fromkeys(steps))
    edges = [(a, b) for a, b in EDGES if a in present and b in present]
    depth = {s: 0 for s in present}
    for _ in present:
        for a, b in edges:
            depth[b] = max(depth[b], depth[a] + 1)
    cols: dict[int, list[str]] = {}
    for s in present:
        cols.setdefault(depth[s], []).append(s)
    w, h, gx, gy = 150, 34, 40, 18
    pos = {s: (10 + d * (w + gx), 10 + i * (h + gy)) for d, ss in cols.items() for i, s in enumerate(ss)}
    width = 20 + (max(cols) + 1) * (w + gx) if cols else 100
    height = 20 + max(len(v) for v in cols.values()) * (h + gy) if cols else 60
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'style="width:100%;max-width:{width}px" role="img" aria-label="pipeline steps"><defs>'
             '<marker id="arr" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
             'markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z" fill="#6b7a8a"/></marker></defs>']
    for a, b in edges:
        (x1, y1), (x2, y2) = pos[a], pos[b]
        parts.append(f'<path d="M{x1 + w},{y1 + h / 2} C{x1 + w + gx / 2},{y1 + h / 2} {x2 - gx / 2},{y2 + h / 2} '
                     f'{x2},{y2 + h / 2}" stroke="#6b7a8a" fill="none" marker-end="url(#arr)"/>')
    for s, (x, y) in pos.items():
        parts.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" fill="#e8f0fa" stroke="#3b6ea5"/>'
                     f'<text x="{x + w / 2}" y="{y + h / 2 + 4}" text-anchor="middle" font-size="11" '
                     f'font-family="system-ui,sans-serif">{_e(s)}</text>')
    return "".join(parts) + "</svg>"


def _metric_rows(t: dict[str, str]) -> str:
    rows = []
    for k in KEY_METRICS:
        m, b = t.get(f"metric.{k}"), t.get(f"lrm_metric.{k}")
        if m is None and b is None:
            continue
        try:
            d = f"{float(m) - float(b):+.4f}"
        except (TypeError, ValueError):
            d = ""
        rows.append(f"<tr><td>{_e(k)}</td><td class=num>{_e(m or '-')}</td><td class=num>{_e(b or '-')}</td>"
                    f"<td class=num>{d}</td></tr>")
    return "".join(rows)


def _rows(pairs: list[tuple[Any, Any]]) -> str:
    return "".join(f"<tr><td>{_e(k)}</td><td class=mono>{_e(v)}</td></tr>" for k, v in pairs)


def _record_html(info: dict[str, Any]) -> str:
    """Weights digests (and whether they still match), the merge that produced them, evaluation sets
    and the append-only decision history (the full config closes the page: it is long)."""
    w, m = info.get("weights") or {}, info.get("merge") or {}
    status = w.get("status", "-") + (f": {w['detail']}" if w.get("detail") else "")
    parts = ["<h2>Merged weights (sha256)</h2><table><tr><th>file</th><th>sha256</th></tr>",
             _rows([("overall", w.get("recorded_sha256") or "-"), ("re-hashed now", status)]
                   + sorted((w.get("files") or {}).items())), "</table>"]
    if m:
        parts.append(f"<p>produced by merge step <code>{_e(m.get('step') or 'merge')}</code>, strength λ = "
                     f"<code>{_e(m.get('strength', '?'))}</code>, MLflow run <code>{_e(m.get('mlflow_run_id', '-'))}"
                     "</code></p>")
    sets = sorted((info.get("eval_sets") or {}).items())
    parts += ["<h2>Evaluation sets</h2><table><tr><th>set</th><th>sha256</th></tr>",
              _rows(sets) or "<tr><td colspan=2 class=muted>none recorded</td></tr>", "</table>"]
    hist = "".join(
        f"<tr><td>{_e(e.get('seq'))}</td><td class=mono>{_e(e.get('time'))}</td><td>{_e(e.get('who'))}</td>"
        f"<td>{_e(e.get('event'))}{' FORCED' if e.get('forced') else ''}</td><td>{_e(e.get('decision') or '')}</td>"
        f"<td>{_e(e.get('why') or '; '.join(e.get('reasons') or []))}"
        f"{(' <i>(' + _e(e['note']) + ')</i>') if e.get('note') else ''}</td></tr>" for e in info.get("history", []))
    parts += ["<h2>Decision history (append-only)</h2><table><tr><th>#</th><th>time (UTC)</th><th>who</th>"
              "<th>event</th><th>verdict</th><th>why</th></tr>",
              hist or "<tr><td colspan=6 class=muted>no events recorded</td></tr>", "</table>"]
    return "".join(parts)


def _config_html(info: dict[str, Any]) -> str:
    if not info.get("config"):
        return ""
    return ("<h2>Full resolved config</h2><pre class=mono>"
            f"{_e(json.dumps(info['config'], indent=1, sort_keys=True))}</pre>")


def html_report(lineage_info: dict[str, Any], out: Path, plots: dict[str, Path] | None = None) -> Path:
    """Write one self-contained HTML file for a registered version (registry.lineage's dict) to `out`."""
    info, t = lineage_info, {k: v for k, v in lineage_info.get("tags", {}).items() if v not in (None, "None")}
    plots = dict(plots or {}) | {k: Path(v) for k, v in (info.get("plots") or {}).items()}
    decision = t.get("promotion.decision", "-")
    badge = "ok" if decision == "promoted" else "bad"
    reasons = json.loads(t.get("promotion.reasons", "[]"))
    inputs = []
    for role in ("base", "instruct", "reasoning"):
        if f"input.{role}" not in t:
            continue
        commit = t.get(f"input.{role}.commit")
        src = (f"Hub <code>{_e(t[f'input.{role}'])}</code> revision <code>{_e(t.get(f'input.{role}.revision', 'main'))}"
               f"</code><br>commit <code>{_e(commit)}</code>") if commit else \
            f"local folder <code>{_e(t[f'input.{role}'])}</code>"
        inputs.append(f"<tr><td>{role}</td><td>{src}</td><td class=mono>{_e(t.get(f'input.{role}.weights_sha256', '-'))}"
                      f"</td><td class=mono>{_e(t.get(f'input.{role}.config_sha256', '-'))}</td></tr>")
    digests = [(k, v) for k, v in sorted(t.items()) if k.startswith("calibration.") or k == "config_sha256"]
    steps = info.get("steps", [])
    zsteps = (info.get("zenml") or {}).get("steps", {})
    step_rows = "".join(
        f"<tr><td>{_e(s['step'])}</td><td class=mono>{_e(s.get('mlflow_run_id'))}</td>"
        f"<td class=mono>{_e(s.get('zenml_step_run_id') or (zsteps.get(s['step']) or {}).get('id') or '-')}</td>"
        f"<td class=mono>{_e(', '.join(f'{k}={v:.4g}' for k, v in sorted(s.get('metrics', {}).items())[:6]))}</td></tr>"
        for s in steps)
    plot_html = "".join(f"<figure><figcaption>{_e(PLOTS.get(n, n))}</figcaption><img alt='{_e(n)}' "
                        f"src='{_img(p)}'></figure>" for n, p in plots.items() if Path(p).is_file())
    body = f"""<!doctype html><html lang=en><head><meta charset=utf-8>
<title>{_e(info['model'])} v{_e(info['version'])} lineage</title><style>{CSS}</style></head><body>
<h1>{_e(info['model'])} <span class=muted>version {_e(info['version'])}</span></h1>
<p>aliases: <b>{_e(', '.join(info.get('aliases', [])) or '-')}</b> &middot; method <code>{_e(t.get('method'))}</code>
&middot; decision <span class="badge {badge}">{_e(decision)}</span></p>
{''.join(f'<p class=fail><b>FLAG</b> {_e(f)}</p>' for f in info.get('flags', []))}
<h2>Decision</h2><ul>{''.join(f"<li class={'pass' if r.startswith('PASS') else 'fail'}>{_e(r)}</li>" for r in reasons)
or '<li class=muted>no gate record</li>'}</ul>
<h2>Pipeline steps</h2>{dag_svg([s['step'] for s in steps])}
<table><tr><th>step</th><th>MLflow run</th><th>ZenML step run</th><th>metrics</th></tr>{step_rows}</table>
<h2>Inputs</h2><table><tr><th>role</th><th>source</th><th>weights sha256</th><th>config sha256</th></tr>
{''.join(inputs)}</table>
<h2>Artifact digests</h2><table><tr><th>artifact</th><th>sha256</th></tr>
{''.join(f'<tr><td>{_e(k)}</td><td class=mono>{_e(v)}</td></tr>' for k, v in digests)}
<tr><td>merged weights (folder)</td><td class=mono>{_e(info.get('source'))}</td></tr></table>
{_record_html(info)}
<h2>Metrics (held-out evaluation)</h2><table><tr><th>metric</th><th>merged</th><th>LRM</th><th>delta</th></tr>
{_metric_rows(t)}</table>
<h2>Plots</h2><div class=plots>{plot_html or '<p class=muted>none logged</p>'}</div>
<h2>Provenance</h2><table>
<tr><td>ZenML run</td><td class=mono>{_e(t.get('zenml.run_name'))} ({_e(t.get('zenml.run_id'))})</td></tr>
<tr><td>ZenML pipeline</td><td class=mono>{_e(t.get('zenml.pipeline'))}</td></tr>
<tr><td>MLflow parent run</td><td class=mono>{_e(info.get('mlflow_parent_run_id'))}</td></tr>
<tr><td>git commit</td><td class=mono>{_e(t.get('git_commit'))}</td></tr></table>
{_config_html(info)}
</body></html>"""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(body, encoding="utf-8")
    return out


def fetch_plots(info: dict[str, Any], dest: Path) -> dict[str, Path]:
    """Download the PNG plots the step runs logged (alpha heat-map, projection stats, comparison)."""
    import mlflow

    found: dict[str, Path] = {}
    runs = [s["mlflow_run_id"] for s in info.get("steps", [])] + [info.get("mlflow_parent_run_id")]
    for rid in filter(None, runs):
        for name in PLOTS:
            if name in found:
                continue
            try:
                found[name] = Path(mlflow.artifacts.download_artifacts(run_id=rid, artifact_path=name,
                                                                       dst_path=str(dest / rid)))
            except Exception:  # noqa: BLE001 - that run did not log this plot
                pass
    return found


def write_and_log_report(name: str, version: str, out: Path, uri: str | None = None) -> Path:
    """Build the version's report into out/lineage_<name>_v<version>.html, log it to the version's run
    (artifact lineage/) and point the version at it (tag lineage_report)."""
    from mlflow import MlflowClient

    from .registry import _client, lineage

    info = lineage(name, version, uri)
    plots = fetch_plots(info, Path(out) / "plots")
    path = html_report(info, Path(out) / f"lineage_{name}_v{version}.html", plots)
    c: MlflowClient = _client(uri)
    run_id = info.get("mlflow_parent_run_id") or info.get("mlflow_run_id")
    if run_id:
        c.log_artifact(run_id, str(path), "lineage")
        c.set_model_version_tag(name, version, "lineage_report",
                                f"{c.get_run(run_id).info.artifact_uri}/lineage/{path.name}")
    return path
