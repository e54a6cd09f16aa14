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


def test_parameters_are_the_merge_config_in_its_order():
    mod = _module()
    spec = next(yaml.safe_load_all(SPEC.read_text()))
    params = set(spec["root"]["inputDefinitions"]["parameters"])
    assert {"base__path", "base__revision", "strength", "method", "stage2__rho", "stage1__energy",
            "promotion__min_gain_over_lrm", "hub__repo_id"} <= params
    # what Kubeflow cannot act on is not offered: sweeps (ZenML fans out), the ZenML model, remote code
    assert not {p for p in params if p.startswith("sweep__") or p.endswith("trust_remote_code")}
    assert "tracking__zenml_model" not in params
    keys = [f.key for f in mod.FIELDS]
    sections = list(dict.fromkeys(k.split(".")[0] for k in keys))
    from rainmerge.product.pipeline_config import PipelineConfig
    assert sections == [k for k in PipelineConfig.model_fields if k in sections]  # the config's own order


def test_every_config_field_reaches_the_form_and_back(tmp_path):
    """The run form is generated from the pydantic config: each field is a typed parameter with the
    config's default and a description, and the form's values come back as exactly that config."""
    from rainmerge.product.pipeline_config import PipelineConfig
    from rainmerge.product.form import KFP_SKIP
    from rainmerge.product.kfp import config_from_form

    mod = _module()
    params = next(yaml.safe_load_all(SPEC.read_text()))["root"]["inputDefinitions"]["parameters"]

    def leaves(cls, prefix=""):
        from pydantic import BaseModel

        from rainmerge.product.form import _unwrap
        for name, info in cls.model_fields.items():
            tp = _unwrap(info.annotation)[0]
            if prefix + name in KFP_SKIP:
                continue
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                yield from leaves(tp, prefix + name + ".")
            else:
                yield prefix + name

    keys = set(leaves(PipelineConfig))
    assert {k.replace(".", "__") for k in keys} == set(params)  # every field, nothing hand-picked
    kinds = {"int": "NUMBER_INTEGER", "float": "NUMBER_DOUBLE", "bool": "BOOLEAN", "str": "STRING",
             "list": "LIST", "dict": "STRUCT"}
    for f in mod.FIELDS:
        p = params[f.name]
        assert p["parameterType"] == kinds[f.kind.__name__], f.name
        assert p.get("defaultValue") == f.default or (f.default is None and p.get("isOptional")), f.name
        assert p["description"].strip() and p["description"].split(" (")[0] != f.key, f.name  # a real description
    assert params["stage1__radius"]["parameterType"] == "NUMBER_INTEGER"
    assert params["layers"]["parameterType"] == "LIST"
    form = {name: p.get("defaultValue") for name, p in params.items()}
    back = config_from_form(form)
    exclude: dict = {}
    for key in KFP_SKIP:
        head, _, tail = key.partition(".")
        exclude[head] = {tail: True} | (exclude.get(head) or {}) if tail else True
    assert back.model_dump(exclude=exclude) == mod.FORM_DEFAULTS.model_dump(exclude=exclude)
    # values of every kind come back typed, and an empty text leaves an optional key unset
    form |= {"stage2__rho": 0.3, "stage1__o_proj": "per_head", "layers": [1, 2], "hub__extra_tags": ["x"],
             "base__revision": "", "reasoning_calibration__sha256": "0" * 64, "evaluation__limit": 5}
    back = config_from_form(form)
    assert (back.stage2.rho, back.stage1.o_proj, back.layers, back.hub.extra_tags) == (0.3, "per_head", [1, 2], ["x"])
    assert back.base.revision is None and back.reasoning_calibration.sha256 == "0" * 64
    assert back.evaluation.limit == 5
    assert not back.base.trust_remote_code  # no form field can switch remote code on
    import pytest as _p
    with _p.raises(ValueError, match="not in the config"):
        config_from_form(form | {"base__trust_remote_code": True})


@pytest.mark.skipif(not (TOY / "reasoning" / "config.json").is_file(), reason="toy trio not built")
def test_local_run_on_the_toy_trio(tmp_path, monkeypatch):
    from kfp import local

    from rainmerge.product import registry

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("RAINMERGE_RUN_ID", "local-kfp-1")  # on a cluster: the pod's pipeline/runid label
    # kfp 2.17's local runner cannot leave an optional typed parameter (`int = None`, "unset" in the form)
    # unset, which the cluster backend does: give such fields values (an empty list stays unset)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    mod = _module()
    data = TOY / "data"
    mod.rainmerge_pipeline(
        base__path=str(TOY / "base"), instruct__path=str(TOY / "instruct"), reasoning__path=str(TOY / "reasoning"),
        base__revision="", instruct__revision="", reasoning__revision="",
        reasoning_calibration__path=str(data / "reasoning_calibration.json"), reasoning_calibration__url="",
        reasoning_calibration__sha256="", instruction_calibration__path=str(data / "instruction_calibration.jsonl"),
        instruction_calibration__url="", instruction_calibration__sha256="", device="cpu", evaluation__device="cpu",
        evaluation__data=str(data), evaluation__limit=4, tracking__registered_model="t-kfp",
        tracking__tracking_uri="", work_dir=str(tmp_path / "work"), layers=[1, 2, 3], forward_dtype="auto", hub__enabled=False,
        reasoning_calibration__max_samples=10_000, instruction_calibration__max_samples=10_000,
        # the toy's embedded held-out sets, greedy, short budgets (the form opens on the 7B protocol)
        evaluation__benchmarks="[]", evaluation__max_new_tokens=64, evaluation__sampling__temperature=0.0,
        evaluation__sampling__top_p=1.0, evaluation__sampling__samples=1, evaluation__engine__kv_cache_gib=0.5,
        evaluation__engine__page_size=32, evaluation__engine__max_batch_tokens=512, evaluation__engine__command=[],
        evaluation__engine__gpu_memory=[],
        gpu_memory=[])
    info = registry.lineage("t-kfp", "1")
    assert "challenger" in info["aliases"] and info["tags"]["method"] == "rain"
    assert info["tags"]["promotion.decision"] in ("promoted", "rejected")
    assert {s["step"] for s in info["steps"]} >= {"load_models", "collect_features", "merge", "promote"}  # hub off: no push run
    assert (Path(info["source"].removeprefix("file://")) / "rainmerge_provenance.json").is_file()
