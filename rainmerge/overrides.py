"""`--set KEY=VALUE` overrides (the CLI, and the run form's text fields): how their text becomes config values."""

from __future__ import annotations

import re
from typing import Any

from .errors import ConfigError, RainMergeError

_FLOAT_TEXT = r"[-+]?(0|[1-9][0-9]*)?\.[0-9]*([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"


def set_value(text: str) -> Any:
    """YAML-parse a --set value, but keep the text when YAML would change it: a git/sha256 digest
    (40 or 64 hex characters, even all digits), a number whose text form differs from the input
    (leading zeros, 1_000, 0x10, 1:30 ...), or a YAML syntax error."""
    import yaml

    s = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}", s):
        return s
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and re.fullmatch(r"[-+]?(0|[1-9][0-9]*)", s) is None:
        return text
    if isinstance(value, float) and re.fullmatch(_FLOAT_TEXT, s) is None:
        return text
    return value


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE` items -> {dotted key: value}, each value read by `set_value`."""
    out = {}
    for item in items:
        if "=" not in item:
            raise RainMergeError(f"--set expects KEY=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        out[k.strip()] = set_value(v)
    return out


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a config tree, creating sections; a key through a non-section is a ConfigError."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{dotted}': '{key}' is not a section")
    node[keys[-1]] = value
