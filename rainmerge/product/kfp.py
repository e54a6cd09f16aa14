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
from .config import PipelineConfig, load_pipeline_config
from .steps import STEPS
from .tracking import tracking_uri

_REF_INPUTS = {"calibration", "features", "projectors", "coefficients", "merged"}


def configure(params: dict[str, Any], out_path: str) -> None:
    """Validate the run parameters (the merge config) once; every component reads the result."""
    def cal(src: str, sha: str) -> dict[str, Any]:
        return {"url": src, "sha256": sha} if src.startswith(("http://", "https://")) else \
            {"path": src, "sha256": sha or None}

    p = dict(params)
    layers = [int(x) for x in str(p.pop("layers", "") or "").split(",") if x.strip()]
    tree: dict[str, Any] = {
        "base": {"path": p["base"], "revision": p.get("base_revision") or None},
        "instruct": {"path": p["instruct"], "revision": p.get("instruct_revision") or None},
        "reasoning": {"path": p["reasoning"], "revision": p.get("reasoning_revision") or None},
        "reasoning_calibration": cal(p["reasoning_calibration"], p.get("reasoning_calibration_sha256", "")),
        "instruction_calibration": cal(p["instruction_calibration"], p.get("instruction_calibration_sha256", "")),
        "method": p["method"], "strength": p["strength"], "layers": layers or None, "device": p["device"],
        "output": "unused", "work_dir": p["work_dir"],
        "evaluation": {"data": p["eval_data"], "device": p["device"], "limit": p.get("eval_limit") or None},
        "promotion": {"min_gain_over_lrm": p["min_gain_over_lrm"], "min_think_well_formed": p["min_think_well_formed"],
                      "max_reasoning_drop": p["max_reasoning_drop"]},
        "tracking": {"tracking_uri": p["mlflow_tracking_uri"] or None, "registered_model": p["registered_model"]},
        "stage1": {"positions": p.get("positions", "window")},
    }
    cfg = load_pipeline_config(None, {k: v for k, v in _flat(tree).items()})
    Path(out_path).write_text(cfg.model_dump_json())


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and k not in ("base", "instruct", "reasoning", "reasoning_calibration",
                                             "instruction_calibration"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
        "load_models": lambda: STEPS["load_models"](cfg.models_spec(), {}, uri),
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
