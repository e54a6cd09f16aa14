"""Entry point of the Kubeflow components: the same step bodies as the ZenML steps.

Large outputs go under `work_dir/<run id>/<step>` (a shared PVC); only small JSON refs travel as
KFP artifacts. Stage 1/2 are no-ops for baseline methods, so one static DAG serves every method.
Each component is one call into STEPS, with the same config sections the ZenML pipeline passes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..methods import METHODS
from .artifacts import DirRef
from .config import PipelineConfig
from .steps import STEPS
from .tracking import tracking_uri

_REF_INPUTS = {"calibration", "features", "projectors", "coefficients", "merged"}


def configure_from_form(form: dict[str, Any], out_path: str) -> None:
    """The run form's values (one per config field, rainmerge.product.form) -> the validated config,
    written once; every component reads it."""
    from .form import config_from_form, form_fields

    fields = form_fields(PipelineConfig.model_construct())  # names and kinds only; the values are the form's
    known = {f.name for f in fields}
    unknown = sorted(set(form) - known)
    if unknown:
        raise ValueError(f"form fields not in the config: {unknown}")
    cfg = config_from_form(form, fields)
    Path(out_path).write_text(cfg.model_dump_json())


def _load(name: str, path: str) -> Any:
    data = json.loads(Path(path).read_text())
    return DirRef.model_validate(data) if name in _REF_INPUTS and data is not None else data


def run(step: str, config_path: str, out_path: str, run_id: str, **inputs: str) -> None:
    """Run one step of the Kubeflow pipeline; writes its (small) JSON result to out_path."""
    cfg = PipelineConfig.model_validate_json(Path(config_path).read_text())
    os.environ.update({"RAINMERGE_RUN_ID": run_id, "RAINMERGE_RUN_NAME": f"kfp-{run_id}",
                       "RAINMERGE_PIPELINE": "rainmerge-kfp", "RAINMERGE_ORCHESTRATOR": "kubeflow"})
    uri = tracking_uri(cfg.tracking.tracking_uri)
    a = {k: _load(k, v) for k, v in inputs.items()}
    out = Path(cfg.work_dir or ".") / run_id / step
    out.mkdir(parents=True, exist_ok=True)
    rain = METHODS[cfg.method].needs_stages
    rt, data, held = cfg.runtime(), cfg.eval_data_dir(), cfg.held_out_file()
    calls: dict[str, Any] = {
        "load_models": lambda: STEPS["load_models"](cfg.models_spec(), {}, uri, cfg.diagnostics, out),
        "build_calibration_sets": lambda: STEPS["build_calibration_sets"](
            a["models"], cfg.calibration_spec(), out, uri) if rain else None,
        "collect_features": lambda: STEPS["collect_features"](a["models"], a["calibration"], rt, out, uri)
        if rain else None,
        "compute_projectors": lambda: STEPS["compute_projectors"](a["models"], a["features"], cfg.stage1, rt, out,
                                                                  uri) if rain else None,
        "score_attention_heads": lambda: STEPS["score_attention_heads"](
            a["models"], a["calibration"], a["projectors"], cfg.stage2, cfg.strength, rt, out, uri) if rain else None,
        "merge": lambda: STEPS["merge"](a["models"], cfg.merge_config(), a.get("calibration"), a.get("projectors"),
                                        a.get("coefficients"), out, uri),
        "evaluate_reasoning": lambda: STEPS["evaluate"](a["models"], "reasoning", cfg.evaluation, data, held, uri),
        "evaluate_merged": lambda: STEPS["evaluate"](a["models"], "merged", cfg.evaluation, data, held, uri,
                                                     a.get("merged")),
        "promote": lambda: STEPS["promote"](a["merged"], a["metrics"], a["lrm_metrics"], a["models"],
                                            a.get("calibration"), cfg.merge_config(), cfg.promotion,
                                            cfg.tracking.registered_model, out, uri).as_dict(),
    }
    if step not in calls:
        raise ValueError(f"unknown step {step}")
    result = calls[step]()
    Path(out_path).write_text(json.dumps(result.model_dump() if isinstance(result, DirRef) else result))
