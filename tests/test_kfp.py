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
    assert {"base__path", "base__revision", "strength", "method", "stage2__rho", "stage1__energy",
            "promotion__min_gain_over_lrm", "sweep__strengths"} <= params


def test_every_config_field_reaches_the_form_and_back(tmp_path):
    """The run form is generated from the pydantic config: each field is a parameter with the config's
    default and description, and the form's values come back as exactly that config."""
    import json

    from rainmerge.product.config import PipelineConfig
    from rainmerge.product.form import SKIP
    from rainmerge.product.kfp import configure_from_form

    mod = _module()
    params = yaml.safe_load(SPEC.read_text())["root"]["inputDefinitions"]["parameters"]

    def leaves(cls, prefix=""):
        from pydantic import BaseModel

        from rainmerge.product.form import _unwrap
        for name, info in cls.model_fields.items():
            tp = _unwrap(info.annotation)[0]
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                yield from leaves(tp, prefix + name + ".")
            elif prefix + name not in SKIP:
                yield prefix + name

    keys = set(leaves(PipelineConfig))
    assert {k.replace(".", "__") for k in keys} == set(params)  # every field, nothing hand-picked
    for f in mod.FIELDS:
        assert params[f.name]["defaultValue"] == f.default and f.key in params[f.name]["description"]
    form = {name: p["defaultValue"] for name, p in params.items()}
    configure_from_form(form, str(tmp_path / "cfg.json"))
    back = PipelineConfig.model_validate_json((tmp_path / "cfg.json").read_text())
    assert back.model_dump(exclude=SKIP) == mod.FORM_DEFAULTS.model_dump(exclude=SKIP)
    # values of every kind come back typed, and an empty text leaves an optional key unset
    form |= {"stage2__rho": 0.3, "stage1__o_proj": "per_head", "layers": "[1, 2]", "hub__extra_tags": '["x"]',
             "base__revision": "", "reasoning_calibration__sha256": "0" * 64, "evaluation__limit": "5"}
    configure_from_form(form, str(tmp_path / "cfg.json"))
    back = PipelineConfig.model_validate(json.loads((tmp_path / "cfg.json").read_text()))
    assert (back.stage2.rho, back.stage1.o_proj, back.layers, back.hub.extra_tags) == (0.3, "per_head", [1, 2], ["x"])
    assert back.base.revision is None and back.reasoning_calibration.sha256 == "0" * 64
    assert back.evaluation.limit == 5


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
        base__path=str(TOY / "base"), instruct__path=str(TOY / "instruct"), reasoning__path=str(TOY / "reasoning"),
        base__revision="", instruct__revision="", reasoning__revision="",
        reasoning_calibration__path=str(data / "reasoning_calibration.json"), reasoning_calibration__url="",
        reasoning_calibration__sha256="", instruction_calibration__path=str(data / "instruction_calibration.jsonl"),
        instruction_calibration__url="", instruction_calibration__sha256="", device="cpu", evaluation__device="cpu",
        evaluation__data=str(data), evaluation__limit="4", tracking__registered_model="t-kfp",
        tracking__tracking_uri="", work_dir=str(tmp_path / "work"), layers="[1, 2, 3]", forward_dtype="auto")
    info = registry.lineage("t-kfp", "1")
    assert "challenger" in info["aliases"] and info["tags"]["method"] == "rain"
    assert info["tags"]["promotion.decision"] in ("promoted", "rejected")
    assert {s["step"] for s in info["steps"]} >= {"load_models", "collect_features", "merge", "promote"}
    assert (Path(info["source"].removeprefix("file://")) / "rainmerge_provenance.json").is_file()
