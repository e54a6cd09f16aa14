"""The pipeline's commands (`rainmerge run | snapshot`), added to the CLI when the pipeline extra is installed
(rainmerge.cli.COMMAND_SETS): they start a pipeline, so they live with the pipelines, above the product layer."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from rainmerge.methods import METHOD_NAMES


def add_parsers(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="run the ZenML pipeline (merge, evaluate, register, gate, publish)")
    r.add_argument("--config", default="configs/toy.yaml", help="pipeline YAML (merge settings + evaluation, "
                   "promotion, hub, tracking sections); default: the offline toy trio")
    r.add_argument("--method", choices=METHOD_NAMES, help="override the config's method (baselines for A/B)")
    r.add_argument("--no-cache", action="store_true", help="rerun every step (ZenML caching off)")
    r.add_argument("--zenml-config",
                   help="ZenML run config (per-step resources, e.g. configs/k8s/gpu-steps.zenml.yaml)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, dotted (e.g. stage2.rho=0.3); the value is YAML-parsed")
    sn = sub.add_parser("snapshot", help="create a parameterised ZenML snapshot of the pipeline, to start merges "
                        "from a form (running it from the dashboard needs ZenML Pro and a remote stack)")
    sn.add_argument("name", help="snapshot name (replaced if it exists)")
    sn.add_argument("--config", default="configs/toy.yaml", help="pipeline YAML whose values the form starts from")
    sn.add_argument("--zenml-config", help="ZenML run config (per-step resources)")
    sn.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override any config key, dotted; the value is YAML-parsed")


def _run(a: argparse.Namespace, sets: Callable[[list[str]], dict[str, Any]]) -> int:
    from rainmerge.product.pipeline_config import load_pipeline_config
    from rainmerge.product.registry import format_lineage, lineage, registered_name
    from rainmerge.stages import check_plan

    from .run import run_pipeline

    cfg = load_pipeline_config(a.config, {"method": a.method, **sets(a.set)})
    check_plan(cfg)  # the same metadata checks as `rainmerge plan`, before the pipeline starts
    decision = run_pipeline(cfg, cache=not a.no_cache, zenml_config=a.zenml_config)
    name = decision.get("model") or registered_name(cfg.tracking.registered_model, cfg.method)
    if decision.get("linked"):
        print(f"\nsame weights (sha256) and decision inputs as {name} v{decision['version']}: linked to it, "
              "no new version registered")
    print("\n" + format_lineage(lineage(name, decision["version"], cfg.tracking.tracking_uri)))
    return 0


def _snapshot(a: argparse.Namespace, sets: Callable[[list[str]], dict[str, Any]]) -> int:
    from rainmerge.product.pipeline_config import load_pipeline_config

    from .run import create_snapshot

    sid = create_snapshot(load_pipeline_config(a.config, sets(a.set)), a.name, a.zenml_config)
    print(f"snapshot {a.name}: {sid} (run it from a ZenML Pro dashboard on a remote stack; "
          "on ZenML OSS it is stored but cannot be started from the UI)")
    return 0


def dispatch(a: argparse.Namespace, sets: Callable[[list[str]], dict[str, Any]]) -> int:
    return {"run": _run, "snapshot": _snapshot}[a.cmd](a, sets)
