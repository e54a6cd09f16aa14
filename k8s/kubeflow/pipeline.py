"""Kubeflow Pipelines v2 definition of the rainmerge pipeline (compile: python k8s/kubeflow/pipeline.py).

Upload the compiled `rainmerge_pipeline.yaml` once; every merge is then a run started from the UI form,
whose parameters are the merge config. Each component runs the same step bodies as the ZenML steps
(`rainmerge.product.kfp` -> `rainmerge.product.steps.STEPS`) inside the rainmerge image and logs to the same MLflow.
"""

import linecache
import sys
from pathlib import Path

from kfp import compiler, dsl

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rainmerge.product.config import load_pipeline_config  # noqa: E402
from rainmerge.product.form import form_fields  # noqa: E402

IMAGE = "ghcr.io/your-org/rainmerge:0.1.0"
GPU_TASKS = ("collect_features", "compute_projectors", "score_attention_heads", "merge", "evaluate_reasoning",
             "evaluate_merged")
# the form opens on the paper's setting (7B), with the cluster's own locations
FORM_DEFAULTS = load_pipeline_config(ROOT / "configs" / "qwen2.5-7b.yaml", {
    "work_dir": "/data/work", "evaluation.data": "/data/rainmerge/eval",
    "tracking.tracking_uri": "http://mlflow.rainmerge.svc:5000"})
FIELDS = form_fields(FORM_DEFAULTS)


def _generated(name: str, source: str) -> dict:
    """Define functions from generated source that inspect.getsource can read back (KFP embeds a
    lightweight component's source), so the form's fields follow the pydantic config, not a hand list."""
    filename = f"<rainmerge-kfp-{name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    ns = {"dsl": dsl}
    exec(compile(source, filename, "exec"), ns)  # noqa: S102 - our own generated source
    return ns


_params = ", ".join(f"{f.name}: {f.kind.__name__}" for f in FIELDS)
configure = dsl.component(base_image=IMAGE)(_generated("configure", f"""
def configure(config: dsl.Output[dsl.Artifact], {_params}):
    form = dict(locals())
    form.pop("config")
    from rainmerge.product.kfp import configure_from_form

    configure_from_form(form, config.path)
""")["configure"])


@dsl.component(base_image=IMAGE)
def load_models(config: dsl.Input[dsl.Artifact], run_id: str, models: dsl.Output[dsl.Artifact]):
    from rainmerge.product.kfp import run

    run("load_models", config.path, models.path, run_id)


@dsl.component(base_image=IMAGE)
def build_calibration_sets(config: dsl.Input[dsl.Artifact], run_id: str, models: dsl.Input[dsl.Artifact],
                           calibration: dsl.Output[dsl.Artifact]):
    from rainmerge.product.kfp import run

    run("build_calibration_sets", config.path, calibration.path, run_id, models=models.path)


@dsl.component(base_image=IMAGE)
def collect_features(config: dsl.Input[dsl.Artifact], run_id: str, models: dsl.Input[dsl.Artifact],
                     calibration: dsl.Input[dsl.Artifact], features: dsl.Output[dsl.Artifact]):
    from rainmerge.product.kfp import run

    run("collect_features", config.path, features.path, run_id, models=models.path, calibration=calibration.path)


@dsl.component(base_image=IMAGE)
def compute_projectors(config: dsl.Input[dsl.Artifact], run_id: str, models: dsl.Input[dsl.Artifact],
                       features: dsl.Input[dsl.Artifact], projectors: dsl.Output[dsl.Artifact]):
    from rainmerge.product.kfp import run

    run("compute_projectors", config.path, projectors.path, run_id, models=models.path, features=features.path)


@dsl.component(base_image=IMAGE)
def score_attention_heads(config: dsl.Input[dsl.Artifact], run_id: str, models: dsl.Input[dsl.Artifact],
                          calibration: dsl.Input[dsl.Artifact], projectors: dsl.Input[dsl.Artifact],
                          coefficients: dsl.Output[dsl.Artifact]):
    from rainmerge.product.kfp import run

    run("score_attention_heads", config.path, coefficients.path, run_id, models=models.path,
        calibration=calibration.path, projectors=projectors.path)


@dsl.component(base_image=IMAGE)
def merge(config: dsl.Input[dsl.Artifact], run_id: str, models: dsl.Input[dsl.Artifact],
          calibration: dsl.Input[dsl.Artifact], projectors: dsl.Input[dsl.Artifact],
          coefficients: dsl.Input[dsl.Artifact], merged: dsl.Output[dsl.Artifact]):
    from rainmerge.product.kfp import run

    run("merge", config.path, merged.path, run_id, models=models.path, calibration=calibration.path,
        projectors=projectors.path, coefficients=coefficients.path)


@dsl.component(base_image=IMAGE)
def evaluate_reasoning(config: dsl.Input[dsl.Artifact], run_id: str, models: dsl.Input[dsl.Artifact],
                       metrics: dsl.Output[dsl.Artifact]):
    from rainmerge.product.kfp import run

    run("evaluate_reasoning", config.path, metrics.path, run_id, models=models.path)


@dsl.component(base_image=IMAGE)
def evaluate_merged(config: dsl.Input[dsl.Artifact], run_id: str, models: dsl.Input[dsl.Artifact],
                    merged: dsl.Input[dsl.Artifact],
                    metrics: dsl.Output[dsl.Artifact]):
    from rainmerge.product.kfp import run

    run("evaluate_merged", config.path, metrics.path, run_id, models=models.path, merged=merged.path)


@dsl.component(base_image=IMAGE)
def promote(config: dsl.Input[dsl.Artifact], run_id: str, models: dsl.Input[dsl.Artifact],
            calibration: dsl.Input[dsl.Artifact],
            merged: dsl.Input[dsl.Artifact], metrics: dsl.Input[dsl.Artifact], lrm_metrics: dsl.Input[dsl.Artifact],
            decision: dsl.Output[dsl.Artifact]):
    from rainmerge.product.kfp import run

    run("promote", config.path, decision.path, run_id, models=models.path, calibration=calibration.path,
        merged=merged.path, metrics=metrics.path, lrm_metrics=lrm_metrics.path)


def _wire(cfg) -> None:
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    models = load_models(config=cfg, run_id=run_id).output
    calib = build_calibration_sets(config=cfg, run_id=run_id, models=models).output
    feats = collect_features(config=cfg, run_id=run_id, models=models, calibration=calib)
    proj = compute_projectors(config=cfg, run_id=run_id, models=models, features=feats.output)
    coeffs = score_attention_heads(config=cfg, run_id=run_id, models=models, calibration=calib,
                                   projectors=proj.output)
    merged = merge(config=cfg, run_id=run_id, models=models, calibration=calib, projectors=proj.output,
                   coefficients=coeffs.output)
    lrm_eval = evaluate_reasoning(config=cfg, run_id=run_id, models=models)
    merged_eval = evaluate_merged(config=cfg, run_id=run_id, models=models, merged=merged.output)
    promote(config=cfg, run_id=run_id, models=models, calibration=calib, merged=merged.output,
            metrics=merged_eval.output, lrm_metrics=lrm_eval.output)
    for task in (feats, proj, coeffs, merged, lrm_eval, merged_eval):
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        task.set_memory_request("48G").set_cpu_request("8")


# The run form: every config field, with the config's defaults and descriptions (the docstring's Args)
_args_doc = "\n".join(f"        {f.name}: {f.key} - {f.description or f.key}" for f in FIELDS)
_form = ", ".join(f"{f.name}: {f.kind.__name__} = {f.default!r}" for f in FIELDS)
_names = ", ".join(f"{f.name}={f.name}" for f in FIELDS)
_pipe = _generated("pipeline", f'''
def rainmerge_pipeline({_form}):
    """RAIN-Merging of an instruction model into a reasoning model, with evaluation, MLflow lineage and
    gated promotion. Every field is a key of the rainmerge config (rainmerge.product.config).

    Args:
{_args_doc}
    """
    _wire(configure({_names}).output)
''')
_pipe["configure"], _pipe["_wire"] = configure, _wire
rainmerge_pipeline = dsl.pipeline(name="rainmerge", description="RAIN-Merging of an instruction model into a "
                                  "reasoning model, with evaluation, MLflow lineage and gated promotion")(
    _pipe["rainmerge_pipeline"])


OUTPUT = Path(__file__).with_name("rainmerge_pipeline.yaml")


def compile_to(path: Path = OUTPUT) -> Path:
    compiler.Compiler().compile(rainmerge_pipeline, str(path))
    return path


if __name__ == "__main__":
    print(compile_to(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT))
