"""Start a pipeline run from a PipelineConfig (used by `rainmerge run` and the tests)."""

from __future__ import annotations

import datetime as _dt
from typing import Any

from rainmerge.product.pipeline_config import PipelineConfig
from rainmerge.product.fingerprint import code_digest, fingerprint
from rainmerge.product.tracking import PROJECT


def run_pipeline(cfg: PipelineConfig, cache: bool = True, run_name: str | None = None,
                 zenml_config: str | None = None) -> dict[str, Any]:
    """Run the RAIN (or baseline) pipeline; returns the promote step's decision (with registry version)."""
    from rainmerge.product.tracking import check_store, credentials_to_env

    # a password in the tracking URI goes to MLflow's variables, never into the step parameters ZenML stores
    clean = credentials_to_env(cfg.tracking.tracking_uri)
    if cfg.tracking.tracking_uri:
        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"tracking_uri": clean})})
    # a down server or a read-only store: one line now, not retries and a traceback at the first step
    uri = check_store(cfg.tracking.tracking_uri)
    prepare_stores(uri)

    from zenml import Model
    from zenml.utils.source_utils import set_custom_source_root

    import mlflow  # noqa: F401  (imported here so its logger setup happens before ours is re-applied)

    from rainmerge.logs import quiet_third_party
    from rainmerge.product import hygiene

    quiet_third_party()

    # crash hygiene: runs a killed earlier process left RUNNING are marked FAILED; ours are on termination
    hygiene.mark_dead_runs(uri)
    hygiene.install_termination_handler(uri)

    # steps and artifact classes are imported by module path from the project root, whatever the entry point
    set_custom_source_root(str(PROJECT))

    from .rain_merge import baseline_merge_pipeline, rain_merge_pipeline

    from rainmerge.method_catalog import needs_stages
    from rainmerge.product.registry import registered_name

    pipe = rain_merge_pipeline if needs_stages(cfg.method) else baseline_merge_pipeline
    # a baseline gets its own ZenML model too: its stage never touches the RAIN model's production version
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    run = pipe.with_options(
        model=Model(name=registered_name(cfg.tracking.zenml_model, cfg.method), tags=[cfg.method],
                    description="rainmerge merged models"),
        enable_cache=cache, run_name=run_name or f"{pipe.name}-{cfg.method}-{stamp}",
        **({"config_path": zenml_config} if zenml_config else {}),
    )(config=cfg.model_dump(mode="json"), fingerprint=fingerprint(cfg), code=code_digest())
    return step_output(run, "promote", "decision")


def prepare_stores(uri: str) -> None:
    """Create (or migrate) the MLflow and ZenML stores one process at a time: two runs started together
    on fresh stores would both run the schema migrations, and one died (`duplicate column name: step`)."""
    from zenml.client import Client
    from zenml.utils.io_utils import get_global_config_directory

    from rainmerge.product.tracking import init_lock, prepare_store

    prepare_store(uri)
    with init_lock(get_global_config_directory()):
        Client().zen_store  # noqa: B018  (initialises the local store and runs its migrations)


def create_snapshot(cfg: PipelineConfig, name: str, zenml_config: str | None = None) -> str:
    """A parameterised ZenML snapshot of the pipeline (the config is its `config` parameter), so a
    ZenML Pro dashboard can start merges from a form; on ZenML OSS it is stored but cannot be run
    from the UI (Pro, remote stack). Returns the snapshot id."""
    from zenml import Model
    from zenml.utils.source_utils import set_custom_source_root

    from rainmerge.method_catalog import needs_stages
    from rainmerge.product.registry import registered_name

    set_custom_source_root(str(PROJECT))
    from .rain_merge import baseline_merge_pipeline, rain_merge_pipeline

    pipe = rain_merge_pipeline if needs_stages(cfg.method) else baseline_merge_pipeline
    snap = pipe.with_options(
        model=Model(name=registered_name(cfg.tracking.zenml_model, cfg.method), tags=[cfg.method]),
        parameters={"config": cfg.model_dump(mode="json"), "fingerprint": fingerprint(cfg), "code": code_digest()},
        **({"config_path": zenml_config} if zenml_config else {}),
    ).create_snapshot(name=name, description=f"rainmerge {cfg.method} merge; edit the `config` parameter", replace=True)
    return str(snap.id)


def step_output(run: Any, step: str, output: str) -> Any:
    from zenml.client import Client

    run = Client().get_pipeline_run(run.id)
    outs = run.steps[step].outputs[output]
    art = outs[0] if isinstance(outs, list) else outs
    return art.load()
