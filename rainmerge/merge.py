"""Stage 3: stream the three models tensor by tensor and write the merged folder atomically.

Tensors outside the merge are copied from the LRM without any cast (bit-identical); merged tensors
are accumulated in float32 or wider and cast once to the LRM's dtype (RAIN rounds bfloat16/float16 outputs
itself, compensating the rounding error at the protected features, and records the residual of the cast
tensor: rainmerge/rounding.py).

Finiteness costs one reduction per written tensor (io.lazy.all_finite, in the stored dtype): merged
tensors are checked once, on the output; only when that fails are the inputs checked to name the
broken model. A method whose output can hide a NaN input (TIES/DARE trim) has its inputs checked
first (`propagates_nonfinite = False`, the default). Copied LRM tensors are checked unless the
preflight already scanned them (`inputs_scanned`, RAIN).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .arch import ArchSpec
from .io.lazy import ModelSource, all_finite, check_finite
from .io.writer import AtomicDir, copy_side_files, folder_contents, write_sharded
from .methods.base import MergeMethod, Site, acc_dtype

PROVENANCE_FILE = "rainmerge_provenance.json"


class Prefetcher:
    """Reads the next tensor (LRM, and base/ITM for merged sites) on a thread while the current one
    is merged, so disk reads overlap compute. At most one tensor triple is read ahead.
    `with_reasoning=False` (the Stage-2 probe merge) reads only base and ITM: (None, base, instruct)."""

    def __init__(self, reasoning: ModelSource, base: ModelSource, instruct: ModelSource, sites: dict[str, Site],
                 with_reasoning: bool = True):
        from concurrent.futures import ThreadPoolExecutor

        self.srcs, self.sites, self.with_reasoning = (reasoning, base, instruct), sites, with_reasoning
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rainmerge-read")
        self.order: list[str] = []
        self.position: dict[str, int] = {}
        self.pending: dict[str, Any] = {}

    def _read(self, name: str):
        reasoning, base, instruct = self.srcs  # finiteness is checked by the writer (see the module docstring)
        if name in self.sites:
            raw = reasoning.get(name, check=False) if self.with_reasoning else None
            return raw, base.get(name, check=False), instruct.get(name, check=False)
        return reasoning.get(name, check=False), None, None

    def plan(self, names: list[str]) -> None:
        self.order = list(names)
        self.position = {n: k for k, n in enumerate(self.order)}
        if self.order:
            self.pending[self.order[0]] = self.pool.submit(self._read, self.order[0])

    def take(self, name: str):
        fut = self.pending.pop(name, None)
        k = self.position.get(name)
        if k is not None:
            if k + 1 < len(self.order) and self.order[k + 1] not in self.pending:
                self.pending[self.order[k + 1]] = self.pool.submit(self._read, self.order[k + 1])
        return fut.result() if fut is not None else self._read(name)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def merge_sites(arch: ArchSpec, layers: list[int], modules: list[str]) -> dict[str, Site]:
    return {arch.weight_name(l, m): Site(l, m, arch.weight_name(l, m)) for l in layers for m in modules}


def check_inputs(srcs: tuple[ModelSource, ...], name: str, tensors: tuple[torch.Tensor, ...]) -> None:
    for src, t in zip(srcs, tensors):
        check_finite(t, name, src.role, src.file_of(name))


def merge_one(method: MergeMethod, site: Site, srcs: tuple[ModelSource, ...], raw: torch.Tensor,
              b: torch.Tensor, i: torch.Tensor, inputs_scanned: bool = False) -> torch.Tensor:
    """One merged tensor in the LRM's dtype. Methods with `accepts_raw` take the stored tensors and
    upcast as they compute (no separate cast pass); others get them cast to the accumulate dtype."""
    if not inputs_scanned and not method.propagates_nonfinite:
        check_inputs(srcs, site.name, (raw, b, i))
    device = str(method.device)
    if method.accepts_raw:
        merged = method.merge(site, raw, b, i)
    else:
        acc = acc_dtype(raw)
        ins = (raw, b, i)
        if device != "cpu":  # move as stored (half the bytes of bf16 -> fp32 on the host), upcast there
            ins = tuple(t.to(device, non_blocking=True) for t in ins)
        merged = method.merge(site, *(t.to(acc) for t in ins))
    # cast where it was computed (a no-op for RAIN, which casts itself with compensated rounding and measures
    # the identity on the cast tensor); checked there: one reduction on the device
    out = merged.to(raw.dtype)
    if not all_finite(out):
        check_inputs(srcs, site.name, (raw, b, i))  # names the broken input, if one is
        raise FloatingPointError(f"{site.name}: merged weight has non-finite values")
    return out.cpu()  # then move the stored bytes


def write_merged_model(
    reasoning: ModelSource,
    base: ModelSource,
    instruct: ModelSource,
    sites: dict[str, Site],
    method: MergeMethod,
    output: str | Path,
    provenance: dict[str, Any],
    overwrite: bool = False,
    max_shard_size: str = "5GB",
    progress: bool = True,
    extra_files: dict[str, Any] | None = None,
    inputs_scanned: bool = False,
) -> Path:
    """Write LRM-with-merged-sites to `output` (temp folder + rename); returns the final path.
    `inputs_scanned`: safety.preflight(scan_finite=True) already read every LRM tensor and the merged
    tensors of base and ITM, so only the merged outputs are checked here."""
    layout = {n: (reasoning.shape(n), reasoning.dtype_str(n)) for n in reasoning.names()}
    reader = Prefetcher(reasoning, base, instruct, sites)
    srcs = (reasoning, base, instruct)

    def produce(name: str) -> torch.Tensor:
        raw, b, i = reader.take(name)
        site = sites.get(name)
        if site is None:
            if not inputs_scanned:
                check_finite(raw, name, reasoning.role, reasoning.file_of(name))
            return raw
        return merge_one(method, site, srcs, raw, b, i, inputs_scanned)

    t0 = time.time()
    with AtomicDir(output, overwrite) as tmp:
        try:
            write_sharded(tmp, layout, produce, max_shard_size, desc=f"stage 3: merge ({method.name})",
                          progress=progress, upcoming=reader.plan)
        finally:
            reader.close()
        copied = copy_side_files(reasoning.root, tmp)
        provenance = {**provenance, "copied_from_lrm": copied, "module_stats": method.stats(),
                      "warnings": provenance.get("warnings", []) + method.warnings,
                      "merge_seconds": round(time.time() - t0, 3)}
        for fname, obj in (extra_files or {}).items():
            (tmp / fname).write_text(json.dumps(obj, indent=2, sort_keys=True))
        # what --overwrite later checks the folder against (io.writer._not_owned)
        provenance["contents"] = folder_contents(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True, default=str))
        final = Path(output).expanduser().resolve()
    return final
