"""Pods and storage sized from the plan: the committed sizes (configs/k8s/sizes.yaml) cover what
`rainmerge plan` computes for every shipped real config, and the generated run configs and overlays are
exactly the template with those sizes (editing one without regenerating fails here)."""

import importlib.util
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import yaml  # noqa: E402

from rainmerge.product import k8s  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = yaml.safe_load((ROOT / k8s.SIZES).read_text())
TEMPLATE = yaml.safe_load((ROOT / k8s.TEMPLATE).read_text())


def _plan_shipped():
    spec = importlib.util.spec_from_file_location("plan_shipped", ROOT / "benchmarks" / "plan_shipped.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_shipped_real_config_is_sized():
    assert set(SIZES) == {Path(c).stem for c in _plan_shipped().CONFIGS}


@pytest.mark.slow
def test_committed_sizes_cover_the_plan(tmp_path):
    """The plan of each shipped config (metadata only, nothing downloaded) recomputed now: no committed
    volume, memory or GPU count below it. Drift in the configs or the estimates fails here."""
    (tmp_path / k8s.TEMPLATE).parent.mkdir(parents=True)
    shutil.copy(ROOT / k8s.TEMPLATE, tmp_path / k8s.TEMPLATE)
    assert _plan_shipped().main(["--no-shared", "--write-k8s", str(tmp_path)]) == 0
    computed = yaml.safe_load((tmp_path / k8s.SIZES).read_text())
    assert set(computed) == set(SIZES)
    for stem, want in computed.items():
        assert k8s.shortfalls(SIZES[stem], want) == [], stem
    assert computed["llama3-70b"]["evaluation"]["gpus"] == 4 and computed["llama3-70b"]["stages"]["path"] == "sequential"


def test_shortfalls_name_each_size_below_the_plan():
    entry = SIZES["llama3-70b"]
    lower = yaml.safe_load(yaml.safe_dump(entry))
    lower["volume_size"] = "500Gi"  # the old shared volume
    lower["evaluation"]["gpus"] = 1
    assert k8s.shortfalls(lower, entry) == [f"volume_size: 500Gi < plan {entry['volume_size']}",
                                            "evaluation.gpus: 1 < plan 4"]
    assert k8s.shortfalls(entry, entry) == []
    assert k8s.widest(lower, entry)["volume_size"] == entry["volume_size"]


@pytest.mark.parametrize("stem", sorted(SIZES))
def test_generated_files_are_the_template_with_the_sizes(stem):
    rc = yaml.safe_load((ROOT / "configs" / "k8s" / f"{stem}.zenml.yaml").read_text())
    assert rc == k8s.run_config(TEMPLATE, SIZES[stem])
    ov = yaml.safe_load((ROOT / "k8s" / "overlays" / stem / "kustomization.yaml").read_text())
    assert ov == k8s.overlay(SIZES[stem])
    steps = rc["steps"]
    for name in k8s.EVAL_STEPS:
        res = steps[name]["settings"]["orchestrator"]["pod_settings"]["resources"]
        assert res["limits"]["nvidia.com/gpu"] == str(SIZES[stem]["evaluation"]["gpus"])
    for name in k8s.STAGE_STEPS:
        res = steps[name]["settings"]["orchestrator"]["pod_settings"]["resources"]
        assert k8s.gib(res["limits"]["memory"]) >= k8s.gib(SIZES[stem]["stages"]["memory_limit"])
        assert res["limits"]["nvidia.com/gpu"] == str(SIZES[stem]["stages"]["gpus"])


@pytest.mark.parametrize("stem", sorted(SIZES))
def test_generated_run_configs_parse_with_zenml(stem):
    from zenml.integrations.kubernetes.flavors.kubernetes_orchestrator_flavor import KubernetesOrchestratorSettings

    rc = yaml.safe_load((ROOT / "configs" / "k8s" / f"{stem}.zenml.yaml").read_text())
    KubernetesOrchestratorSettings.model_validate(rc["settings"]["orchestrator"])
    for s in rc["steps"].values():
        KubernetesOrchestratorSettings.model_validate(s["settings"]["orchestrator"])


@pytest.mark.parametrize("stem", ["qwen2.5-7b", "llama3-70b"])
def test_overlay_renders_the_volume_at_the_planned_size(stem):
    import subprocess

    import kubernetes_validate

    if not shutil.which("kubectl"):
        pytest.skip("kubectl (for `kubectl kustomize`) not installed")
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "k8s" / "overlays" / stem)], capture_output=True,
                         text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "rainmerge-data")
    assert pvc["spec"]["resources"]["requests"]["storage"] == SIZES[stem]["volume_size"]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.35.0", strict=True)


@pytest.mark.parametrize("stem", sorted(SIZES))
def test_generated_yaml_lints(stem):
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig("extends: default\nrules: {line-length: {max: 120}, document-start: disable, "
                          "truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}}")
    for path in (ROOT / "configs" / "k8s" / f"{stem}.zenml.yaml", ROOT / k8s.SIZES,
                 ROOT / "k8s" / "overlays" / stem / "kustomization.yaml"):
        problems = [str(p) for p in linter.run(path.read_text(), conf) if p.level == "error"]
        assert not problems, (path.name, problems)


def test_plan_k8s_writes_the_sizing_files(tmp_path, capsys):
    """`rainmerge plan --k8s --write-k8s ROOT --config F` prints the pod sizes and writes F's entry, run
    config and overlay from them (the same functions the shipped files were generated with)."""
    import json

    from rainmerge.cli import main

    (tmp_path / k8s.TEMPLATE).parent.mkdir(parents=True)
    shutil.copy(ROOT / k8s.TEMPLATE, tmp_path / k8s.TEMPLATE)
    assert main(["plan", "--config", str(ROOT / "configs" / "toy.yaml"), "--k8s", "--write-k8s", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    entry = yaml.safe_load((tmp_path / k8s.SIZES).read_text())["toy"]
    assert entry["volume_size"] == printed["volume_size"] and entry["evaluation"]["gpus"] == printed["evaluation_gpus"]
    assert entry["evaluation"].get("gpu_memory_per_device") == printed["evaluation_gpu_memory_per_device"]
    rc = yaml.safe_load((tmp_path / "configs" / "k8s" / "toy.zenml.yaml").read_text())
    assert rc == k8s.run_config(TEMPLATE, entry)
    assert yaml.safe_load((tmp_path / "k8s" / "overlays" / "toy" / "kustomization.yaml").read_text()) == k8s.overlay(entry)
