"""The pipeline's steps, one function each: load -> compute -> save -> log.

The ZenML steps (steps/) and the Kubeflow components (rainmerge.product.kfp) are one-line wrappers
over STEPS. Each step takes the typed config sections it reads (so caching follows its inputs) and
references to earlier steps' folders; large data travels by reference (DirRef), never pickled.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..config import CalibrationSpec, CoefficientConfig, ModelsSpec, ProjectionConfig, MergeConfig, Runtime
from ..context import MergeContext, open_models, resolve_device
from ..merge import PROVENANCE_FILE, write_merged_model
from ..methods import build_method, needs_stages
from ..provenance import provenance
from .. import stages
from . import artifacts as A
from .artifacts import LoadedModels, ModelInput
from . import registry
from .pipeline_config import DiagnosticsConfig, EvaluationConfig, PromotionGates
from .tracking import flatten, log_calibration_datasets, run_ids, step_run

log = logging.getLogger("rainmerge")


def _open(models: LoadedModels, runtime: Runtime) -> MergeContext:
    """Reopen the trio exactly as load_models resolved it (pinned snapshot folders, no re-hashing)."""
    return open_models(models.spec(), runtime)


def load_models(models: ModelsSpec, fingerprint: dict[str, str], uri: str,
                diagnostics: DiagnosticsConfig | None = None, out: Path | None = None) -> LoadedModels:
    """Resolve the trio (revision -> commit), validate shapes and family, hash the weights once per run,
    and look at the trio: do the two task vectors overlap more than random subspaces would?"""
    import mlflow

    with step_run("load_models", uri):
        mlflow.log_params(flatten(models.model_dump(mode="json")))
        ctx = open_models(models, Runtime(device="cpu"))
        refs = {"base": models.base, "instruct": models.instruct, "reasoning": models.reasoning}
        inputs = {r: ModelInput(**s.describe(models.hash_inputs), trust_remote_code=refs[r].trust_remote_code)
                  for r, s in ctx.sources().items()}
        mlflow.set_tags({f"input.{r}.commit": d.commit for r, d in inputs.items() if d.commit})
        overlap = _overlap(ctx, diagnostics, out) if diagnostics is not None and diagnostics.overlap else None
        info = LoadedModels(inputs=inputs, arch=ctx.arch.dims() | {"model_type": ctx.arch.model_type},
                            layers=list(ctx.layers), modules=list(models.modules), warnings=list(ctx.warnings),
                            overlap=overlap)
        mlflow.log_dict(info.record(), "models.json")
    return info


def _overlap(ctx: MergeContext, diag: DiagnosticsConfig, out: Path | None) -> dict[str, Any]:
    import statistics

    import mlflow
    import torch

    from ..diagnostics import task_vector_overlap
    from .plots import overlap_plot

    per: dict[str, dict[str, float]] = {}
    for name, site in ctx.sites.items():
        base = ctx.base.get(name, torch.float32)
        per[name] = task_vector_overlap(ctx.instruct.get(name, torch.float32) - base,
                                        ctx.reasoning.get(name, torch.float32) - base, diag.rank)
    ratios = [p["ratio"] for p in per.values()]
    median = statistics.median(ratios)
    summary = {"median_ratio": median, "max_ratio": max(ratios), "rank": diag.rank, "modules": per}
    mlflow.log_metrics({"overlap.median_ratio": median, "overlap.max_ratio": max(ratios)})
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        mlflow.log_artifact(str(overlap_plot(per, out / "task_vector_overlap.png", diag.warn_ratio)))
    if median > diag.warn_ratio:
        msg = (f"the instruction and reasoning task vectors overlap {median:.1f}x more than random subspaces "
               f"(median over {len(per)} modules, rank {diag.rank}): the premise of a low-interference merge is weak")
        log.warning(msg)
        summary["warning"] = msg
    else:
        log.info("task vectors: median subspace overlap %.2fx the random baseline (max %.1fx) over %d modules",
                 median, max(ratios), len(per))
    return summary


def build_calibration_sets(models: LoadedModels, spec: CalibrationSpec, out: Path, uri: str) -> A.DirRef:
    """Verify (sha256), render with the LRM template, locate think tags and spans; log as datasets."""
    import mlflow

    with step_run("build_calibration_sets", uri):
        mlflow.log_params(flatten(spec.model_dump(mode="json")))
        cal = stages.encode_calibration(_open(models, Runtime(device="cpu")), spec)
        out.mkdir(parents=True, exist_ok=True)
        A.save_samples(out, cal.reasoning, cal.instruction)
        A.write_json(out / "calibration.json", cal.record)
        for role, rec in cal.record.items():
            mlflow.log_metrics({f"{role}.records": rec["records"], f"{role}.used": rec["used"]})
        log_calibration_datasets(cal.record)
    return A.make_ref("calibration", out, {"calibration": cal.record})


def collect_features(models: LoadedModels, calibration: A.DirRef, runtime: Runtime, out: Path,
                     uri: str) -> A.DirRef:
    """Stage 1: one LRM forward per reasoning sample; inputs of every merged linear at Omega_think."""
    import mlflow

    timings: dict[str, float] = {}
    with step_run("collect_features", uri):
        mlflow.log_params(flatten({"runtime": runtime.model_dump(mode="json")}))
        ctx = _open(models, runtime)
        reasoning, _ = A.load_samples(calibration.verify().path)
        with stages.timed(timings, "seconds"):
            feats = stages.stage1_features_any_path(ctx, reasoning)
        out.mkdir(parents=True, exist_ok=True)
        A.save_features(out, feats)
        mlflow.log_metrics(timings)
    rows = {l: {g: list(x.shape) for g, x in f.items()} for l, f in feats.items()}
    return A.make_ref("features", out, {"shapes": rows} | timings)


def compute_projectors(models: LoadedModels, features: A.DirRef, stage1: ProjectionConfig, runtime: Runtime,
                       out: Path, uri: str) -> A.DirRef:
    """Stage 1: one factorisation per feature group (paper Eq. 4), shared by every module reading it."""
    import mlflow

    timings: dict[str, float] = {}
    with step_run("compute_projectors", uri):
        mlflow.log_params(flatten({"stage1": stage1.model_dump(mode="json")}))
        ctx = _open(models, runtime)
        with stages.timed(timings, "seconds"):
            bases = stages.stage1_projectors(ctx, A.load_features(features.verify().path), stage1, consume=True)
        out.mkdir(parents=True, exist_ok=True)
        A.save_bases(out, bases)
        capped = sum(b.capped for g in bases.values() for b in g.values())
        mlflow.log_metrics({"capped_groups": capped} | timings)
    return A.make_ref("projectors", out, {"capped_groups": capped} | timings)


def score_attention_heads(models: LoadedModels, calibration: A.DirRef, projectors: A.DirRef,
                          stage2: CoefficientConfig, strength: float, runtime: Runtime, out: Path,
                          uri: str) -> A.DirRef:
    """Stage 2: response->instruction attention on the probe merge; alpha per head (Eq. 15)."""
    import mlflow

    from .plots import alpha_heatmap

    with step_run("score_attention_heads", uri):
        mlflow.log_params(flatten({"stage2": stage2.model_dump(mode="json"), "strength": strength}))
        ctx = _open(models, runtime)
        out.mkdir(parents=True, exist_ok=True)
        if stage2.enabled:
            _, instruction = A.load_samples(calibration.verify().path)
            bases = A.load_bases(projectors.verify().path)
            coeffs, detail = stages.stage2_coefficients_any_path(ctx, bases, instruction, stage2, strength)
            alpha_heatmap(detail["alpha"], detail["layers"], out / "alpha_heatmap.png")
        else:
            from ..coefficients import uniform_coefficients

            coeffs, detail = uniform_coefficients(list(ctx.layers), ctx.arch), stages.uniform_detail(ctx)
        A.save_coefficients(out, coeffs, detail)
        for name in ("rain_alpha.json", "alpha_heatmap.png"):
            if (out / name).is_file():
                mlflow.log_artifact(str(out / name))
    return A.make_ref("coefficients", out, {"estimator": detail["estimator"]})


def merge(models: LoadedModels, config: MergeConfig, calibration: A.DirRef | None, projectors: A.DirRef | None,
          coefficients: A.DirRef | None, out: Path, uri: str) -> A.DirRef:
    """Stage 3: stream the trio and write the merged folder atomically to out/model."""
    import mlflow

    from .plots import projection_plot

    with step_run("merge", uri):
        mlflow.log_params(flatten({k: getattr(config, k) for k in ("method", "strength", "density", "layers",
                                                                   "modules")}))
        ctx = _open(models, config.runtime())
        extra: dict[str, Any] = {}
        parts: dict[str, Any] = {}
        if needs_stages(config.method):
            assert projectors is not None and coefficients is not None
            parts = dict(arch=ctx.arch, bases=A.load_bases(projectors.verify().path),
                         coeffs=A.load_coefficients(coefficients.verify().path), device=ctx.device)
            extra["rain_alpha.json"] = json.loads((coefficients.path / "rain_alpha.json").read_text())
        cal_record = calibration.meta.get("calibration", {}) if calibration is not None else {}
        prov = provenance(config, ctx, models.input_records(), cal_record, {})
        prov["warnings"] += list(extra.get("rain_alpha.json", {}).get("warnings") or [])
        model_dir = write_merged_model(ctx.reasoning, ctx.base, ctx.instruct, ctx.sites, build_method(config, **parts),
                                       out / "model", prov, overwrite=True, max_shard_size=config.max_shard_size,
                                       progress=True, extra_files=extra)
        prov = json.loads((model_dir / PROVENANCE_FILE).read_text())
        mlflow.log_artifact(str(model_dir / PROVENANCE_FILE))
        if needs_stages(config.method):
            from ..projection import projection_summary

            stats = prov["module_stats"]
            log.info(projection_summary(stats))
            mlflow.log_metrics({"projection.mean_kept_norm": sum(s["kept_norm"] for s in stats.values()) / len(stats),
                                "projection.max_residual": max(s["residual"] for s in stats.values()),
                                "projection.exact_modules": sum(s.get("rule") == "exact" for s in stats.values())})
            cast = [s for s in stats.values() if "cast_residual" in s]
            if cast:  # the identity of the weights written (projection.max_residual is the solver's, pre-cast)
                mlflow.log_metrics({"projection.max_cast_residual": max(s["cast_residual"] for s in cast),
                                    "projection.max_cast_residual_vs_lrm": max(s["cast_residual_vs_lrm"] for s in cast)})
            mlflow.log_artifact(str(projection_plot(stats, out / "projection_stats.png")))
        mlflow.log_metric("warnings", len(prov["warnings"]))
        # which step and run made these weights: the registered version names them (a sweep has several)
        made_by = {"step": run_ids().get("zenml.step"), "mlflow_run_id": mlflow.active_run().info.run_id}
    return A.make_ref("merged_model", model_dir, {"method": config.method, "warnings": prov["warnings"],
                                                  "strength": config.strength, **made_by})


def load_benchmarks(evaluation: EvaluationConfig, data_dir: str, calibration_file: str | None) -> list[Any]:
    """The configured pinned sets (or the embedded eval_*.jsonl of data_dir), held out and digested."""
    from ..eval.benchmarks import embedded_specs, load_benchmark

    specs = list(evaluation.benchmarks) or embedded_specs(data_dir)
    if evaluation.limit:
        specs = [s.model_copy(update={"limit": min(s.limit or evaluation.limit, evaluation.limit)}) for s in specs]
    return [load_benchmark(s, calibration_file) for s in specs]


def evaluate(models: LoadedModels, target: str, evaluation: EvaluationConfig, data_dir: str,
             calibration_file: str | None, uri: str, merged: A.DirRef | None = None) -> dict[str, Any]:
    """Pinned benchmarks, per-sample records, pass@1 metrics with per-prompt units for the paired gates,
    L_think; the LRM's evaluation is reused when its weights, settings and data are unchanged."""
    import mlflow

    from ..eval.suite import evaluate_benchmarks
    from . import evaldata

    folder = merged.verify().path if merged is not None else Path(models.inputs[target].resolved_dir)
    with step_run(f"evaluate_{target}", uri):
        mlflow.log_params(flatten({"target": target, **evaluation.model_dump(mode="json", exclude={"benchmarks"})}))
        benchmarks = load_benchmarks(evaluation, data_dir, calibration_file)  # before any model is loaded
        metas = [b.meta for b in benchmarks]
        evaldata.log_datasets(metas, "evaluation")
        key = evaldata.content_key(evaldata.model_digest(models, target, merged), evaluation, metas)
        mlflow.set_tag("eval_cache_key", key)
        hit = evaldata.cached(key) if target == "reasoning" and evaluation.reuse_lrm else None
        if hit is not None:
            res, rid = hit
            log.info("evaluate_%s: reusing the evaluation of run %s (same weights, settings and data)", target, rid)
            mlflow.set_tag("eval_reused_from", rid)
        else:
            rdir = Path(evaluation.records_dir) / key[:32]
            res, records = evaluate_benchmarks(
                folder, benchmarks, rdir / "completions.jsonl", engine=evaluation.engine,
                sampling=evaluation.sampling, max_new_tokens=evaluation.max_new_tokens,
                device=resolve_device(evaluation.device), lrm_dir=models.inputs["reasoning"].resolved_dir,
                data_dir=data_dir, name=target)
            scored = rdir / f"records_{target}.jsonl"
            scored.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
            evaldata.log_records(records, scored, target)
            if target == "reasoning":
                evaldata.store(key, res, scored, target)
        mlflow.log_metrics({k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        _log_eval_to_parent(models, target, res, data_dir, merged)
    return res


def select_candidate(merged: list[A.DirRef], metrics: list[dict[str, Any]], strengths: list[float],
                     lrm_metrics: dict[str, Any], gates: PromotionGates, baseline_labels: list[dict[str, Any]],
                     baseline_metrics: list[dict[str, Any]], out: Path, uri: str
                     ) -> tuple[A.DirRef, dict[str, Any], dict[str, Any]]:
    """The strength sweep's fan-in: pick the best RAIN candidate that passes the gates (IF, then
    L_think break ties), plot what each strength trades against the baselines; promote takes it."""
    import mlflow

    from .plots import tradeoff_plot

    with step_run("select_candidate", uri):
        cands = [{"strength": s, "metrics": m} for s, m in zip(strengths, metrics)]
        best, table = registry.select_candidate(cands, lrm_metrics, gates)
        baselines = [{**lab, "metrics": m} for lab, m in zip(baseline_labels, baseline_metrics)]
        rows = [{"method": "rain", **c} for c in cands] + baselines
        out.mkdir(parents=True, exist_ok=True)
        mlflow.log_params({"strengths": ",".join(f"{x:g}" for x in strengths), "selected_strength": strengths[best]})
        mlflow.log_dict({"candidates": table, "baselines": baselines}, "selection.json")
        bars = {gates.metric: lrm_metrics.get(gates.metric, 0.0) + gates.min_gain_over_lrm,
                "reasoning_acc": lrm_metrics.get("reasoning_acc", 0.0) - gates.max_reasoning_drop}
        bars |= {k: v for k, v in gates.floors.items() if k == "think_well_formed"}
        mlflow.log_artifact(str(tradeoff_plot(rows, out / "strength_tradeoff.png", strengths[best], lrm_metrics,
                                              bars)))
        for row in table:
            mlflow.log_metrics({f"{k}": float(row[k]) for k in ("if_inst_strict", "think_well_formed", "reasoning_acc")
                                if row.get(k) is not None}, step=row["index"])
        log.info("strength sweep: chose %g of %s (%s)", strengths[best], strengths,
                 "passes the gates" if table[best]["passes"] else "none passes; the best is registered as rejected")
    selection = {"selected_strength": strengths[best], "candidates": table}
    chosen = merged[best].model_copy(update={"meta": {**merged[best].meta, "candidate": best}})
    return chosen, metrics[best], selection


# register, gate and publish (release.py): re-exported here so STEPS stays the one table
from .release import promote, push_to_hub  # noqa: E402


# The one table of pipeline steps: the ZenML wrappers (steps/) and the Kubeflow entry read it.
STEPS = {f.__name__: f for f in (load_models, build_calibration_sets, collect_features, compute_projectors,
                                  score_attention_heads, merge, evaluate, select_candidate, promote, push_to_hub)}


def _log_eval_to_parent(models: LoadedModels, target: str, res: dict[str, Any], data_dir: str,
                        merged: A.DirRef | None) -> None:
    """Evaluation sets as dataset inputs; lrm.* (reasoning eval) / merged.* (merged eval) on the parent run,
    and, once the merged model is evaluated (the LRM eval ran first), the parent run's markdown description."""
    from mlflow import MlflowClient

    from .tracking import log_parent_metrics, log_parent_summary, parent_run_id

    if target == "reasoning":
        log_parent_metrics(res, "lrm")
    elif target == "merged" and (parent := parent_run_id()):
        got = MlflowClient().get_run(parent).data.metrics
        lrm = {k.removeprefix("lrm."): v for k, v in got.items() if k.startswith("lrm.")}
        params = {f"input.{r}": d.path + (f" @ {d.commit[:12]}" if d.commit else " (local folder)")
                  for r, d in models.inputs.items()}
        params["method"] = (merged.meta.get("method") if merged is not None else None)
        log_parent_summary(res, lrm, None, params=params, data_dir=data_dir)
