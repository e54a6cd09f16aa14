"""The Kubeflow path: reproducible compile, GPU placement, and a local run on the toy trio."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "assets" / "toy"
SPEC = ROOT / "k8s" / "kubeflow" / "rainmerge_pipeline.yaml"


def _module():
    spec = importlib.util.spec_from_file_location("rainmerge_kfp_pipeline", ROOT / "k8s" / "kubeflow" / "pipeline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_spec_equals_a_fresh_compile(tmp_path):
    fresh = _module().compile_to(tmp_path / "fresh.yaml")
    assert fresh.read_text() == SPEC.read_text(), "run: python k8s/kubeflow/pipeline.py"


def test_gpu_only_on_gpu_tasks_and_parameters_are_the_merge_config():
    mod = _module()
    spec = yaml.safe_load(SPEC.read_text())
    executors = spec["deploymentSpec"]["executors"]
    gpu = {name.removeprefix("exec-") for name, ex in executors.items()
           if ex["container"].get("resources", {}).get("accelerator", {}).get("resourceType") == "nvidia.com/gpu"}
    assert gpu == {t.replace("_", "-") for t in mod.GPU_TASKS}
    params = set(spec["root"]["inputDefinitions"]["parameters"])
    assert {"base", "base_revision", "instruct", "reasoning", "reasoning_calibration", "strength", "method",
            "min_gain_over_lrm", "min_think_well_formed", "max_reasoning_drop"} <= params


@pytest.mark.skipif(not (TOY / "reasoning" / "config.json").is_file(), reason="toy trio not built")
def test_local_run_on_the_toy_trio(tmp_path, monkeypatch):
    from kfp import local

    from rainmerge.product import registry

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    mod = _module()
    data = TOY / "data"
    mod.rainmerge_pipeline(
        base=str(TOY / "base"), instruct=str(TOY / "instruct"), reasoning=str(TOY / "reasoning"),
        base_revision="", instruct_revision="", reasoning_revision="",
        reasoning_calibration=str(data / "reasoning_calibration.json"), reasoning_calibration_sha256="",
        instruction_calibration=str(data / "instruction_calibration.jsonl"), instruction_calibration_sha256="",
        device="cpu", eval_data=str(data), eval_limit=4, registered_model="t-kfp", mlflow_tracking_uri="",
        work_dir=str(tmp_path / "work"), layers="1,2,3")
    info = registry.lineage("t-kfp", "1")
    assert "challenger" in info["aliases"] and info["tags"]["method"] == "rain"
    assert info["tags"]["promotion.decision"] in ("promoted", "rejected")
    assert {s["step"] for s in info["steps"]} >= {"load_models", "collect_features", "merge", "promote"}
    assert (Path(info["source"].removeprefix("file://")) / "rainmerge_provenance.json").is_file()
