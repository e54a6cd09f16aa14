"""Write one safetensors file tensor by tensor, with the bytes going to disk on a thread.

`safetensors.torch.save_file` needs the whole shard in memory (5 GB by default: a 1.5B model is one
shard, so Stage 3 held the whole merged model on the host). Every shape and dtype of a merge output is
known before the first tensor is made, so the header can be written first and each tensor's bytes
appended as it is produced: at most `queue` tensors wait for the disk, whatever the shard size.

The file is the library's own, byte for byte: tensors in safetensors' data order (dtype rank
descending, then name), the compact JSON header with `__metadata__` first, padded with spaces to a
multiple of 8 (tests/test_stream_writer.py compares it with `save_file`'s output). Reading stays with
the library (`safe_open`).
"""

from __future__ import annotations

import json
import queue as queue_mod
import sys
import threading
from pathlib import Path
from types import TracebackType

import torch

from ..dtypes import DTYPE_BYTES, SAFETENSORS

# the order of safetensors' Rust Dtype enum; the data section is sorted by it, descending
_RANK = ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16", "I32", "U32",
         "F32", "F64", "I64", "U64")
# torch dtype -> safetensors name, for the dtypes this writer produces
DTYPE_STR = {SAFETENSORS[n]: n for n in ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "F16", "BF16", "I32",
                                         "F32", "F64", "I64")}

Layout = dict[str, tuple[tuple[int, ...], str]]


def data_order(names: list[str], layout: Layout) -> list[str]:
    """The order safetensors stores `names` in (and so the order to produce them in)."""
    for n in names:
        if layout[n][1] not in _RANK:
            raise ValueError(f"{n}: dtype {layout[n][1]} cannot be written")
    return sorted(names, key=lambda n: (-_RANK.index(layout[n][1]), n))


def header_bytes(names: list[str], layout: Layout, metadata: dict[str, str] | None) -> bytes:
    """8-byte length + JSON header (padded to 8) for `names` stored in exactly this order."""
    head: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    at = 0
    for n in names:
        shape, dt = layout[n]
        size = DTYPE_BYTES[dt]
        for d in shape:
            size *= d
        head[n] = {"dtype": dt, "shape": list(shape), "data_offsets": [at, at + size]}
        at += size
    text = json.dumps(head, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


class StreamingShard:
    """Context manager: `write(name, tensor)` in `order` (see data_order); the bytes go to `path` on a
    writer thread while the caller makes the next tensor. On error the partial file is left for the
    caller's temporary folder to remove (io.writer.AtomicDir)."""

    def __init__(self, path: str | Path, names: list[str], layout: Layout, metadata: dict[str, str] | None = None,
                 queue: int = 2):
        if sys.byteorder != "little":
            raise RuntimeError("the streaming safetensors writer needs a little-endian host")
        self.path, self.layout = Path(path), layout
        self.order = data_order(list(names), layout)
        self.metadata = metadata
        self.next = 0
        self._q: queue_mod.Queue = queue_mod.Queue(maxsize=max(1, queue))
        self._error: BaseException | None = None
        self._file = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "StreamingShard":
        self._file = open(self.path, "wb")
        self._file.write(header_bytes(self.order, self.layout, self.metadata))
        self._thread = threading.Thread(target=self._drain, name="rainmerge-write", daemon=True)
        self._thread.start()
        return self

    def _drain(self) -> None:
        while True:
            t = self._q.get()
            if t is None:
                return
            if self._error is None:
                try:  # a uint8 view of the tensor's own memory: no copy (file.write releases the GIL)
                    self._file.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
                except BaseException as exc:  # noqa: BLE001 - reported to the producer by write()/close
                    self._error = exc

    def write(self, name: str, t: torch.Tensor) -> None:
        if self._error is not None:
            raise self._error
        if self.next >= len(self.order) or name != self.order[self.next]:
            want = self.order[self.next] if self.next < len(self.order) else "nothing (all written)"
            raise RuntimeError(f"{self.path.name}: got tensor {name}, expected {want}")
        shape, dt = self.layout[name]
        if tuple(t.shape) != tuple(shape) or DTYPE_STR.get(t.dtype) != dt:
            raise RuntimeError(f"{name}: produced {tuple(t.shape)} {t.dtype}, planned {list(shape)} {dt}")
        self._q.put(t.detach().cpu().contiguous())
        self.next += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._q.put(None)
        if self._thread is not None:
            self._thread.join()
        try:
            self._file.close()
        except OSError as close_exc:
            self._error = self._error or close_exc
        if exc_type is None:
            if self._error is not None:
                raise self._error
            if self.next != len(self.order):
                raise RuntimeError(f"{self.path.name}: {len(self.order) - self.next} planned tensors were never "
                                   f"written (first: {self.order[self.next]})")
