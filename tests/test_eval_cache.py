"""The LRM is evaluated once per (weights digest, evaluation settings, data digests): the evaluate
step's second call with the same inputs reuses the stored evaluation; a changed setting does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from rainmerge.product.artifacts import LoadedModels
from rainmerge.product.pipeline_config import EvaluationConfig

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "assets" / "toy"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (TOY / "reasoning" / "config.json").is_file(), reason="toy trio not built")]


def _models() -> LoadedModels:
    lrm = str(TOY / "reasoning")
    return LoadedModels(inputs={"reasoning": {"role": "reasoning", "path": lrm, "resolved_dir": lrm, "commit": None,
                                              "config_sha256": "toy-config",
                                              "weights_sha256": {"model.safetensors": "toy-lrm"}}},
                        arch={}, layers=[], modules=[])


def test_lrm_evaluation_is_reused_by_content(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from rainmerge.product.step_bodies import evaluate

    ev = EvaluationConfig(limit=4, device="cpu", records_dir=str(tmp_path / "records"), max_new_tokens=64)
    data_dir = tmp_path / "data"  # the two embedded sets only (no L_think traces: keeps the test short)
    data_dir.mkdir()
    for name in ("eval_instructions.jsonl", "eval_problems.jsonl"):
        shutil.copy(TOY / "data" / name, data_dir / name)
    data = str(data_dir)
    first = evaluate(_models(), "reasoning", ev, data, None, mlflow.get_tracking_uri())
    second = evaluate(_models(), "reasoning", ev, data, None, mlflow.get_tracking_uri())
    assert second["paired"] == first["paired"] and second["if_inst_strict"] == first["if_inst_strict"]
    runs = MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()],
        filter_string="tags.eval_cache_key != ''", order_by=["attributes.start_time ASC"])
    steps = [r for r in runs if r.info.run_name == "evaluate_reasoning"][-2:]
    assert steps[0].data.tags["eval_cache_key"] == steps[1].data.tags["eval_cache_key"]
    assert "eval_reused_from" not in steps[0].data.tags and steps[1].data.tags.get("eval_reused_from")
    # every evaluation set is a dataset input of the step run, digest = the rows' sha256
    inputs = MlflowClient().get_run(steps[0].info.run_id).inputs.dataset_inputs
    assert {i.dataset.name for i in inputs} == {"toy_if", "toy_math"}
    assert {i.dataset.digest for i in inputs} == {d["sha256"][:36] for d in first["datasets"]}
    # another budget is another key: evaluated again, not reused
    third = evaluate(_models(), "reasoning", ev.model_copy(update={"max_new_tokens": 48}), data, None,
                     mlflow.get_tracking_uri())
    assert third["n_samples"] == first["n_samples"]
    last = MlflowClient().search_runs([steps[0].info.experiment_id], order_by=["attributes.start_time DESC"],
                                      max_results=1)[0]
    assert "eval_reused_from" not in last.data.tags
    assert last.data.tags["eval_cache_key"] != steps[0].data.tags["eval_cache_key"]
