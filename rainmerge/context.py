"""What every stage of a merge shares: the validated config, the three opened models, the
architecture, the merged sites and where forwards run. Built once, never modified."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from .arch import ArchSpec, arch_from_config, check_compatible
from .config import ModelsSpec, Runtime
from .errors import ConfigError
from .io.lazy import ModelSource
from .loading import Placement, gpu_max_memory, load_causal_lm, resolve_dtype
from .loading import load_tokenizer as _load_tokenizer
from .loading import stored_float_dtype as stored_float_dtype  # re-exported: callers read it here
from .merge import merge_sites
from .methods.base import Site

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
    return resolve_dtype(req, device)


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
    src = ctx.reasoning
    try:
        return _load_tokenizer(src.root, trust_remote_code=ctx.models.reasoning.trust_remote_code)
    except Exception as exc:
        raise ConfigError(f"reasoning model: cannot load its tokenizer from {src.root}: {exc}") from None


def load_reasoning_model(ctx: MergeContext) -> torch.nn.Module:
    """The LRM for Stage 1/2 forwards (rainmerge.loading.load_causal_lm): straight onto the device, or
    spread over the GPUs by device_placement; on the host a narrower checkpoint is upcast parameter by
    parameter from the preflight-scanned shards."""
    device_map, max_memory = device_placement(ctx)
    spread = max_memory is not None
    placement = Placement(ctx.device, device_map if spread else None, max_memory)
    try:
        return load_causal_lm(ctx.reasoning.root, ctx.forward_dtype, placement, attn_implementation="sdpa",
                              trust_remote_code=ctx.models.reasoning.trust_remote_code, source=ctx.reasoning)
    except ConfigError as exc:
        if not spread:
            raise
        raise ConfigError(f"the whole model does not fit gpu_memory {list(ctx.gpu_memory or [])} ({exc}); "
                          "use stages_path: sequential") from None


def device_placement(ctx: MergeContext) -> tuple[Any, dict[Any, Any] | None]:
    """(device_map, max_memory) of the whole-model load: one device, or -- with several visible GPUs or
    gpu_memory set -- accelerate's "auto" map over the GPUs, each capped at its gpu_memory entry (default:
    what it has), nothing on the host. Stage 1's hooks and Stage 2's statistic follow each module's device."""
    if ctx.device == "cpu":
        return None, None
    n = torch.cuda.device_count()
    if not ctx.gpu_memory and n <= 1:
        return ctx.device, None
    return "auto", gpu_max_memory(ctx.gpu_memory)
