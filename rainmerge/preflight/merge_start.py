"""The merge start's run-time checks: the shared checks of `rainmerge.preflight.checks` applied to the
opened models and the real output filesystem.

`rainmerge.stages.run_merge` first runs the metadata plan (`check_plan`: `rainmerge plan`'s
`build_plan`, which calls the same check functions on headers read without opening the models), then
`open_models`, then, before any forward pass:

    warnings = preflight(ctx.sources(), list(ctx.sites), out_dir, protected=calibration_paths(cfg),
                         scan_finite=needs_stages(cfg.method))

Every check raises a `RainMergeError` subclass whose message names the file, the role and the fix;
`preflight` returns the warnings (dtype differences of merged tensors).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from ..io.lazy import ModelSource
from ..io.writer import check_overlap
from .checks import (calibration_paths, check_disk_space, check_shards, dtype_warnings, output_bytes,
                               scan_nonfinite, side_file_bytes, tensor_table)

__all__ = ["calibration_paths", "check_disk_space", "check_shards", "preflight", "scan_nonfinite"]


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
    warnings = dtype_warnings({r: tensor_table(s) for r, s in sources.items()}, names) if "base" in sources else []
    if scan_finite:
        for role, src in sources.items():
            scan_nonfinite(src, src.names() if role == "reasoning" else names, role)
    return warnings
