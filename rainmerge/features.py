"""Stage 1 feature capture: one forward per sample, pre-hooks on every selected layer's linears.

Only the rows at the protected positions are kept, so memory is O(samples x |Omega| x width).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

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
    # 0.5B shape for 29 MB of features), and a final cat would hold the features twice. On a GPU the
    # buffers are page-locked while they fill and every hook's rows are an asynchronous copy into them:
    # no per-sample sync, so the host queues the next forward while the GPU runs this one (a pageable
    # device->host copy cost 6.5 ms per 1.5B sample on an H200, and blocked the host meanwhile)
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


PAGE = 4096


def page_aligned_empty(rows: int, width: int) -> torch.Tensor:
    """An empty float32 [rows, width] host buffer that owns whole pages (a view into a slightly larger
    allocation), so page-locking it can never touch a page another allocation shares."""
    n = rows * width
    pad = PAGE // 4
    raw = torch.empty(n + 2 * pad, dtype=torch.float32)
    start = (-raw.data_ptr() % PAGE) // 4
    return raw[start:start + n].view(rows, width)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor onto `device` without a stream sync: torch's blocking host->device copy
    synchronizes the stream, so every index tensor would make the host wait for the previous forward."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@contextmanager
def page_locked(buffers: list[torch.Tensor], device: torch.device) -> Iterator[None]:
    """Page-lock existing host buffers while device->host copies fill them, then wait for the copies.
    cudaHostRegister locks exactly their bytes (torch's pinned allocator rounds each allocation up to a
    power of two: up to 2x the features' host memory). Where registering fails the copies stay
    correct, only synchronous."""
    if device.type != "cuda":
        yield
        return
    locked = []
    cudart = torch.cuda.cudart()
    try:
        try:
            for b in buffers:
                size = -(-b.numel() * b.element_size() // PAGE) * PAGE  # whole pages, all inside b's allocation
                if b.numel() and b.data_ptr() % PAGE == 0 and int(cudart.cudaHostRegister(b.data_ptr(), size, 0)) == 0:
                    locked.append(b)
        except Exception:  # no binding: pageable copies, synchronous but correct
            pass
        yield
    finally:
        for i in range(torch.cuda.device_count()):  # every device a spread model's hooks copy from
            torch.cuda.synchronize(i)  # the last copies land before the buffers are read or unlocked
        for b in locked:
            cudart.cudaHostUnregister(b.data_ptr())


def _group_width(model: torch.nn.Module, arch: ArchSpec, layer: int, group: str) -> int:
    """Input width of the linear a feature group hooks (in_features of the hooked module)."""
    return int(model.get_submodule(arch.module_path(layer, GROUP_HOOK[group])).in_features)
