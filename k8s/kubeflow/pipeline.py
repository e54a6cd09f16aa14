"""Kubeflow Pipelines v2 definition of the rainmerge pipeline (compile: python k8s/kubeflow/pipeline.py).

Upload the compiled `rainmerge_pipeline.yaml` once; every merge is then a run started from the UI form,
whose parameters are the merge config. The components are generated from the one DAG table
(rainmerge.product.dag): each runs the same step body as the ZenML step (`rainmerge.product.kfp.run`
-> `rainmerge.product.step_bodies.STEPS`) inside the rainmerge image and logs to the same MLflow.

Caching is keyed on content: a component's inputs are its own config arguments (JSON, from `configure`),
the code digest and its upstream artifacts, never the job id (the MLflow parent run id reaches the pod
as an environment variable from the pod's `pipeline/runid` label, outside the cache key).
"""

import linecache
import sys
from pathlib import Path

from kfp import compiler, dsl, kubernetes

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rainmerge.product.pipeline_config import load_pipeline_config  # noqa: E402
from rainmerge.product.dag import DAG  # noqa: E402
from rainmerge.product.form import KFP_SKIP, form_fields  # noqa: E402

IMAGE = "ghcr.io/your-org/rainmerge:0.1.0"
UID = 10001  # the image's numeric user (Dockerfile)
PVC, MOUNT = "rainmerge-data", "/data"
MLFLOW_SECRET = "mlflow-auth"  # every step logs to MLflow; the Hub token only where the table says
GPU_NODE = ("nvidia.com/gpu.present", "true")
CPU_RES, GPU_RES = ("2", "8G", "16G"), ("8", "48G", "64G")  # cpu request, memory request, memory limit
STEPS = [s for s in DAG if not s.sweep_only]  # sweeps run on ZenML; the form drops sweep.* (form.KFP_SKIP)
# the form opens on the paper's setting (7B), with the cluster's own locations
FORM_DEFAULTS = load_pipeline_config(ROOT / "configs" / "qwen2.5-7b.yaml", {
    "work_dir": "/data/work", "evaluation.data": "/data/rainmerge/eval",
    "tracking.tracking_uri": "http://mlflow.rainmerge.svc:5000"})
FIELDS = form_fields(FORM_DEFAULTS, skip=KFP_SKIP)


def _generated(name: str, source: str, ns: dict | None = None) -> dict:
    """Define functions from generated source that inspect.getsource can read back (KFP embeds a
    lightweight component's source), so components and form follow the DAG table and the config."""
    filename = f"<rainmerge-kfp-{name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    ns = {"dsl": dsl, "NamedTuple": __import__("typing").NamedTuple, **(ns or {})}
    exec(compile(source, filename, "exec"), ns)  # noqa: S102 - our own generated source
    return ns


def _kind(f) -> str:
    return {"list": "list", "dict": "dict"}.get(f.kind.__name__, f.kind.__name__)


_outs = ", ".join(f"('{s.name}', str)" for s in STEPS) + ", ('code', str)"
configure = dsl.component(base_image=IMAGE)(_generated("configure", f"""
def configure({", ".join(f"{f.name}: {_kind(f)}" for f in FIELDS)}) -> NamedTuple('Args', [{_outs}]):
    form = dict(locals())
    from rainmerge.product.kfp import configure_from_form

    return configure_from_form(form)
""")["configure"])


def _component(step):
    ins = "".join(f"{p}: dsl.Input[dsl.Artifact], " for p in step.inputs)
    paths = ", ".join(f"{p}={p}.path" for p in step.inputs)
    src = f"""
def {step.name}({ins}args: str, code: str, out: dsl.Output[dsl.Artifact]):
    from rainmerge.product.kfp import run

    run("{step.name}", args, code, out.path, {paths})
"""
    return dsl.component(base_image=IMAGE)(_generated(step.name, src)[step.name])


COMPONENTS = {s.name: _component(s) for s in STEPS}


def _place(task, step) -> None:
    """Storage, credentials, resources, placement and identity of one step's pod."""
    kubernetes.mount_pvc(task, PVC, MOUNT)
    kubernetes.use_secret_as_env(task, MLFLOW_SECRET, {"username": "MLFLOW_TRACKING_USERNAME",
                                                       "password": "MLFLOW_TRACKING_PASSWORD"})
    for name in step.secrets:
        kubernetes.use_secret_as_env(task, name, {"HF_TOKEN": "HF_TOKEN"})
    kubernetes.use_field_path_as_env(task, "RAINMERGE_RUN_ID", "metadata.labels['pipeline/runid']")
    kubernetes.set_security_context(task, run_as_user=UID, run_as_group=UID, run_as_non_root=True)
    cpu, mem, limit = GPU_RES if step.gpu else CPU_RES
    task.set_cpu_request(cpu).set_memory_request(mem).set_memory_limit(limit)
    if step.gpu:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        kubernetes.add_node_selector(task, *GPU_NODE)
        kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    task.set_caching_options(step.cache)
    task.set_env_variable("HF_HOME", f"{MOUNT}/hf")
    task.set_env_variable("RAINMERGE_PAYLOAD_ROOT", f"{MOUNT}/payload")


def _wire(form_task) -> None:
    form_task.set_caching_options(False)  # cheap; it reads the code digest of the image it runs in
    form_task.set_cpu_request("250m").set_memory_request("512M").set_memory_limit("1G")
    kubernetes.set_security_context(form_task, run_as_user=UID, run_as_group=UID, run_as_non_root=True)
    code = form_task.outputs["code"]
    tasks = {}
    for step in STEPS:
        ins = {p: tasks[up].outputs["out"] for p, up in step.inputs.items()}
        tasks[step.name] = COMPONENTS[step.name](args=form_task.outputs[step.name], code=code, **ins)
        tasks[step.name].set_display_name(step.name)
        _place(tasks[step.name], step)


# The run form: the config's fields in the config's order, with its defaults and descriptions
_args_doc = "\n".join(f"        {f.name}: {f.description}" for f in FIELDS)
_form = ", ".join(f"{f.name}: {_kind(f)} = {f.default!r}" for f in FIELDS)
_names = ", ".join(f"{f.name}={f.name}" for f in FIELDS)
_pipe = _generated("pipeline", f'''
def rainmerge_pipeline({_form}):
    """RAIN-Merging of an instruction model into a reasoning model, with evaluation, MLflow lineage and
    gated promotion. Every field is a key of the rainmerge config (rainmerge.product.pipeline_config).

    Args:
{_args_doc}
    """
    _wire(configure({_names}))
''', {"configure": configure, "_wire": _wire})
rainmerge_pipeline = dsl.pipeline(name="rainmerge", description="RAIN-Merging of an instruction model into a "
                                  "reasoning model, with evaluation, MLflow lineage and gated promotion")(
    _pipe["rainmerge_pipeline"])


OUTPUT = Path(__file__).with_name("rainmerge_pipeline.yaml")


def compile_to(path: Path = OUTPUT) -> Path:
    compiler.Compiler().compile(rainmerge_pipeline, str(path))
    return path


if __name__ == "__main__":
    print(compile_to(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT))
