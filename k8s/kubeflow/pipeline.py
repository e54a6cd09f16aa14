"""Kubeflow Pipelines v2 definition of the rainmerge pipeline (compile: python k8s/kubeflow/pipeline.py).

Upload the compiled `rainmerge_pipeline.yaml` once; every merge is then a run started from the UI form,
whose parameters are the merge config. Each component runs the same step bodies as the ZenML steps
(`rainmerge.product.kfp` -> `rainmerge.product.steps.STEPS`) inside the rainmerge image and logs to the same MLflow.
"""

import sys
from pathlib import Path

from kfp import compiler, dsl

IMAGE = "ghcr.io/your-org/rainmerge:0.1.0"
R_URL = ("https://raw.githubusercontent.com/K1nght/RAIN-Merging/05003cc1afd594d4a00026222ce79fbe1c08c5f1/"
         "data/reasoning_calibration_set.json")
I_URL = ("https://raw.githubusercontent.com/K1nght/RAIN-Merging/05003cc1afd594d4a00026222ce79fbe1c08c5f1/"
         "data/instruction_calibration_set.jsonl")
GPU_TASKS = ("collect_features", "compute_projectors", "score_attention_heads", "merge", "evaluate_reasoning",
             "evaluate_merged")


@dsl.component(base_image=IMAGE)
def configure(base: str, base_revision: str, instruct: str, instruct_revision: str, reasoning: str,
              reasoning_revision: str, reasoning_calibration: str, reasoning_calibration_sha256: str,
              instruction_calibration: str, instruction_calibration_sha256: str, method: str, strength: float,
              layers: str, device: str, eval_data: str, eval_limit: int, min_gain_over_lrm: float,
              min_think_well_formed: float, max_reasoning_drop: float, registered_model: str,
              mlflow_tracking_uri: str, work_dir: str, config: dsl.Output[dsl.Artifact]):
    from rainmerge.product.kfp import configure as run

    params = dict(locals())
    params.pop("config")
    run(params, config.path)


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


@dsl.pipeline(name="rainmerge", description="RAIN-Merging of an instruction model into a reasoning model, "
              "with evaluation, MLflow lineage and gated promotion")
def rainmerge_pipeline(
    base: str = "Qwen/Qwen2.5-7B", base_revision: str = "main",
    instruct: str = "Qwen/Qwen2.5-7B-Instruct", instruct_revision: str = "main",
    reasoning: str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", reasoning_revision: str = "main",
    reasoning_calibration: str = R_URL,
    reasoning_calibration_sha256: str = "bebb4cb5216f474fad2994128a4e70ca5ca0eeb89ee6b528db93a135b2b694e5",
    instruction_calibration: str = I_URL,
    instruction_calibration_sha256: str = "b52460a93f499d32c753feb8150f829b7251ac299b20df0521232b4ddd32fb14",
    method: str = "rain", strength: float = 1.0, layers: str = "", device: str = "cuda",
    eval_data: str = "/data/rainmerge/eval", eval_limit: int = 0, min_gain_over_lrm: float = 0.02,
    min_think_well_formed: float = 0.99, max_reasoning_drop: float = 0.02, registered_model: str = "rainmerge",
    mlflow_tracking_uri: str = "http://mlflow.rainmerge.svc:5000", work_dir: str = "/data/work",
):
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    cfg = configure(base=base, base_revision=base_revision, instruct=instruct, instruct_revision=instruct_revision,
                    reasoning=reasoning, reasoning_revision=reasoning_revision,
                    reasoning_calibration=reasoning_calibration,
                    reasoning_calibration_sha256=reasoning_calibration_sha256,
                    instruction_calibration=instruction_calibration,
                    instruction_calibration_sha256=instruction_calibration_sha256, method=method, strength=strength,
                    layers=layers, device=device, eval_data=eval_data, eval_limit=eval_limit,
                    min_gain_over_lrm=min_gain_over_lrm, min_think_well_formed=min_think_well_formed,
                    max_reasoning_drop=max_reasoning_drop, registered_model=registered_model,
                    mlflow_tracking_uri=mlflow_tracking_uri, work_dir=work_dir).output
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


OUTPUT = Path(__file__).with_name("rainmerge_pipeline.yaml")


def compile_to(path: Path = OUTPUT) -> Path:
    compiler.Compiler().compile(rainmerge_pipeline, str(path))
    return path


if __name__ == "__main__":
    print(compile_to(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT))
