"""Stage 1 feature capture: one forward per sample, pre-hooks on every selected layer's linears.

Only the rows at the protected positions are kept, so memory is O(samples x |Omega| x width).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from .arch import ArchSpec
from .linears import GROUP_HOOK
from .calibration import ReasoningSample
from .transfer import page_aligned_empty, page_locked, to_device

Features = dict[int, dict[str, torch.Tensor]]  # layer -> group -> [m, in] float32


def decoder_body(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer without its LM head: neither stage needs logits (T x vocab would dominate)."""
    return getattr(model, model.base_model_prefix, model)


@torch.no_grad()
def collect_features(
    model: torch.nn.Module,
    arch: ArchSpec,
    samples: list[ReasoningSample],
    layers: Iterable[int],
    groups: Iterable[str],
    progress: bool = True,
) -> Features:
    """Inputs of each merged linear at Omega_think, from the LRM's own forward (float32 on CPU)."""
    device = next(model.parameters()).device
    layers, groups = list(layers), list(groups)
    # every sample's rows go straight into one preallocated host buffer per (layer, group): small tensors
    # kept between forwards would pin the freed activation memory in the allocator (many times the
    # features' own size: benchmarks/README.md), and a final cat would hold the features twice. On a GPU the
    # buffers are page-locked while they fill and every hook's rows are an asynchronous copy into them:
    # no per-sample sync, so the host queues the next forward while the GPU runs this one (a pageable
    # device->host copy blocks the host for every sample)
    total = sum(len(s.positions) for s in samples)
    width = {g: _group_width(model, arch, layers[0], g) for g in groups} if layers else {}
    out = {layer: {g: page_aligned_empty(total, width[g]) for g in groups} for layer in layers}
    rows: dict = {}
    at = [0, 0]  # [first row, row count] of the current sample in the buffers
    handles = []

    def hook(key: tuple[int, str]):
        dest = out[key[0]][key[1]]

        def fn(_mod, args):
            x = args[0][0]
            dest[at[0]:at[0] + at[1]].copy_(x.index_select(0, on_device(rows, x.device)), non_blocking=True)
        return fn

    for layer in layers:
        for g in groups:
            mod = model.get_submodule(arch.module_path(layer, GROUP_HOOK[g]))
            handles.append(mod.register_forward_pre_hook(hook((layer, g))))
    try:
        with page_locked([b for per in out.values() for b in per.values()], device):
            for s in tqdm(samples, desc="stage 1: features", unit="sample", disable=not progress):
                rows.clear()
                rows["idx"] = to_device(torch.tensor(s.positions), device)
                at[1] = len(s.positions)
                decoder_body(model)(input_ids=to_device(torch.tensor([s.input_ids]), device), use_cache=False)
                at[0] += at[1]
    finally:
        for h in handles:
            h.remove()
    return out


def on_device(rows: dict, device: torch.device) -> torch.Tensor:
    """The sample's index tensor on `device`: a module of a model spread over several GPUs (device_map) sees
    its input on its own device; one copy per device and sample."""
    idx = rows["idx"]
    if idx.device == device:
        return idx
    key = ("idx", device)
    if key not in rows:
        rows[key] = idx.to(device, non_blocking=True)
    return rows[key]


def _group_width(model: torch.nn.Module, arch: ArchSpec, layer: int, group: str) -> int:
    """Input width of the linear a feature group hooks (in_features of the hooked module)."""
    return int(model.get_submodule(arch.module_path(layer, GROUP_HOOK[group])).in_features)
