"""Dashboards (issue 14): MLflow classic view, parent-run story, version descriptions, HTML lineage report."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "assets" / "toy" / "data"
M = {"if_inst_strict": 0.8, "if_prompt_strict": 0.7, "reasoning_acc": 0.9, "think_well_formed": 1.0}
L = {"if_inst_strict": 0.5, "if_prompt_strict": 0.4, "reasoning_acc": 0.92, "think_well_formed": 1.0}


def _browser() -> str | None:
    for b in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(b):
            return shutil.which(b)
    return None


def test_experiment_is_model_training_and_parent_run_tells_the_story(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from rainmerge.product import tracking

    with tracking.step_run("evaluate_merged", experiment_name="dash-exp") as child:
        found = tracking.log_eval_datasets(DATA)
        tracking.log_parent_summary(M, L, {"promote": True, "version": "3", "reasons": ["PASS x"]},
                                    params={"method": "rain"}, data_dir=DATA)
        parent = tracking.parent_run_id()
    exp = mlflow.get_experiment_by_name("dash-exp")
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    run = MlflowClient().get_run(parent)
    assert run.data.metrics["merged.if_inst_strict"] == 0.8 and run.data.metrics["lrm.if_inst_strict"] == 0.5
    note = run.data.tags["mlflow.note.content"]
    assert "PROMOTED" in note and "| if_inst_strict | 0.8000 | 0.5000 | +0.3000 |" in note
    assert found and "eval_instructions" in found
    digests = {d.dataset.digest for d in run.inputs.dataset_inputs}
    assert found["eval_instructions"]["sha256"][:36] in digests
    step = MlflowClient().get_run(child.info.run_id)
    assert {d.dataset.name for d in step.inputs.dataset_inputs} >= set(found)


def test_plots_have_integer_layer_ticks_and_titles(tmp_path):
    from rainmerge.product import plots

    p = plots.alpha_heatmap([[0.1, 0.5, 0.9]] * 3, [0, 5, 9], tmp_path / "a.png")
    q = plots.projection_plot({f"model.layers.{i}.mlp.up_proj": {"kept_norm": 0.5, "residual": 1e-3}
                               for i in range(3)}, tmp_path / "p.png")
    assert p.stat().st_size > 1000 and q.stat().st_size > 1000
