"""The checks on a merge's inputs and output, in one place for both entry points.

`rainmerge plan` (preflight/plan.py) runs them on the metadata it reads (config.json, shard headers from
the files or from the Hub) and reports problems; the merge start runs the plan, then
`rainmerge.preflight.merge_start.preflight` runs them again on the opened models and the real output filesystem, and
raises. A check takes plain data where it can, a tensor table {name: (shape, dtype)} per role, so both
callers hand it what they have; failures name the role, the file and the fix. The architecture
comparison itself is `rainmerge.arch.compare_arch`, which the merge start's `check_compatible` also uses.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ..arch import ArchSpec, arch_from_config, compare_arch
from ..errors import ConfigError, DiskSpaceError, RainMergeError
from ..io.lazy import ModelSource, check_finite, read_header
from ..io.lock import human_bytes
from .plan_report import ModuleShape, Problem

# {tensor name: (shape, safetensors dtype string)}: what a shard header says, local or on the Hub
TensorTable = Mapping[str, tuple[tuple[int, ...], str]]


class HasConfig(Protocol):
    """What the architecture check reads of an input (sources.ModelMeta): its config.json, None if unread."""

    config: dict[str, Any] | None


_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".pkl"}


# ---------------------------------------------------------------------------------------------------
# shard headers and tensor tables


def shard_tensors(path: str | Path, role: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """One weight file's tensor table from its header; a truncated or corrupt shard raises
    CorruptInputError naming the role and the file (the header check of every read, io.lazy)."""
    return {n: (shape, dt) for n, (dt, shape, _, _) in read_header(path, role).items()}


def check_shards(source: ModelSource) -> None:
    """Every weight file's header parses and covers its tensors (names the role and the file)."""
    for f in source.files:
        shard_tensors(f, source.role)


def tensor_table(source: ModelSource) -> dict[str, tuple[tuple[int, ...], str]]:
    """An opened model's tensor table (from the headers ModelSource read)."""
    return {n: (tuple(source.shape(n)), source.dtype_str(n)) for n in source.names()}


def is_float(dtype: str) -> bool:
    return dtype.startswith(("F", "BF"))


# ---------------------------------------------------------------------------------------------------
# architecture and the merged tensors


def arch_checks(metas: Mapping[str, HasConfig], problems: list[Problem], warnings: list[str]) -> dict[str, ArchSpec]:
    """Each readable config's ArchSpec; unsupported families and every dimension that differs from the
    LRM's are problems (one per distinct refusal), a different vocabulary size a warning."""
    specs: dict[str, ArchSpec] = {}
    refused: dict[str, list[str]] = {}  # message (without the role) -> roles: one problem per distinct refusal
    for role, m in metas.items():
        if m.config is None:
            continue
        try:
            specs[role] = arch_from_config(m.config, role)
        except RainMergeError as exc:
            refused.setdefault(str(exc).removeprefix(f"{role}: "), []).append(role)
    for msg, roles in refused.items():  # rendered as "role: message", so the role is not in the message
        problems.append(Problem(code="arch_unsupported", role=", ".join(roles), message=msg))
    ref = specs.get("reasoning")
    if ref is not None:
        for role, s in specs.items():
            if role == "reasoning":
                continue
            errors, warns = compare_arch(ref, s, "reasoning", role)  # the merge start's own comparison
            problems.extend(Problem(code="arch_mismatch", role=role, message=msg) for msg in errors)
            warnings.extend(warns)
    return specs


def merged_layers(layers: list[int] | None, arch: ArchSpec, problems: list[Problem]) -> list[int]:
    """The configured layers (default all); those past the model's last layer are a problem and dropped."""
    layers = layers if layers is not None else list(range(arch.num_layers))
    if layers and max(layers) >= arch.num_layers:
        problems.append(Problem(code="layers_out_of_range", message=(
            f"layers: {max(layers)} is out of range; the model has {arch.num_layers} layers")))
        layers = [layer for layer in layers if layer < arch.num_layers]
    return layers


def merged_names(arch: ArchSpec, layers: Iterable[int], modules: Iterable[str]) -> list[str]:
    """The merged tensors' names, layer by layer (the order of rainmerge.merge.merge_sites)."""
    modules = list(modules)
    return [arch.weight_name(layer, mod) for layer in layers for mod in modules]


def shape_checks(arch: ArchSpec, layers: list[int], modules: list[str], tables: Mapping[str, TensorTable],
                 problems: list[Problem]) -> list[ModuleShape]:
    """Every merged tensor of every role: present, the shape ArchSpec expects, a float dtype. One row per
    module; at most five problems per (module, role), then a count."""
    rows = []
    for mod in modules:
        want = arch.weight_shape(mod)
        status, dtypes = {}, {}
        for role, table in tables.items():
            if not table:
                status[role] = "unread"
                continue
            bad, seen = _bad_tensors(arch, layers, mod, role, table, want)
            status[role] = "ok" if not bad else f"{len(bad)} bad"
            dtypes[role] = ",".join(sorted(seen))
            for msg in bad[:5]:
                code = "missing_tensor" if "missing" in msg else "shape_mismatch" if "shape" in msg else "dtype"
                problems.append(Problem(code=code, role=role, message=msg))
            if len(bad) > 5:
                problems.append(Problem(code="shape_mismatch", role=role,
                                        message=f"{role}: ... and {len(bad) - 5} more bad '{mod}' tensors"))
        rows.append(ModuleShape(module=mod, tensor=arch.weight_name(0, mod).replace(".0.", ".{L}.", 1),
                                expected=list(want), checked=len(layers), status=status, dtypes=dtypes))
    return rows


def _bad_tensors(arch: ArchSpec, layers: list[int], mod: str, role: str, table: TensorTable,
                 want: tuple[int, ...]) -> tuple[list[str], set[str]]:
    """What is wrong with one module's merged tensors in one role, and the dtypes seen."""
    bad, seen = [], set()
    for layer in layers:
        name = arch.weight_name(layer, mod)
        got = table.get(name)
        if got is None:
            bad.append(f"{role}: merged tensor {name} is missing")
            continue
        seen.add(got[1])
        if tuple(got[0]) != want:
            bad.append(f"{role}: {name} has shape {tuple(got[0])}, expected {want}")
        elif not is_float(got[1]):
            bad.append(f"{role}: {name} has non-float dtype {got[1]}")
    return bad, seen


def dtype_warnings(tables: Mapping[str, TensorTable], names: Iterable[str]) -> list[str]:
    """One warning per (role, dtype pair) where a merged tensor's dtype differs from the base's."""
    base = tables["base"]
    seen: dict[tuple[str, str, str], list[str]] = {}
    for name in names:
        if name not in base:
            continue
        b = base[name][1]
        for role in ("instruct", "reasoning"):
            table = tables.get(role)
            if table is None or name not in table or table[name][1] == b:
                continue
            seen.setdefault((role, table[name][1], b), []).append(name)
    out = []
    for (role, dt, b), hits in seen.items():
        what = "the task vector (ITM - base) is computed across precisions" if role == "instruct" else \
            "the merged weights are written in the reasoning model's dtype"
        out.append(f"{role}: {len(hits)} merged tensor(s) are {dt} while the base's are {b} (e.g. {hits[0]}); "
                   f"{what}, so the {dt}/{b} rounding difference enters the merge")
    return out


# ---------------------------------------------------------------------------------------------------
# the output: protected inputs and disk space


def calibration_paths(cfg: Any) -> dict[str, Path]:
    """{label: path} of the configured local calibration files (protected from the output)."""
    out = {}
    for key in ("reasoning_calibration", "instruction_calibration"):
        ref = getattr(cfg, key, None)
        if ref is not None and getattr(ref, "path", None):
            out[f"{key.replace('_', ' ')} file"] = Path(ref.path)
    return out


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
    output = Path(output).expanduser().resolve()
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


# ---------------------------------------------------------------------------------------------------
# the weights themselves (run time only: reads tensors)


def scan_nonfinite(source: ModelSource, names: Iterable[str], role: str | None = None) -> None:
    """Read the named float tensors one at a time; NaN/Inf raises NonFiniteError naming tensor and role."""
    from tqdm.auto import tqdm

    role = role or source.role
    names = list(names)
    # reading every LRM tensor takes minutes on a 7B: a bar with ETA once it has run a few seconds
    for name in tqdm(names, desc=f"checking {role} weights are finite", unit="tensor", delay=3):
        if not source.has(name) or not is_float(source.dtype_str(name)):
            continue
        t = source.get(name, check=False)
        check_finite(t, name, role, source.file_of(name))
        del t
