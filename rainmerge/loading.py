"""The one model loader, for the merge stages and for evaluation: a causal LM from a folder (or a Hub id at
a revision) in the configured dtype, placed on one device or spread over several GPUs by a device map
straight from the checkpoint (never built whole on the host first), remote code only when a config asks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .dtypes import DTYPE_BYTES, FLOATS, compute_float
from .io.lazy import ModelSource, read_header

log = logging.getLogger("rainmerge")

GPU_USABLE = 0.9  # of a device's budget a load may fill (CUDA context, allocator slack)


@dataclass(frozen=True)
class Placement:
    """Where a model goes. device_map None: whole on `device` (a GPU load goes straight there, no host copy).
    device_map set ("auto", "balanced", ...): accelerate spreads the layers over `max_memory`'s devices."""

    device: str = "cpu"
    device_map: str | None = None
    max_memory: dict[Any, Any] | None = None

    @property
    def spread(self) -> bool:
        return self.device_map is not None


def resolve_dtype(req: str, device: str) -> torch.dtype:
    """'auto' is bfloat16 on a GPU and float32 on the host; otherwise the named torch dtype."""
    if req == "auto":
        return torch.bfloat16 if device != "cpu" else torch.float32
    if device == "cpu" and req != "float32":
        log.warning("dtype %s on CPU is very slow; float32 is recommended", req)
    return FLOATS[req]


def folder_tensors(folder: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (safetensors dtype, shape)} of a local model folder, from the shard headers only."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update({n: (dt, shape) for n, (dt, shape, _, _) in read_header(f).items()})
    return out


def stored_float_dtype(src: ModelSource | dict[str, tuple[str, tuple[int, ...]]]) -> torch.dtype | None:
    """The one float dtype all of the model's float tensors are stored in; None when mixed or unknown."""
    if isinstance(src, ModelSource):
        seen = {src.dtype_str(n) for n in src.names() if src.dtype_str(n).startswith(("F", "BF"))}
    else:
        seen = {dt for dt, _ in src.values() if dt.startswith(("F", "BF"))}
    return compute_float(seen.pop()) if len(seen) == 1 else None


def weight_bytes(tensors: dict[str, tuple[str, tuple[int, ...]]], dtype: torch.dtype) -> int:
    """Bytes of the model's tensors once loaded in `dtype` (float tensors cast, others as stored)."""
    import math

    size = torch.finfo(dtype).bits // 8
    return sum(math.prod(shape) * (size if dt.startswith(("F", "BF")) else DTYPE_BYTES.get(dt, 4))
               for dt, shape in tensors.values())


def gpu_max_memory(gpu_memory: list[str] | tuple[str, ...] | None) -> dict[Any, Any]:
    """accelerate's max_memory over the GPUs: each gpu_memory entry (default: every visible GPU's free
    memory), and nothing on the host (cpu 0: a layer that does not fit is an error, never offloaded)."""
    n = torch.cuda.device_count()
    sizes = list(gpu_memory or [])
    if len(sizes) > n:
        raise ConfigError(f"gpu_memory names {len(sizes)} devices, {n} are visible")
    mem: dict[Any, Any] = {i: sizes[i] if i < len(sizes) else int(torch.cuda.mem_get_info(i)[0])
                           for i in range(len(sizes) or n)}
    mem["cpu"] = 0
    return mem


def check_fits(need: dict[str, int], max_memory: dict[Any, Any], what: str) -> None:
    """ConfigError before any load when the pieces in `need` (bytes by name) exceed GPU_USABLE of the
    devices' budgets together (the figures come from shard headers and the model config, not a load)."""
    from .memory import parse_bytes

    budgets = [parse_bytes(v) if isinstance(v, str) else int(v) for k, v in max_memory.items() if k not in ("cpu", "disk")]
    total, usable = sum(need.values()), int(GPU_USABLE * sum(budgets))
    if total > usable:
        parts = " + ".join(f"{k} {v / 1e9:.1f} GB" for k, v in need.items())
        raise ConfigError(f"{what} needs {total / 1e9:.1f} GB ({parts}); {len(budgets)} GPU(s) offer "
                          f"{usable / 1e9:.1f} GB ({GPU_USABLE:g} x {', '.join(f'{b / 1e9:.0f}' for b in budgets)} GB). "
                          "Give it more GPUs (gpu_memory, one size per device), lower the KV cache, or serve it "
                          "with tensor parallel (the endpoint engine)")


@torch.no_grad()
def _cast_parameters(model: torch.nn.Module, dtype: torch.dtype, src: ModelSource | None = None) -> None:
    """Upcast floating parameters one at a time, each from a fresh read of its checkpoint tensor when
    the name and shape match (from_pretrained's tensors are views of one mmap per shard: upcasting
    them in place leaves every page read resident until the last is replaced, ~the whole stored
    model on top of the upcast one). Shared (tied) parameters are one object, cast once; buffers
    (rotary inv_freq, computed at init) are left as they are."""
    for name, p in model.named_parameters():
        if not p.is_floating_point() or p.dtype == dtype:
            continue
        if src is not None and src.has(name) and tuple(src.shape(name)) == tuple(p.shape):
            p.data = src.get(name, dtype, check=False)  # the preflight scanned RAIN's LRM
        else:
            p.data = p.data.to(dtype)


def load_causal_lm(path: str | Path, dtype: torch.dtype, placement: Placement, *, trust_remote_code: bool = False,
                   revision: str | None = None, attn_implementation: str | None = None,
                   source: ModelSource | None = None) -> torch.nn.Module:
    """The model in eval mode. A GPU load goes straight to the device(s) (device_map), never through a
    whole host copy. On the host, a checkpoint stored narrower than `dtype` (bf16 asked for in float32)
    is loaded as stored and upcast parameter by parameter: from_pretrained(dtype=float32) would hold the
    stored tensors and their float32 copies at once (1.5x the float32 model at peak); same values (the
    widening is exact). A spread load that would leave a layer on the host or disk is an error."""
    from transformers import AutoModelForCausalLM

    stored = stored_float_dtype(source if source is not None else folder_tensors(path))
    widen = (placement.device == "cpu" and not placement.spread and stored is not None and stored != dtype
             and torch.promote_types(stored, dtype) == dtype)
    kwargs: dict[str, Any] = {"dtype": stored if widen else dtype, "trust_remote_code": trust_remote_code}
    if revision is not None:
        kwargs["revision"] = revision
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if placement.spread:
        kwargs.update(device_map=placement.device_map, max_memory=placement.max_memory)
    elif placement.device != "cpu":
        kwargs["device_map"] = placement.device
    else:
        kwargs["device_map"] = None
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if widen:
        _cast_parameters(model, dtype, source)
        model.config.dtype = dtype
    if placement.spread:  # every module stays where the device map put it
        budget = placement.max_memory or {}
        off = sorted({str(d) for d in getattr(model, "hf_device_map", {}).values()
                      if str(d) == "disk" or (str(d) == "cpu" and not budget.get("cpu"))})
        if off:
            raise ConfigError(f"{path}: the model does not fit the memory budget {placement.max_memory} (the device "
                              f"map puts layers on {', '.join(off)})")
        return model.eval()
    return model.to(placement.device).eval()


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        kwargs["revision"] = revision
    return AutoTokenizer.from_pretrained(str(path), **kwargs)
