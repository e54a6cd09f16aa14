"""Command line: `python -m rainmerge merge ...`; flags override the YAML config."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .errors import RainMergeError


def _merge_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge an instruction model into a reasoning model")
    p.add_argument("--config", help="YAML config; flags below override it")
    p.add_argument("--base", help="base model dir or Hub id")
    p.add_argument("--instruct", help="instruction-tuned model (ITM) dir or Hub id")
    p.add_argument("--reasoning", help="reasoning model (LRM) dir or Hub id")
    p.add_argument("--base-revision")
    p.add_argument("--instruct-revision")
    p.add_argument("--reasoning-revision")
    p.add_argument("--reasoning-calibration", help="reasoning calibration JSON (Stage 1)")
    p.add_argument("--instruction-calibration", help="instruction calibration JSONL (Stage 2)")
    p.add_argument("--output", help="output model directory (written atomically)")
    p.add_argument("--method", choices=["rain", "task_arithmetic", "ties", "dare"])
    p.add_argument("--strength", type=float, help="global lambda")
    p.add_argument("--density", type=float, help="TIES/DARE density")
    p.add_argument("--layers", help="comma-separated layer indices (default: all)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"])
    p.add_argument("--overwrite", action="store_true", default=None)
    p.add_argument("--no-stage2", action="store_true", help="uniform alpha (Stage-1-only ablation)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, dotted (e.g. stage1.radius=3); YAML-parsed value")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _pipeline_parsers(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run the ZenML pipeline (merge, evaluate, register, gate, publish)")
    r.add_argument("--config", default="configs/toy.yaml")
    r.add_argument("--method", choices=["rain", "task_arithmetic", "ties", "dare"])
    r.add_argument("--no-cache", action="store_true")
    r.add_argument("--zenml-config",
                   help="ZenML run config (per-step resources, e.g. configs/k8s/gpu-steps.zenml.yaml)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p = sub.add_parser("promote", help="apply the promotion gates to a registered version (or force it)")
    p.add_argument("model")
    p.add_argument("version")
    p.add_argument("--config", default="configs/toy.yaml", help="where the gates come from")
    p.add_argument("--force", action="store_true", help="move champion regardless of gates (recorded)")
    p.add_argument("--tracking-uri")
    lg = sub.add_parser("lineage", help="print the full chain behind a registered model version")
    lg.add_argument("model")
    lg.add_argument("version")
    lg.add_argument("--json", action="store_true")
    lg.add_argument("--tracking-uri")


_FLOAT_TEXT = r"[-+]?(0|[1-9][0-9]*)?\.[0-9]*([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"


def _set_value(text: str) -> Any:
    """YAML-parse a --set value, but keep the text when YAML would change it: a git/sha256 digest
    (40 or 64 hex characters, even all digits), a number whose text form differs from the input
    (leading zeros, 1_000, 0x10, 1:30 ...), or a YAML syntax error."""
    import re

    import yaml

    s = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}", s):
        return s
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and re.fullmatch(r"[-+]?(0|[1-9][0-9]*)", s) is None:
        return text
    if isinstance(value, float) and re.fullmatch(_FLOAT_TEXT, s) is None:
        return text
    return value


def _sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise RainMergeError(f"--set expects KEY=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        out[k.strip()] = _set_value(v)
    return out


def _run(a: argparse.Namespace) -> int:
    from pipelines.run import run_pipeline

    from .config import load_config
    from .registry import format_lineage, lineage

    cfg = load_config(a.config, {"method": a.method, **_sets(a.set)})
    decision = run_pipeline(cfg, cache=not a.no_cache, zenml_config=a.zenml_config)
    print("\n" + format_lineage(lineage(cfg.tracking.registered_model, decision["version"],
                                         cfg.tracking.tracking_uri)))
    return 0


def _promote(a: argparse.Namespace) -> int:
    from . import registry
    from .config import load_config

    cfg = load_config(a.config)
    uri = a.tracking_uri or cfg.tracking.tracking_uri
    tags = registry.lineage(a.model, a.version, uri)["tags"]
    merged, lrm = registry.tag_metrics(tags), registry.tag_metrics(tags, "lrm_metric.")
    prev, champ = registry.champion(a.model, uri)
    d = registry.decide(merged, lrm, champ if prev != a.version else None, cfg.promotion)
    if a.force and not d.promote:
        d.reasons.append("FORCED by operator")
        d.promote = True
    d.version, d.previous_champion = a.version, prev
    registry.record_decision(a.model, a.version, d, uri)
    print(("promoted" if d.promote else "rejected") + "\n  " + "\n  ".join(d.reasons))
    return 0 if d.promote else 1


def _lineage(a: argparse.Namespace) -> int:
    import json

    from .registry import format_lineage, lineage

    info = lineage(a.model, a.version, a.tracking_uri)
    print(json.dumps(info, indent=2, default=str) if a.json else format_lineage(info))
    return 0


def _overrides(a: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {
        "base.path": a.base, "instruct.path": a.instruct, "reasoning.path": a.reasoning,
        "base.revision": a.base_revision, "instruct.revision": a.instruct_revision,
        "reasoning.revision": a.reasoning_revision,
        "reasoning_calibration.path": a.reasoning_calibration,
        "instruction_calibration.path": a.instruction_calibration,
        "output": a.output, "method": a.method, "strength": a.strength, "density": a.density,
        "device": a.device, "overwrite": a.overwrite,
        "layers": [int(x) for x in a.layers.split(",")] if a.layers else None,
        "stage2.enabled": False if a.no_stage2 else None,
    }
    o.update(_sets(a.set))
    return o


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rainmerge", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    _merge_parser(sub)
    _pipeline_parsers(sub)
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if a.cmd == "merge":
            from .config import load_config
            from .runner import run_merge

            cfg = load_config(a.config, _overrides(a))
            out = run_merge(cfg, progress=not a.quiet)
            print(out)
            return 0
        return {"run": _run, "promote": _promote, "lineage": _lineage}[a.cmd](a)
    except RainMergeError as exc:
        print(f"rainmerge: error: {exc}", file=sys.stderr)
        return 2
