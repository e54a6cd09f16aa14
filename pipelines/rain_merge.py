"""Pipelines only wire steps together; every value they pass is computed from one PipelineConfig."""

from __future__ import annotations

from zenml import pipeline

from rainmerge.pipeline_config import PipelineConfig
from rainmerge.tracking import tracking_uri
from rainmerge.workflow import view
from steps import (build_calibration_sets, collect_features, compute_projectors, evaluate, load_models, merge,
                   promote, push_to_hub, score_attention_heads)


def _common(config: dict, fingerprint: dict, code: str):
    cfg = PipelineConfig.model_validate(config)
    uri = tracking_uri(cfg.tracking.tracking_uri)
    data, cal = cfg.eval_data_dir(), cfg.held_out_file()
    ev = cfg.evaluation.model_dump(mode="json")
    models = load_models(view(cfg, "load_models"), fingerprint, uri, code)
    lrm_metrics = evaluate(models, "reasoning", ev, data, cal, uri, code, id="evaluate_reasoning")
    return cfg, uri, data, cal, ev, models, lrm_metrics


def _finish(cfg, uri, data, cal, ev, models, lrm_metrics, calib, merged, code):
    metrics = evaluate(models, "merged", ev, data, cal, uri, code, merged=merged, id="evaluate_merged")
    cfg_json = view(cfg, "merge")
    decision = promote(merged, metrics, lrm_metrics, models, calib, cfg_json, cfg.promotion.model_dump(),
                       cfg.tracking.registered_model, uri, code)
    push_to_hub(merged, decision, metrics, lrm_metrics, models, cfg_json, cfg.hub.model_dump(), uri, code)


@pipeline(enable_cache=True)
def rain_merge_pipeline(config: dict, fingerprint: dict, code: str) -> None:
    """RAIN-Merging: calibration -> Stage 1 (features, projectors) -> Stage 2 (heads) -> merge -> gates."""
    cfg, uri, data, cal, ev, models, lrm_metrics = _common(config, fingerprint, code)
    calib = build_calibration_sets(view(cfg, "build_calibration_sets"), fingerprint, models, uri, code)
    feats = collect_features(view(cfg, "collect_features"), calib, uri, code)
    proj = compute_projectors(view(cfg, "compute_projectors"), feats, uri, code)
    coeffs = score_attention_heads(view(cfg, "score_attention_heads"), calib, proj, uri, code)
    merged = merge(view(cfg, "merge"), calib, proj, coeffs, uri, code)
    _finish(cfg, uri, data, cal, ev, models, lrm_metrics, calib, merged, code)


@pipeline(enable_cache=True)
def baseline_merge_pipeline(config: dict, fingerprint: dict, code: str) -> None:
    """The same product path with a baseline method (task_arithmetic, ties, dare) for A/B runs."""
    cfg, uri, data, cal, ev, models, lrm_metrics = _common(config, fingerprint, code)
    merged = merge(view(cfg, "merge"), None, None, None, uri, code)
    _finish(cfg, uri, data, cal, ev, models, lrm_metrics, None, merged, code)
