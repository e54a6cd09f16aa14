"""The registry's commands (`rainmerge promote | lineage | audit`), added to the CLI when the pipeline
extra is installed; `rainmerge run | snapshot` start pipelines, so they live with them (pipelines/commands.py)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("promote", help="apply the promotion gates to a registered version (or force it)")
    p.add_argument("model", help="registered model name")
    p.add_argument("version", help="registered model version")
    p.add_argument("--config", default="configs/toy.yaml", help="where the gates come from")
    p.add_argument("--force", action="store_true",
                   help="move champion regardless of gates; needs --reason (operator, time and the gates' "
                        "verdict are recorded on the version)")
    p.add_argument("--reason", help="why the gates are overridden (required with --force)")
    p.add_argument("--operator", help="who forces it (default: the OS user)")
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or ./.mlflow)")
    lg = sub.add_parser("lineage", help="print the full chain behind a registered model version (weights "
                        "re-hashed against their recorded sha256; a difference is printed as a FLAG)")
    lg.add_argument("model", help="registered model name")
    lg.add_argument("version", help="registered model version")
    lg.add_argument("--json", action="store_true", help="machine-readable output")
    lg.add_argument("--html", metavar="OUT.html", help="also write a self-contained HTML lineage report "
                    "(steps, artifact digests, inputs, metrics, plots, decision) to open in any browser")
    lg.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or ./.mlflow)")
    au = sub.add_parser("audit", help="list a registered model's versions, aliases, weights check and decision "
                        "history; exit 1 when registered weights differ from their recorded sha256 or an alias "
                        "is not where rainmerge recorded it")
    au.add_argument("model", help="registered model name")
    au.add_argument("--json", action="store_true", help="machine-readable output")
    au.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or ./.mlflow)")


def _promote(a: argparse.Namespace, sets: Callable[[list[str]], dict[str, Any]]) -> int:
    import getpass
    import sys

    from . import registry
    from .pipeline_config import load_pipeline_config

    if a.force and not (a.reason or "").strip():
        print("rainmerge: error: promote --force needs --reason TEXT (recorded on the version)", file=sys.stderr)
        return 2
    cfg = load_pipeline_config(a.config)
    uri = a.tracking_uri or cfg.tracking.tracking_uri
    operator = a.operator or getpass.getuser()
    # metrics None: read from the version's exact metric tags, the very values the pipeline decided on
    d = registry.promote_version(a.model, a.version, None, None, cfg.promotion, uri, force=a.force,
                                 operator=operator, reason=a.reason)
    from .describe import refresh_description

    refresh_description(a.model, a.version, uri)  # the description shows the new history entry
    head = registry.PROMOTED if d.promote else registry.REJECTED
    if d.forced:
        head += f" (forced by {d.operator}: {d.reason}; gates: {d.gates_decision})"
    print(head + "\n  " + "\n  ".join(d.reasons))
    return 0 if d.promote else 1


def _audit(a: argparse.Namespace, sets: Callable[[list[str]], dict[str, Any]]) -> int:
    from .registry import audit, format_audit

    info = audit(a.model, a.tracking_uri)
    print(json.dumps(info, indent=2, default=str) if a.json else format_audit(info))
    return 1 if info["flags"] else 0


def _lineage(a: argparse.Namespace, sets: Callable[[list[str]], dict[str, Any]]) -> int:
    from .registry import format_lineage, lineage

    info = lineage(a.model, a.version, a.tracking_uri)
    print(json.dumps(info, indent=2, default=str) if a.json else format_lineage(info))
    if a.html:
        from pathlib import Path

        from .html_report import fetch_plots, html_report

        out = Path(a.html)
        print(html_report(info, out, fetch_plots(info, out.parent / f"{out.stem}-plots")))
    return 0


def dispatch(a: argparse.Namespace, sets: Callable[[list[str]], dict[str, Any]]) -> int:
    if a.cmd in ("promote", "lineage", "audit") and (a.tracking_uri or a.cmd != "promote"):
        from .tracking import check_store

        # a down server: one line within seconds, never "no registered model" after minutes of retries
        check_store(a.tracking_uri, write=a.cmd == "promote")
    return {"promote": _promote, "lineage": _lineage, "audit": _audit}[a.cmd](a, sets)

