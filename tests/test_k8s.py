"""Kubernetes assets, checked offline: schemas, lint, GPU placement, no secrets committed."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
RUN_CONFIG = ROOT / "configs" / "k8s" / "gpu-steps.zenml.yaml"
GPU_STEPS = {"collect_features", "compute_projectors", "score_attention_heads", "merge", "evaluate_reasoning",
             "evaluate_merged"}
# k8s/kubeflow holds the KFP compiler's output: checked by tests/test_kfp.py, not a manifest
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if "kubeflow" not in p.parts)
YAMLS = [*MANIFESTS, RUN_CONFIG]


def _docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_yamllint(path):
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig("extends: default\nrules: {line-length: {max: 120}, document-start: disable, "
                          "truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}}")
    problems = [p for p in linter.run(path.read_text(), conf) if p.level == "error"]
    assert not problems, [str(p) for p in problems]


@pytest.mark.parametrize("path", sorted([*(K8S / "base").glob("*.yaml"), *(K8S / "templates").glob("*.yaml")]),
                         ids=lambda p: p.name)
def test_manifests_validate_against_kubernetes_schema(path):
    import kubernetes_validate

    for doc in _docs(path):
        if doc.get("kind") == "Kustomization":
            continue
        kubernetes_validate.validate(doc, "1.35.0", strict=True)


def test_schema_check_is_not_vacuous():
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "two", "selector": {}, "template": {}}}
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(bad, "1.35.0", strict=True)


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    files = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files


def _gpu(settings: dict) -> bool:
    res = (((settings or {}).get("orchestrator") or {}).get("pod_settings") or {}).get("resources") or {}
    return any("nvidia.com/gpu" in (v or {}) for v in res.values())


def test_gpu_requests_exactly_on_gpu_steps():
    from pipelines.rain_merge import rain_merge_pipeline  # noqa: F401  (the step names below exist)

    cfg = yaml.safe_load(RUN_CONFIG.read_text())
    assert not _gpu(cfg["settings"])  # the default pod (and bookkeeping steps) get no GPU
    orch = cfg["settings"]["orchestrator"]["orchestrator_pod_settings"]
    assert "nvidia.com/gpu" not in str(orch)
    gpu = {name for name, s in cfg["steps"].items() if _gpu(s.get("settings"))}
    assert gpu == GPU_STEPS
    step_names = {"load_models", "build_calibration_sets", "collect_features", "compute_projectors",
                  "score_attention_heads", "merge", "evaluate_reasoning", "evaluate_merged", "promote",
                  "push_to_hub"}
    assert set(cfg["steps"]) <= step_names
    for path in MANIFESTS:
        assert "nvidia.com/gpu" not in path.read_text(), f"{path} requests a GPU"


def test_run_config_settings_parse_with_zenml():
    from zenml.integrations.kubernetes.flavors.kubernetes_orchestrator_flavor import KubernetesOrchestratorSettings

    cfg = yaml.safe_load(RUN_CONFIG.read_text())
    KubernetesOrchestratorSettings.model_validate(cfg["settings"]["orchestrator"])
    for s in cfg["steps"].values():
        KubernetesOrchestratorSettings.model_validate(s["settings"]["orchestrator"])


def test_no_secret_values_committed():
    for doc in _docs(K8S / "templates" / "secrets.template.yaml"):
        for key, value in doc.get("stringData", {}).items():
            assert value.startswith("<") or key == "username", (key, value)
    import re

    token = re.compile(r"hf_[A-Za-z0-9]{30,}")  # the shape of a real Hugging Face token
    for path in [*K8S.rglob("*"), ROOT / "Dockerfile", RUN_CONFIG]:
        if path.is_file():
            assert not token.search(path.read_text()), path
