"""Kubernetes assets, checked offline: schemas, lint, GPU placement, no secrets committed."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
RUN_CONFIG = ROOT / "configs" / "k8s" / "gpu-steps.zenml.yaml"
from rainmerge.product.dag import DAG, GPU_STEPS  # noqa: E402  (the one list)
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
    assert gpu == set(GPU_STEPS)
    assert set(cfg["steps"]) <= {s.name for s in DAG}
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


def _rendered() -> list[dict]:
    import shutil
    import subprocess

    if not shutil.which("kubectl"):
        pytest.skip("kubectl (for `kubectl kustomize`) not installed")
    out = subprocess.run(["kubectl", "kustomize", str(K8S / "base")], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_rendered_manifests_validate_strictly():
    import kubernetes_validate

    docs = _rendered()
    assert {d["kind"] for d in docs} >= {"Namespace", "Deployment", "StatefulSet", "Service", "NetworkPolicy", "Role"}
    for doc in docs:
        kubernetes_validate.validate(doc, "1.35.0", strict=True)


def test_rendered_workloads_meet_the_restricted_profile():
    """Numeric non-root user, no privilege escalation, every capability dropped, seccomp RuntimeDefault,
    requests and limits; no Role can read Secrets; the namespace enforces `restricted`."""
    docs = _rendered()
    ns = next(d for d in docs if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert {d["metadata"]["name"] for d in workloads} == {"mlflow", "mlflow-postgres", "zenml"}
    for d in workloads:
        pod = d["spec"]["template"]["spec"]
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and isinstance(sc["runAsUser"], int) and sc["runAsUser"] > 0
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        for c in pod["containers"]:
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert c["resources"]["limits"]["memory"] and c["resources"]["limits"]["cpu"], c["name"]
    for role in (d for d in docs if d["kind"] in ("Role", "ClusterRole")):
        assert all("secrets" not in r.get("resources", []) for r in role["rules"]), role["metadata"]["name"]
    mlflow = next(d for d in workloads if d["metadata"]["name"] == "mlflow")
    args = " ".join(mlflow["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--app-name basic-auth" in args and "--allowed-hosts" in args and "--serve-artifacts" in args
    env = {e["name"]: e for e in mlflow["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "mlflow.rainmerge.svc:5000" in env["ALLOWED_HOSTS"]["value"].split(",")
