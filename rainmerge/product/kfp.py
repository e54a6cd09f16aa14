"""Entry point of the Kubeflow components: the same step bodies as the ZenML steps, wired by the DAG
table (rainmerge.product.dag).

`configure` turns the run form into the validated config and hands every step only its own config
arguments (JSON) and the code digest: those, with the upstream artifacts, are a component's whole
input, so KFP's cache key is the content a step depends on, never the job id. Large outputs go to the
shared PVC (`work_dir/<run id>/<step>`); only small JSON refs travel as KFP artifacts. Stage 1/2 are
no-ops for baseline methods, so one static DAG serves every method.
"""

from __future__ import annotations

import inspect
import json
import os
import typing
import uuid
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python

from ..method_catalog import needs_stages
from .artifacts import DirRef
from .pipeline_config import PipelineConfig
from .dag import BY_NAME, DAG, config_args
from .fingerprint import code_digest
from .step_bodies import STEPS
from .tracking import tracking_uri


def configure_from_form(form: dict[str, Any]) -> tuple[str, ...]:
    """The run form's values (one per config field, rainmerge.product.form) -> the validated config ->
    one JSON string of config arguments per step (DAG order, sweep-only steps left out), then the code
    digest; the KFP `configure` component returns them as its outputs."""
    cfg = config_from_form(form)
    out = []
    for step in DAG:
        if step.sweep_only:
            continue
        args = config_args(step, cfg) | {"tracking_uri": cfg.tracking.tracking_uri, "work_dir": cfg.work_dir,
                                          "rain": needs_stages(cfg.method)}
        out.append(json.dumps(to_jsonable_python(args), sort_keys=True))
    return (*out, code_digest())


def config_from_form(form: dict[str, Any]) -> PipelineConfig:
    from .form import KFP_SKIP, config_from_form as back, form_fields

    fields = form_fields(PipelineConfig.model_construct(), skip=KFP_SKIP)  # names and kinds; values are the form's
    unknown = sorted(set(form) - {f.name for f in fields})
    if unknown:
        raise ValueError(f"form fields not in the config: {unknown}")
    return back(form, fields)


def _typed(fn: Any, values: dict[str, Any]) -> dict[str, Any]:
    """JSON values -> the types the step body declares (pydantic configs, DirRefs, lists of them)."""
    hints = typing.get_type_hints(fn)
    return {k: TypeAdapter(hints[k]).validate_python(v) if k in hints else v for k, v in values.items()}


def run(step: str, args: str, code: str, out_path: str, **inputs: str) -> None:
    """Run one step of the Kubeflow pipeline; writes its (small) JSON result to out_path."""
    s = BY_NAME[step]
    a = json.loads(args)
    uri, work, rain = tracking_uri(a.pop("tracking_uri")), a.pop("work_dir"), a.pop("rain")
    # one MLflow parent run per KFP run: the pod's `pipeline/runid` label (kfp-kubernetes field-path env)
    run_id = os.environ.get("RAINMERGE_RUN_ID") or f"local-{uuid.uuid4().hex[:12]}"
    os.environ.update({"RAINMERGE_RUN_ID": run_id, "RAINMERGE_RUN_NAME": f"kfp-{run_id}",
                       "RAINMERGE_PIPELINE": "rainmerge-kfp", "RAINMERGE_ORCHESTRATOR": "kubeflow",
                       "RAINMERGE_CODE_DIGEST": code})
    fn = STEPS[s.fn]
    upstream = {k: json.loads(Path(v).read_text()) for k, v in inputs.items()}
    if s.rain_only and not rain:
        result: Any = None
    else:
        params = inspect.signature(fn).parameters
        kwargs = _typed(fn, {**{k: v for k, v in upstream.items() if k in params}, **a})
        kwargs["uri"] = uri
        if "out" in params:
            kwargs["out"] = Path(work or ".") / run_id / step
            kwargs["out"].mkdir(parents=True, exist_ok=True)
        if "fingerprint" in params:
            kwargs["fingerprint"] = {}
        result = fn(**kwargs)
    Path(out_path).write_text(json.dumps(to_jsonable_python(_plain(result))))


def _plain(result: Any) -> Any:
    if isinstance(result, DirRef):
        return result.model_dump()
    return result.as_dict() if hasattr(result, "as_dict") else result
