"""The pipeline's DAG, declared once: every step, what it reads (upstream outputs and config), what it
writes, whether it needs a GPU or a secret. The ZenML pipeline (pipelines/rain_merge.py), the Kubeflow
pipeline (k8s/kubeflow/pipeline.py), the lineage report's step graph (report.EDGES) and the GPU lists
(configs/k8s/gpu-steps.zenml.yaml) are built from it or checked against it (tests/test_dag.py).

A new step: its body in rainmerge/product/step_bodies.py (STEPS), its ZenML wrapper in steps/<name>.py, and one
`Step(...)` row here. The row's `inputs` maps each parameter of the step to the task whose output it
takes; `config` maps each other parameter to an expression on PipelineConfig (an attribute path, `()`
calls a method: "stage1", "runtime()", "tracking.registered_model"); `consts` are literal arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Step:
    name: str  # the task id (ZenML invocation id, KFP task name, MLflow child-run name)
    inputs: dict[str, str] = field(default_factory=dict)  # parameter -> upstream task
    config: dict[str, str] = field(default_factory=dict)  # parameter -> PipelineConfig expression
    output: str = ""  # the step's output artifact name
    func: str = ""  # the function in steps/ and STEPS (defaults to name)
    consts: dict[str, Any] = field(default_factory=dict)
    gpu: bool = False  # runs models on the device: GPU pod, toleration, node selector
    secrets: tuple[str, ...] = ()  # Kubernetes Secrets the pod needs beyond MLflow's credentials
    rain_only: bool = False  # a no-op for baseline methods (Stage 1/2)
    sweep_only: bool = False  # only in a strength sweep (the fan-in)
    cache: bool = True  # registry / Hub side effects are never cached

    @property
    def fn(self) -> str:
        return self.func or self.name


_RT = "runtime()"
DAG: tuple[Step, ...] = (
    Step("load_models", config={"models": "models_spec()", "diagnostics": "diagnostics"}, output="models"),
    Step("evaluate_reasoning", {"models": "load_models"}, func="evaluate", output="metrics", gpu=True,
         config={"evaluation": "evaluation", "data_dir": "eval_data_dir()", "calibration_file": "held_out_file()"},
         consts={"target": "reasoning"}),
    Step("build_calibration_sets", {"models": "load_models"}, {"spec": "calibration_spec()"}, "calibration",
         rain_only=True),
    Step("collect_features", {"models": "load_models", "calibration": "build_calibration_sets"}, {"runtime": _RT},
         "features", gpu=True, rain_only=True),
    Step("compute_projectors", {"models": "load_models", "features": "collect_features"},
         {"stage1": "stage1", "runtime": _RT}, "projectors", gpu=True, rain_only=True),
    Step("score_attention_heads", {"models": "load_models", "calibration": "build_calibration_sets",
                                   "projectors": "compute_projectors"},
         {"stage2": "stage2", "strength": "strength", "runtime": _RT}, "coefficients", gpu=True, rain_only=True),
    Step("merge", {"models": "load_models", "calibration": "build_calibration_sets",
                   "projectors": "compute_projectors", "coefficients": "score_attention_heads"},
         {"config": "merge_config()"}, "merged_model", gpu=True),
    Step("evaluate_merged", {"models": "load_models", "merged": "merge"}, func="evaluate", output="metrics", gpu=True,
         config={"evaluation": "evaluation", "data_dir": "eval_data_dir()", "calibration_file": "held_out_file()"},
         consts={"target": "merged"}),
    Step("select_candidate", {"merged": "merge", "metrics": "evaluate_merged", "lrm_metrics": "evaluate_reasoning"},
         {"gates": "promotion"}, "merged_model", sweep_only=True),
    Step("promote", {"merged": "merge", "metrics": "evaluate_merged", "lrm_metrics": "evaluate_reasoning",
                     "models": "load_models", "calibration": "build_calibration_sets"},
         {"config": "merge_config()", "gates": "promotion", "registered_model": "tracking.registered_model"},
         "decision", cache=False),
    Step("push_to_hub", {"merged": "merge", "decision": "promote", "metrics": "evaluate_merged",
                         "lrm_metrics": "evaluate_reasoning", "models": "load_models"},
         {"config": "merge_config()", "hub_cfg": "hub"}, "hub", secrets=("hf-token",), cache=False),
)
BY_NAME = {s.name: s for s in DAG}
GPU_STEPS = tuple(s.name for s in DAG if s.gpu)
# the sweep's fan-in replaces these two steps' outputs for everything downstream (ZenML only)
SWEEP_REPLACES = {"merge": ("select_candidate", "merged_model"), "evaluate_merged": ("select_candidate", "metrics")}


def edges(sweep: bool = False) -> list[tuple[str, str]]:
    """(upstream, downstream) for every input; with `sweep`, the fan-in sits between the candidates and
    the steps after them."""
    out = []
    for s in DAG:
        if s.sweep_only and not sweep:
            continue
        for up in dict.fromkeys(s.inputs.values()):
            if sweep and not s.sweep_only and up in SWEEP_REPLACES:
                up = SWEEP_REPLACES[up][0]
            out.append((up, s.name))
    return list(dict.fromkeys(out))


def resolve(cfg: Any, expr: str) -> Any:
    """Evaluate a config expression of the table ("stage1", "runtime()", "tracking.registered_model")."""
    obj = cfg
    for part in expr.split("."):
        call = part.endswith("()")
        obj = getattr(obj, part.removesuffix("()"))
        obj = obj() if call else obj
    return obj


def config_args(step: Step, cfg: Any) -> dict[str, Any]:
    return {k: resolve(cfg, v) for k, v in step.config.items()} | dict(step.consts)


def sections(step: Step) -> set[str]:
    """The top-level config keys a step's expressions start from (its share of the cache key)."""
    return {v.split(".")[0].removesuffix("()") for v in step.config.values()}
