"""One DAG table (rainmerge.product.dag) behind every orchestrator: the ZenML pipeline, the compiled
Kubeflow spec, the lineage report's graph and the GPU run config must all say what the table says."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import yaml

from rainmerge.product import dag
from rainmerge.product.step_bodies import STEPS

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "k8s" / "kubeflow" / "rainmerge_pipeline.yaml"
ORCHESTRATOR_ARGS = {"tracking_uri", "code", "fingerprint"}  # supplied by the pipeline, not the table


def _declared(step: dag.Step) -> set[str]:
    return set(step.inputs) | set(step.config) | set(step.consts)


@pytest.mark.parametrize("step", dag.DAG, ids=lambda s: s.name)
def test_every_parameter_of_a_step_is_declared(step):
    """A step parameter the table does not declare (or the other way round) fails here, on both paths."""
    import importlib

    zen = getattr(importlib.import_module(f"steps.{step.fn}"), step.fn).entrypoint
    params = set(inspect.signature(zen).parameters) - ORCHESTRATOR_ARGS
    optional = {p for p, v in inspect.signature(zen).parameters.items() if v.default is not inspect.Parameter.empty}
    extra_sweep = {"strengths", "baseline_labels", "baseline_metrics"} if step.sweep_only else set()
    assert params - optional - extra_sweep <= _declared(step) <= params
    body = set(inspect.signature(STEPS[step.fn]).parameters) - {"uri", "out", "fingerprint"}
    assert body - extra_sweep == params - extra_sweep  # the Kubeflow entry calls the body by these names


def test_zenml_pipeline_is_the_table(tmp_path, monkeypatch):
    monkeypatch.setenv("ZENML_CONFIG_PATH", str(tmp_path / "zenml"))
    from zenml.utils.source_utils import set_custom_source_root

    from pipelines.rain_merge import rain_merge_pipeline
    from rainmerge.product.pipeline_config import load_pipeline_config

    set_custom_source_root(str(ROOT))
    cfg = load_pipeline_config(ROOT / "configs" / "toy.yaml", {})
    # prepare a copy: prepare() keeps its parameters on the pipeline object, and the module-level one is
    # shared with later tests (a snapshot made from it would carry these parameters instead of its own)
    pipe = rain_merge_pipeline.with_options()
    pipe.prepare(config=cfg.model_dump(mode="json"), fingerprint={}, code="x")
    got = {k: {p: a.invocation_id for p, a in inv.input_artifacts.items()}
           for k, inv in pipe.invocations.items()}
    assert got == {s.name: s.inputs for s in dag.DAG if not s.sweep_only}
    cfg = load_pipeline_config(ROOT / "configs" / "toy.yaml", {"sweep.strengths": [0.5, 1.0]})
    pipe = rain_merge_pipeline.with_options()
    pipe.prepare(config=cfg.model_dump(mode="json"), fingerprint={}, code="x")
    inv = pipe.invocations
    ups = {a.invocation_id for v in inv["select_candidate"].input_artifacts.values()
           for a in (v if isinstance(v, list) else [v])}
    assert ups >= {"merge_0", "merge_1", "evaluate_merged_0", "evaluate_reasoning"}
    assert inv["promote"].input_artifacts["merged"].invocation_id == "select_candidate"


def _spec() -> dict:
    docs = list(yaml.safe_load_all(SPEC.read_text()))
    return docs[0] | {"platform": docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]}


def test_kubeflow_spec_is_the_table():
    spec = _spec()
    tasks = spec["root"]["dag"]["tasks"]
    steps = [s for s in dag.DAG if not s.sweep_only]
    assert set(tasks) == {s.name.replace("_", "-") for s in steps} | {"configure"}
    for s in steps:
        arts = tasks[s.name.replace("_", "-")]["inputs"].get("artifacts", {})
        assert {p: a["taskOutputArtifact"]["producerTask"] for p, a in arts.items()} == {
            p: up.replace("_", "-") for p, up in s.inputs.items()}


def test_kubeflow_executors_run_on_a_cluster():
    """PVC, MLflow credentials, limits and a numeric non-root identity on every step; the Hub token only
    where the table asks; GPU steps tolerate the GPU taint and select GPU nodes; no compute step's
    inputs (its cache key) carry the job id."""
    spec = _spec()
    executors, plat = spec["deploymentSpec"]["executors"], spec["platform"]
    tasks = spec["root"]["dag"]["tasks"]
    for s in (s for s in dag.DAG if not s.sweep_only):
        name = s.name.replace("_", "-")
        ex, k8s = executors[f"exec-{name}"]["container"], plat[f"exec-{name}"]
        assert [m["mountPath"] for m in k8s["pvcMount"]] == ["/data"], name
        secrets = {e["secretName"] for e in k8s["secretAsEnv"]}
        assert secrets == {"mlflow-auth", *s.secrets}, name
        assert ex["resources"]["memoryLimit"] > 0 and ex["resources"]["cpuRequest"] > 0, name
        ctx = k8s["securityContext"]
        assert ctx["runAsNonRoot"] is True and int(ctx["runAsUser"]) > 0, name
        gpu = ex["resources"].get("accelerator", {}).get("resourceType") == "nvidia.com/gpu"
        assert gpu == s.gpu, name
        assert bool(k8s.get("tolerations")) == s.gpu and bool(k8s.get("nodeSelector")) == s.gpu, name
        task = tasks[name]
        text = json.dumps(task["inputs"])
        assert "pipeline_job" not in text and "JOB_ID" not in text.upper(), name
        assert task.get("cachingOptions", {}).get("enableCache", False) == s.cache, name
    assert sum("hf-token" in json.dumps(v) for v in plat.values()) == 1  # only the pod that pushes


def test_report_and_gpu_config_follow_the_table():
    from rainmerge.product.html_report import EDGES

    assert set(dag.edges()) <= set(EDGES) and set(dag.edges(sweep=True)) <= set(EDGES)
    run_cfg = yaml.safe_load((ROOT / "configs" / "k8s" / "gpu-steps.zenml.yaml").read_text())
    pods = {n: v["settings"]["orchestrator"]["pod_settings"] for n, v in run_cfg["steps"].items()}
    gpu = {n for n, p in pods.items() if "nvidia.com/gpu" in json.dumps(p["resources"])}
    assert gpu == set(dag.GPU_STEPS)
    token = {n for n, p in pods.items() if "hf-token" in json.dumps(p)}
    assert token == {s.name for s in dag.DAG if "hf-token" in s.secrets}
    assert "hf-token" not in json.dumps(run_cfg["settings"])  # not in the default pod
