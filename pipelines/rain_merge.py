"""Pipelines only wire steps together; each step gets the config sections it reads."""

from __future__ import annotations

from zenml import pipeline

from rainmerge.product.config import PipelineConfig
from rainmerge.product.tracking import tracking_uri
from steps import (build_calibration_sets, collect_features, compute_projectors, evaluate, load_models, merge,
                   promote, push_to_hub, score_attention_heads, select_candidate)


def _start(cfg: PipelineConfig, fingerprint: dict, code: str):
    uri = tracking_uri(cfg.tracking.tracking_uri)
    models = load_models(cfg.models_spec(), fingerprint, cfg.diagnostics, uri, code)
    lrm_metrics = evaluate(models, "reasoning", cfg.evaluation, cfg.eval_data_dir(), cfg.held_out_file(), uri, code,
                           id="evaluate_reasoning")
    return uri, models, lrm_metrics


def _finish(cfg: PipelineConfig, uri: str, models, lrm_metrics, calib, merged, code: str, metrics=None) -> None:
    if metrics is None:
        metrics = evaluate(models, "merged", cfg.evaluation, cfg.eval_data_dir(), cfg.held_out_file(), uri, code,
                           merged=merged, id="evaluate_merged")
    decision = promote(merged, metrics, lrm_metrics, models, calib, cfg.merge_config(), cfg.promotion,
                       cfg.tracking.registered_model, uri, code)
    push_to_hub(merged, decision, metrics, lrm_metrics, models, cfg.merge_config(), cfg.hub, uri, code)


@pipeline(enable_cache=True)
def rain_merge_pipeline(config: dict, fingerprint: dict, code: str) -> None:
    """RAIN-Merging: calibration -> Stage 1 (features, projectors) -> Stage 2 (heads) -> merge -> gates."""
    cfg = PipelineConfig.model_validate(config)
    uri, models, lrm_metrics = _start(cfg, fingerprint, code)
    calib = build_calibration_sets(models, cfg.calibration_spec(), uri, code)
    feats = collect_features(models, calib, cfg.runtime(), uri, code)
    proj = compute_projectors(models, feats, cfg.stage1, cfg.runtime(), uri, code)
    coeffs = score_attention_heads(models, calib, proj, cfg.stage2, cfg.strength, cfg.runtime(), uri, code)
    if not cfg.sweep.strengths:
        merged = merge(models, cfg.merge_config(), calib, proj, coeffs, uri, code)
        _finish(cfg, uri, models, lrm_metrics, calib, merged, code)
        return
    # strength sweep: every candidate shares Stage 1/2 (alpha is scored once, at `strength`)
    data, held = cfg.eval_data_dir(), cfg.held_out_file()
    cands, cand_metrics = [], []
    for i, lam in enumerate(cfg.strengths()):
        m = merge(models, cfg.merge_config(strength=lam), calib, proj, coeffs, uri, code, id=f"merge_{i}")
        cands.append(m)
        cand_metrics.append(evaluate(models, "merged", cfg.evaluation, data, held, uri, code, merged=m,
                                     id=f"evaluate_merged_{i}"))
    base_labels, base_metrics = [], []
    for method in cfg.sweep.baselines:
        for i, lam in enumerate(cfg.strengths()):
            m = merge(models, cfg.merge_config(method=method, strength=lam), None, None, None, uri, code,
                      id=f"merge_{method}_{i}")
            base_labels.append({"method": method, "strength": lam})
            base_metrics.append(evaluate(models, "merged", cfg.evaluation, data, held, uri, code, merged=m,
                                         id=f"evaluate_{method}_{i}"))
    merged, metrics, _ = select_candidate(cands, cand_metrics, cfg.strengths(), lrm_metrics, cfg.promotion,
                                          base_labels, base_metrics, uri, code)
    _finish(cfg, uri, models, lrm_metrics, calib, merged, code, metrics=metrics)


@pipeline(enable_cache=True)
def baseline_merge_pipeline(config: dict, fingerprint: dict, code: str) -> None:
    """The same product path with a baseline method (task_arithmetic, ties, dare) for A/B runs."""
    cfg = PipelineConfig.model_validate(config)
    uri, models, lrm_metrics = _start(cfg, fingerprint, code)
    merged = merge(models, cfg.merge_config(), None, None, None, uri, code)
    _finish(cfg, uri, models, lrm_metrics, None, merged, code)
