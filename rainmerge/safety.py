"""Preflight checks: everything about the inputs and the output that can fail, before any heavy work.

The orchestrator calls, right after opening the three models (and before loading the LRM or reading
calibration through it):

    warnings += preflight(srcs, list(plan.sites), Path(cfg.output), protected=calibration_paths(cfg))
    scan_nonfinite(srcs["base"], list(plan.sites), "base")
    scan_nonfinite(srcs["instruct"], list(plan.sites), "instruct")
    scan_nonfinite(srcs["reasoning"], srcs["reasoning"].names(), "reasoning")  # the forward pass reads all

Each check is pure (reads headers, metadata, and for `scan_nonfinite` the merged tensors one at a time)
and raises a `RainMergeError` subclass whose message names the file, the role and the fix.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError, DiskSpaceError
from .io.lazy import ModelSource, _open, check_finite, read_header
from .io.lock import _final, human_bytes
from .io.writer import check_overlap

log = logging.getLogger("rainmerge")

_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".pkl"}


def check_shards(source: ModelSource) -> None:
    """Every weight file's header parses and covers its tensors (names the role and the file)."""
    for f in source.files:
        read_header(f, source.role)


def output_bytes(reasoning: ModelSource) -> int:
    """Size of the merged weights: the LRM's tensors, same layout and dtypes."""
    return reasoning.tensor_bytes()


def side_file_bytes(reasoning: ModelSource) -> int:
    """Config/tokenizer files copied next to the merged weights."""
    total = 0
    for f in reasoning.root.iterdir():
        if f.is_file() and f.suffix not in _WEIGHT_SUFFIXES and not f.name.startswith("."):
            total += f.stat().st_size
    return total


def _existing_ancestor(p: Path) -> Path:
    while not p.exists():
        p = p.parent
    return p


def check_disk_space(output: str | Path, weights_bytes: int, extra_bytes: int = 0) -> int:
    """Free space on the output's filesystem must hold the temporary output folder (weights + side
    files + 1% and 16 MiB headroom); an output being replaced is kept until the new one is complete, so
    it gets no credit. Returns the bytes required."""
    output = _final(output)
    where = _existing_ancestor(output.parent)
    need = weights_bytes + extra_bytes + weights_bytes // 100 + (16 << 20)
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        raise ConfigError(f"output {output}: cannot stat the filesystem of {where}: {exc.strerror}") from None
    if free < need:
        raise DiskSpaceError(
            f"output {output}: not enough disk space: the merged model needs about {human_bytes(need)} "
            f"({weights_bytes} bytes of weights + {extra_bytes} of side files + headroom) but the filesystem of "
            f"{where} has {human_bytes(free)} ({free} bytes) free; free space or choose another output")
    return need


def dtype_warnings(sources: Mapping[str, ModelSource], names: Iterable[str]) -> list[str]:
    """One warning per (role, dtype pair) where a merged tensor's dtype differs from the base's."""
    base = sources["base"]
    seen: dict[tuple[str, str, str], list[str]] = {}
    for name in names:
        if not base.has(name):
            continue
        b = base.dtype_str(name)
        for role in ("instruct", "reasoning"):
            src = sources.get(role)
            if src is None or not src.has(name) or src.dtype_str(name) == b:
                continue
            seen.setdefault((role, src.dtype_str(name), b), []).append(name)
    out = []
    for (role, dt, b), hits in seen.items():
        what = "the task vector (ITM - base) is computed across precisions" if role == "instruct" else \
            "the merged weights are written in the reasoning model's dtype"
        out.append(f"{role}: {len(hits)} merged tensor(s) are {dt} while the base's are {b} (e.g. {hits[0]}); "
                   f"{what}, so the {dt}/{b} rounding difference enters the merge")
    return out


def scan_nonfinite(source: ModelSource, names: Iterable[str], role: str | None = None) -> None:
    """Read the named float tensors one at a time; NaN/Inf raises NonFiniteError naming tensor and role."""
    from tqdm.auto import tqdm

    role = role or source.role
    names = list(names)
    # reading every LRM tensor takes minutes on a 7B: a bar with ETA once it has run a few seconds
    for name in tqdm(names, desc=f"checking {role} weights are finite", unit="tensor", delay=3):
        if not source.has(name) or not source.dtype_str(name).startswith(("F", "BF")):
            continue
        f = source.file_of(name)
        with _open(f, role) as h:
            t = h.get_tensor(name)
        check_finite(t, name, role, f)
        del t


def calibration_paths(cfg: Any) -> dict[str, Path]:
    """{label: path} of the configured local calibration files (protected from the output)."""
    out = {}
    for key in ("reasoning_calibration", "instruction_calibration"):
        ref = getattr(cfg, key, None)
        if ref is not None and getattr(ref, "path", None):
            out[f"{key.replace('_', ' ')} file"] = Path(ref.path)
    return out


def preflight(sources: Mapping[str, ModelSource], merged_names: Iterable[str], output: str | Path,
              expected_output_bytes: int | None = None, *, protected: Mapping[str, Path] | Iterable[Path] | None = None,
              scan_finite: bool = False) -> list[str]:
    """Cheap checks after opening the models, before any forward pass; returns warnings.

    - the output is not, does not contain and does not lie inside an input model folder or `protected`
      path (calibration files);
    - every shard of every model has a readable header covering its tensors;
    - the output's filesystem has room for the merged model (`expected_output_bytes`, default the LRM's
      tensor bytes) plus the side files;
    - dtype differences of merged tensors between base and ITM/LRM are warned;
    - with `scan_finite`, `scan_nonfinite` on the merged tensors of base and ITM and on every tensor of
      the LRM (the forward passes use all of them); reads those tensors, so not cheap.
    """
    names = list(merged_names)
    reasoning = sources.get("reasoning") or list(sources.values())[-1]
    prot: list[tuple[str, Path]] = [(f"{role} model folder", s.root) for role, s in sources.items()]
    if isinstance(protected, Mapping):
        prot += [(str(k), Path(v)) for k, v in protected.items()]
    elif protected is not None:
        prot += [("input", Path(p)) for p in protected]
    check_overlap(output, prot)
    for src in sources.values():
        check_shards(src)
    weights = output_bytes(reasoning) if expected_output_bytes is None else int(expected_output_bytes)
    check_disk_space(output, weights, side_file_bytes(reasoning))
    warnings = dtype_warnings(sources, names) if "base" in sources else []
    if scan_finite:
        for role, src in sources.items():
            scan_nonfinite(src, src.names() if role == "reasoning" else names, role)
    return warnings
