"""Pipelines only wire steps together, and the wiring is the DAG table's (rainmerge.product.dag): each
step gets its upstream outputs and its config arguments as the table declares them."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from zenml import pipeline

from rainmerge.method_catalog import needs_stages
from rainmerge.product.pipeline_config import PipelineConfig
from rainmerge.product.dag import BY_NAME, DAG, SWEEP_REPLACES, Step, config_args
from rainmerge.product.tracking import tracking_uri


def _fn(step: Step) -> Any:
    """The ZenML step of a table row: steps/<fn>.py defines <fn>."""
    return getattr(importlib.import_module(f"steps.{step.fn}"), step.fn)


def _call(step: Step, cfg: PipelineConfig, done: dict[str, Any], extra: dict[str, Any], id: str | None = None,
          **override: Any) -> Any:
    """One invocation: upstream outputs and config arguments as the table says; `extra` holds what the
    orchestrator supplies (tracking URI, code digest, input fingerprint) to the steps that declare it."""
    fn = _fn(step)
    params = inspect.signature(fn.entrypoint).parameters
    args = {p: done.get(up) for p, up in step.inputs.items()} | config_args(step, cfg)
    args |= {k: v for k, v in extra.items() if k in params} | override
    return fn(**args, id=id or step.name)


def _wire(cfg: PipelineConfig, fingerprint: dict, code: str) -> None:
    extra = {"fingerprint": fingerprint, "tracking_uri": tracking_uri(cfg.tracking.tracking_uri), "code": code}
    rain = needs_stages(cfg.method)
    sweep = rain and bool(cfg.sweep.strengths)
    done: dict[str, Any] = {}
    for step in DAG:
        if step.name in done or step.sweep_only:
            continue
        if step.rain_only and not rain:
            done[step.name] = None
        elif sweep and step.name in SWEEP_REPLACES:
            done["merge"], done["evaluate_merged"] = _sweep(cfg, done, extra)
        else:
            done[step.name] = _call(step, cfg, done, extra)


def _sweep(cfg: PipelineConfig, done: dict[str, Any], extra: dict[str, Any]) -> tuple[Any, Any]:
    """Strength sweep: every candidate shares Stage 1/2 (alpha is scored once, at `strength`); the
    baselines are merged at the same strengths for the trade-off plot; select_candidate picks one."""
    merge, evaluate = BY_NAME["merge"], BY_NAME["evaluate_merged"]
    cands, cand_metrics, base_labels, base_metrics = [], [], [], []
    for i, strength in enumerate(cfg.strengths()):
        m = _call(merge, cfg, done, extra, config=cfg.merge_config(strength=strength), id=f"merge_{i}")
        cands.append(m)
        cand_metrics.append(_call(evaluate, cfg, done, extra, merged=m, id=f"evaluate_merged_{i}"))
    for method in cfg.sweep.baselines:
        for i, strength in enumerate(cfg.strengths()):
            m = _call(merge, cfg, done, extra, config=cfg.merge_config(method=method, strength=strength),
                      calibration=None, projectors=None, coefficients=None, id=f"merge_{method}_{i}")
            base_labels.append({"method": method, "strength": strength})
            base_metrics.append(_call(evaluate, cfg, done, extra, merged=m, id=f"evaluate_{method}_{i}"))
    merged, metrics, _ = _call(BY_NAME["select_candidate"], cfg, done, extra, merged=cands, metrics=cand_metrics,
                               strengths=cfg.strengths(), baseline_labels=base_labels,
                               baseline_metrics=base_metrics)
    return merged, metrics


@pipeline(enable_cache=True)
def rain_merge_pipeline(config: dict, fingerprint: dict, code: str) -> None:
    """RAIN-Merging: calibration -> Stage 1 (features, projectors) -> Stage 2 (heads) -> merge -> gates."""
    _wire(PipelineConfig.model_validate(config), fingerprint, code)


@pipeline(enable_cache=True)
def baseline_merge_pipeline(config: dict, fingerprint: dict, code: str) -> None:
    """The same product path with a baseline method (task_arithmetic, ties, dare) for A/B runs."""
    _wire(PipelineConfig.model_validate(config), fingerprint, code)
