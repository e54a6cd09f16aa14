"""Host <-> device copies that keep the stream running: host buffers that own whole pages, page-locking
them while device->host copies fill them, and small host->device copies that do not sync the stream."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

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
