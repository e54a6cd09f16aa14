"""Stage 3: stream the three models tensor by tensor and write the merged folder atomically.

Tensors outside the merge are copied from the LRM without any cast (bit-identical); merged tensors
are accumulated in float32 or wider and cast once to the LRM's dtype.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .arch import ArchSpec
from .io.lazy import ModelSource
from .io.writer import AtomicDir, copy_side_files, write_sharded
from .methods import MergeMethod, Site

PROVENANCE_FILE = "rainmerge_provenance.json"


def merge_sites(arch: ArchSpec, layers: list[int], modules: list[str]) -> dict[str, Site]:
    return {arch.weight_name(l, m): Site(l, m, arch.weight_name(l, m)) for l in layers for m in modules}


def _acc_dtype(dt: torch.dtype) -> torch.dtype:
    return torch.float64 if dt == torch.float64 else torch.float32


def write_merged_model(
    lrm: ModelSource,
    base: ModelSource,
    itm: ModelSource,
    sites: dict[str, Site],
    method: MergeMethod,
    output: str | Path,
    provenance: dict[str, Any],
    overwrite: bool = False,
    max_shard_size: str = "5GB",
    progress: bool = True,
    extra_files: dict[str, Any] | None = None,
) -> Path:
    """Write LRM-with-merged-sites to `output` (temp folder + rename); returns the final path."""
    layout = {n: (lrm.shape(n), lrm.dtype_str(n)) for n in lrm.names()}

    def produce(name: str) -> torch.Tensor:
        raw = lrm.get(name)
        site = sites.get(name)
        if site is None:
            return raw
        acc = _acc_dtype(raw.dtype)
        merged = method.merge(site, raw.to(acc), base.get(name, acc), itm.get(name, acc))
        if not torch.isfinite(merged).all():
            raise FloatingPointError(f"{name}: merged weight has non-finite values")
        return merged.to(raw.dtype)

    t0 = time.time()
    with AtomicDir(output, overwrite) as tmp:
        write_sharded(tmp, layout, produce, max_shard_size, desc=f"stage 3: merge ({method.name})",
                      progress=progress)
        copied = copy_side_files(lrm.root, tmp)
        provenance = {**provenance, "copied_from_lrm": copied, "module_stats": method.stats(),
                      "warnings": provenance.get("warnings", []) + getattr(method, "warnings", []),
                      "merge_seconds": round(time.time() - t0, 3)}
        for fname, obj in (extra_files or {}).items():
            (tmp / fname).write_text(json.dumps(obj, indent=2, sort_keys=True))
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True, default=str))
        final = Path(output).expanduser().resolve()
    return final
