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

from .config import PipelineConfig, load_pipeline_config

# CLI-only or meaningless in an orchestrated run (outputs go to the artifact store / PVC)
SKIP = {"output", "overwrite"}


@dataclass(frozen=True)
class FormField:
    name: str  # a Python identifier: the dotted key with "." -> "__"
    key: str  # the dotted config key
    kind: type  # str, int, float or bool: what a KFP parameter can be
    default: Any
    description: str


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) of X | None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), True
    return tp, False


def _kind(tp: Any, optional: bool) -> type:
    if not optional and tp in (bool, int, float):
        return tp
    return str  # text for Literal, str, lists (JSON) and anything optional ("" = unset)


def _text(value: Any, kind: type) -> Any:
    if kind is not str:
        return value
    if value is None:
        return ""
    # lists of config models (evaluation.benchmarks) become JSON objects
    return value if isinstance(value, str) else json.dumps(to_jsonable_python(value))


def form_fields(defaults: PipelineConfig, cls: type[BaseModel] = PipelineConfig, prefix: str = "") -> list[FormField]:
    out: list[FormField] = []
    for name, info in cls.model_fields.items():
        key = prefix + name
        if key in SKIP:
            continue
        tp, optional = _unwrap(info.annotation)
        current = _lookup(defaults, key)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            out += form_fields(defaults, tp, key + ".")
            continue
        kind = _kind(tp, optional)
        desc = info.description or ""
        if kind is str and typing.get_origin(tp) is list:
            desc = (desc + " " if desc else "") + "(JSON list)"
        if optional:
            desc = (desc + " " if desc else "") + "(empty: unset)"
        out.append(FormField(key.replace(".", "__"), key, kind, _text(current, kind), desc.strip()))
    return out


def _lookup(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part, None) if cfg is not None else None
    return cfg


def config_from_form(values: dict[str, Any], fields: list[FormField]) -> PipelineConfig:
    """The form's values (by field name, or by dotted key as `--set key=value` text) -> a validated config;
    an empty text leaves its key unset."""
    from ..cli import _set_value

    by_name = {f.name: f for f in fields} | {f.key: f for f in fields}
    overrides: dict[str, Any] = {}
    for name, value in values.items():
        f = by_name[name]
        if isinstance(value, str):
            if value == "":
                continue
            declared = _unwrap(_field_type(f.key))[0]
            # text fields keep their text (a sha256 of digits stays a string); the rest is YAML/JSON text
            value = value if declared is str else _set_value(value) if f.kind is str else f.kind(value)
        overrides[f.key] = value
    return load_pipeline_config(None, overrides)


def _field_type(dotted: str) -> Any:
    cls: Any = PipelineConfig
    tp: Any = None
    for part in dotted.split("."):
        tp = cls.model_fields[part].annotation
        cls = _unwrap(tp)[0]
    return tp
