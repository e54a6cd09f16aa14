"""The run form of an orchestrator UI, generated from the pydantic config: one typed field per leaf
of PipelineConfig (dotted key, default, description), and the way back from the form's values to a
validated config. Nothing is hand-listed, so a new config field reaches the form by itself."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from ..overrides import set_value
from .pipeline_config import PipelineConfig, load_pipeline_config

# CLI-only or meaningless in an orchestrated run (outputs go to the artifact store / PVC)
SKIP = {"output", "overwrite"}
# what the Kubeflow form leaves out: sweeps fan out on ZenML only (the KFP DAG is static), the ZenML model
# has no meaning there, and remote code is never switched on from a form (a config file must ask for it)
KFP_SKIP = SKIP | {"sweep", "tracking.zenml_model", "base.trust_remote_code", "instruct.trust_remote_code",
                   "reasoning.trust_remote_code", "evaluation.engine.trust_remote_code"}
# the config fields that carry no description of their own (a form shows every field with one)
UNDESCRIBED = {"evaluation.limit": "evaluate only the first N prompts of each evaluation set",
               "modules": "which linear modules of each layer are merged (q, k, v, o, gate, up, down)"}


@dataclass(frozen=True)
class FormField:
    name: str  # a Python identifier: the dotted key with "." -> "__"
    key: str  # the dotted config key
    kind: type  # str, int, float, bool, list or dict: what a KFP parameter can be (None = unset)
    default: Any
    description: str


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) of X | None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def _kind(tp: Any) -> type:
    if tp in (bool, int, float):
        return tp
    if typing.get_origin(tp) in (list, dict):
        return typing.get_origin(tp)
    return str  # text for Literal and str


def _describe(info: Any, tp: Any, optional: bool, key: str) -> str:
    desc = info.description or UNDESCRIBED.get(key) or key
    if typing.get_origin(tp) is typing.Literal:
        desc += " (one of: " + ", ".join(map(str, typing.get_args(tp))) + ")"
    if optional:
        desc += " (empty: unset)"
    return desc


def form_fields(defaults: PipelineConfig, cls: type[BaseModel] = PipelineConfig, prefix: str = "",
                skip: set[str] = SKIP) -> list[FormField]:
    """One field per config leaf, in the config's own order (sections as declared)."""
    out: list[FormField] = []
    for name, info in cls.model_fields.items():
        key = prefix + name
        if key in skip:
            continue
        tp, optional = _unwrap(info.annotation)
        current = _lookup(defaults, key)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            out += form_fields(defaults, tp, key + ".", skip)
            continue
        kind = _kind(tp)
        default = current if kind is not str or current is None else str(current)
        if kind is list and any(isinstance(a, type) and issubclass(a, BaseModel) for a in typing.get_args(tp)):
            # a list of config models (evaluation.benchmarks) is JSON text: KFP keeps a list of objects as a
            # protobuf Struct, whose key order (and so the compiled spec) changes from one compile to the next
            kind, default = str, json.dumps(to_jsonable_python(current, exclude_none=True), sort_keys=True)
        if optional and kind is str and default is None:
            default = ""
        out.append(FormField(key.replace(".", "__"), key, kind, default, _describe(info, tp, optional, key)))
    return out


def _lookup(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part, None) if cfg is not None else None
    return cfg


def config_from_form(values: dict[str, Any], fields: list[FormField]) -> PipelineConfig:
    """The form's values (by field name, or by dotted key as `--set key=value` text) -> a validated config;
    an empty text leaves its key unset."""
    by_name = {f.name: f for f in fields} | {f.key: f for f in fields}
    overrides: dict[str, Any] = {}
    for name, value in values.items():
        f = by_name[name]
        if value is None or value == "" or (value in ([], {}) and f.default is None):
            continue  # unset: the config's default (an optional list left empty, too)
        if isinstance(value, str):
            declared = _unwrap(_field_type(f.key))[0]
            # text fields keep their text (a sha256 of digits stays a string); the rest is YAML/JSON text
            value = value if declared is str else set_value(value) if f.kind is str else f.kind(value)
        overrides[f.key] = value
    return load_pipeline_config(None, overrides)


def _field_type(dotted: str) -> Any:
    cls: Any = PipelineConfig
    tp: Any = None
    for part in dotted.split("."):
        tp = cls.model_fields[part].annotation
        cls = _unwrap(tp)[0]
    return tp
