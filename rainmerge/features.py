"""Stage 1 feature capture: one forward per sample, pre-hooks on every selected layer's linears.

Only the rows at the protected positions are kept, so memory is O(samples x |Omega| x width).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from .arch import GROUP_HOOK, ArchSpec
from .calibration import ReasoningSample

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
    # kept between forwards would pin the freed activation memory in the allocator (~0.2 GB RSS on a
    # 0.5B shape for 29 MB of features), and a final cat would hold the features twice
    total = sum(len(s.positions) for s in samples)
    width = {g: _group_width(model, arch, layers[0], g) for g in groups} if layers else {}
    out = {layer: {g: torch.empty(total, width[g], dtype=torch.float32) for g in groups} for layer in layers}
    rows: dict[str, torch.Tensor] = {}
    at = [0, 0]  # [first row, row count] of the current sample in the buffers
    handles = []

    sample: dict[tuple[int, str], torch.Tensor] = {}  # this sample's rows, still on the device

    def hook(key: tuple[int, str]):
        def fn(_mod, args):
            x = args[0][0].index_select(0, rows["idx"])
            if device.type == "cpu":
                out[key[0]][key[1]][at[0]:at[0] + at[1]].copy_(x)
            else:
                sample[key] = x.float()
        return fn

    def flush() -> None:
        """One device->host copy per sample (on GPU a per-hook .cpu() would sync every linear)."""
        if not sample:
            return
        keys = list(sample)
        widths = [sample[k].shape[1] for k in keys]
        host = torch.cat([sample[k] for k in keys], dim=1).cpu()
        for k, part in zip(keys, host.split(widths, dim=1)):
            out[k[0]][k[1]][at[0]:at[0] + at[1]].copy_(part)
        sample.clear()

    for layer in layers:
        for g in groups:
            mod = model.get_submodule(arch.module_path(layer, GROUP_HOOK[g]))
            handles.append(mod.register_forward_pre_hook(hook((layer, g))))
    try:
        for s in tqdm(samples, desc="stage 1: features", unit="sample", disable=not progress):
            rows["idx"] = torch.tensor(s.positions, device=device)
            at[1] = len(s.positions)
            ids = torch.tensor([s.input_ids], device=device)
            decoder_body(model)(input_ids=ids, use_cache=False)
            flush()
            at[0] += at[1]
    finally:
        sample.clear()
        for h in handles:
            h.remove()
    return out


def _group_width(model: torch.nn.Module, arch: ArchSpec, layer: int, group: str) -> int:
    """Input width of the linear a feature group hooks (in_features of the hooked module)."""
    return int(model.get_submodule(arch.module_path(layer, GROUP_HOOK[group])).in_features)
