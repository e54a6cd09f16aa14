"""What every stage of a merge shares: the validated config, the three opened models, the
architecture, the merged sites and where forwards run. Built once, never modified."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from .arch import ArchSpec, arch_from_config, check_compatible
from .config import ModelsSpec, Runtime
from .dtypes import compute_float
from .errors import ConfigError
from .io.lazy import ModelSource
from .merge import merge_sites
from .methods import Site

log = logging.getLogger("rainmerge")

ROLES = ("base", "instruct", "reasoning")


@dataclass(frozen=True)
class MergeContext:
    models: ModelsSpec
    base: ModelSource
    instruct: ModelSource
    reasoning: ModelSource
    arch: ArchSpec
    layers: tuple[int, ...]
    sites: dict[str, Site]
    device: str
    forward_dtype: torch.dtype
    warnings: tuple[str, ...] = ()
    stages_path: str = "auto"  # whole | sequential | auto (Runtime.stages_path)
    hidden_states: str = "auto"  # sequential path: device | host | disk | auto
    spill_dir: str | None = None
    gpu_memory: tuple[str, ...] | None = None  # per-device budget; the whole path's device_map max_memory

    def sources(self) -> dict[str, ModelSource]:
        return {r: getattr(self, r) for r in ROLES}

    def close(self) -> None:
        for src in self.sources().values():
            src.close()


def resolve_device(req: str) -> str:
    if req == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available; use --device cpu or auto")
    if req == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return req


def resolve_forward_dtype(req: str, device: str) -> torch.dtype:
    if req == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cpu" and req != "float32":
        log.warning("forward_dtype %s on CPU is very slow; float32 is recommended", req)
    return getattr(torch, req)


def _check_tensors(sites: dict[str, Site], arch: ArchSpec, srcs: dict[str, ModelSource]) -> None:
    for name, site in sites.items():
        want = arch.weight_shape(site.module)
        for role, src in srcs.items():
            if not src.has(name):
                raise ConfigError(f"{role}: merged tensor {name} is missing from {src.root}")
            if tuple(src.shape(name)) != want:
                raise ConfigError(f"{role}: {name} has shape {src.shape(name)}, expected {want}")
            if not src.dtype_str(name).startswith(("F", "BF")):
                raise ConfigError(f"{role}: {name} has non-float dtype {src.dtype_str(name)}")


def open_models(models: ModelsSpec, runtime: Runtime) -> MergeContext:
    """Every check that needs only the configs and tensor headers, before any forward pass or write."""
    cfg = models
    device = resolve_device(runtime.device)
    fdt = resolve_forward_dtype(runtime.forward_dtype, device)
    srcs = {r: ModelSource(getattr(cfg, r), r) for r in ROLES}
    specs = {role: arch_from_config(s.config, role) for role, s in srcs.items()}
    warnings = check_compatible({"reasoning": specs["reasoning"], "base": specs["base"],
                                 "instruct": specs["instruct"]})
    arch = specs["reasoning"]
    layers = cfg.layers if cfg.layers is not None else list(range(arch.num_layers))
    if max(layers) >= arch.num_layers:
        raise ConfigError(f"layers: {max(layers)} is out of range; the model has {arch.num_layers} layers")
    sites = merge_sites(arch, layers, list(cfg.modules))
    _check_tensors(sites, arch, srcs)
    for w in warnings:
        log.warning(w)
    return MergeContext(cfg, srcs["base"], srcs["instruct"], srcs["reasoning"], arch, tuple(layers), sites,
                        device, fdt, tuple(warnings), runtime.stages_path, runtime.hidden_states, runtime.spill_dir,
                        tuple(runtime.gpu_memory) if runtime.gpu_memory else None)


def load_tokenizer(ctx: MergeContext) -> Any:
    from transformers import AutoTokenizer

    src = ctx.reasoning
    try:
        return AutoTokenizer.from_pretrained(str(src.root), trust_remote_code=ctx.models.reasoning.trust_remote_code)
    except Exception as exc:
        raise ConfigError(f"reasoning model: cannot load its tokenizer from {src.root}: {exc}") from None


def stored_float_dtype(src: ModelSource) -> torch.dtype | None:
    """The one float dtype all of the model's float tensors are stored in; None when mixed or unknown."""
    seen = {src.dtype_str(n) for n in src.names() if src.dtype_str(n).startswith(("F", "BF"))}
    return compute_float(seen.pop()) if len(seen) == 1 else None


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


def load_reasoning_model(ctx: MergeContext) -> torch.nn.Module:
    """The LRM for Stage 1/2 forwards, loaded straight onto the device (no host copy on GPU).

    On the host, a bf16 checkpoint asked for in float32 is loaded as stored and upcast parameter by
    parameter: from_pretrained(dtype=float32) would hold the bf16 tensors and their float32 copies at
    once (1.5x the float32 model at peak). Same values either way (bf16 -> float32 is exact)."""
    from transformers import AutoModelForCausalLM

    stored = stored_float_dtype(ctx.reasoning)
    widen = (ctx.device == "cpu" and stored is not None and stored != ctx.forward_dtype
             and torch.promote_types(stored, ctx.forward_dtype) == ctx.forward_dtype)
    device_map, max_memory = device_placement(ctx)
    model = AutoModelForCausalLM.from_pretrained(str(ctx.reasoning.root),
                                                 dtype=stored if widen else ctx.forward_dtype,
                                                 attn_implementation="sdpa",
                                                 device_map=device_map, max_memory=max_memory,
                                                 trust_remote_code=ctx.models.reasoning.trust_remote_code)
    if widen:
        _cast_parameters(model, ctx.forward_dtype, ctx.reasoning)
        model.config.dtype = ctx.forward_dtype
    if max_memory is not None:  # spread: every module stays where the device map put it
        off = sorted({str(d) for d in getattr(model, "hf_device_map", {}).values() if str(d) in ("cpu", "disk")})
        if off:
            raise ConfigError(f"the whole model does not fit gpu_memory {list(ctx.gpu_memory or [])} (device map "
                              f"puts layers on {', '.join(off)}); use stages_path: sequential")
        return model.eval()
    return model.to(ctx.device).eval()


def device_placement(ctx: MergeContext) -> tuple[Any, dict[Any, Any] | None]:
    """(device_map, max_memory) of the whole-model load: one device, or -- with several visible GPUs or
    gpu_memory set -- accelerate's "auto" map over the GPUs, each capped at its gpu_memory entry (default:
    what it has), nothing on the host. Stage 1's hooks and Stage 2's statistic follow each module's device."""
    if ctx.device == "cpu":
        return None, None
    n = torch.cuda.device_count()
    if not ctx.gpu_memory and n <= 1:
        return ctx.device, None
    sizes = list(ctx.gpu_memory or [])
    if len(sizes) > n:
        raise ConfigError(f"gpu_memory names {len(sizes)} devices, {n} are visible")
    mem: dict[Any, Any] = {i: sizes[i] if i < len(sizes) else int(torch.cuda.mem_get_info(i)[0])
                           for i in range(len(sizes) or n)}
    mem["cpu"] = 0
    return "auto", mem
