"""The models a step receives are one typed, JSON-serialisable object (LoadedModels): it survives the
JSON round trip ZenML's pydantic materializer and the Kubeflow entry make, keeps describe()'s record
shape for provenance, and every step that takes `models` declares it."""

import ast
import inspect
import typing
from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from rainmerge.product.artifacts import LoadedModels, ModelInput
from rainmerge.product.step_bodies import STEPS

ROOT = Path(__file__).resolve().parents[1]


def _loaded(hashed: bool = True) -> LoadedModels:
    inputs = {}
    for r in ("base", "instruct", "reasoning"):
        d = {"role": r, "path": f"acme/{r}", "revision": "main", "commit": "c" * 40, "resolved_dir": f"/snap/{r}",
             "model_type": "qwen2", "config_sha256": "1" * 64}
        if hashed:
            d["weights_sha256"] = {"model.safetensors": "2" * 64}
        inputs[r] = ModelInput(**d, trust_remote_code=r == "reasoning")
    return LoadedModels(inputs=inputs, arch={"num_layers": 2, "model_type": "qwen2"}, layers=[0, 1],
                        modules=["q", "o"], warnings=["w"])


@pytest.mark.parametrize("hashed", [True, False])
def test_json_round_trip_is_identity(hashed):
    m = _loaded(hashed)
    back = LoadedModels.model_validate_json(m.model_dump_json())
    assert back == m and back.arch["num_layers"] == 2 and isinstance(back.arch["num_layers"], int)
    assert TypeAdapter(LoadedModels).validate_python(m.model_dump(mode="json")) == m  # the KFP path


def test_records_keep_describes_shape():
    rec = _loaded(hashed=False).input_records()["base"]
    assert list(rec) == ["role", "path", "revision", "commit", "resolved_dir", "model_type", "config_sha256",
                         "trust_remote_code"]  # no weights_sha256 key when the run did not hash
    assert "weights_sha256" in _loaded().input_records()["base"]
    assert "overlap" not in _loaded().record()


def test_spec_reopens_the_pinned_folders_without_rehashing():
    spec = _loaded().spec()
    assert spec.reasoning.path == "/snap/reasoning" and spec.reasoning.trust_remote_code
    assert not spec.base.trust_remote_code and spec.layers == [0, 1] and spec.modules == ["q", "o"]
    assert spec.hash_inputs is False


def test_unknown_or_missing_fields_fail_loudly():
    with pytest.raises(ValidationError):
        ModelInput(role="base", path="p", resolved_dir="/x", config_sha256="c", size=3)
    with pytest.raises(ValidationError):
        LoadedModels(inputs={}, arch={}, layers=[])


def test_every_step_taking_models_declares_the_type():
    takers = [n for n, f in STEPS.items() if "models" in inspect.signature(f).parameters and n != "load_models"]
    assert len(takers) >= 7
    for name in takers:
        assert typing.get_type_hints(STEPS[name])["models"] is LoadedModels, name
    assert typing.get_type_hints(STEPS["load_models"])["return"] is LoadedModels
    # and the ZenML wrappers, read from source (importing zenml here would cost ~20 s)
    for f in (ROOT / "steps").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef):
                for a in node.args.args:
                    if a.arg == "models" and f.stem != "load_models":
                        assert ast.unparse(a.annotation) == "LoadedModels", f.name
