"""Where the layer-sequential path's hidden states wait between layers: on the compute device, on the
host, or one safetensors file per sample in a spill folder (rainmerge/sequential.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError
from ..transfer import to_device
from ..memory import hidden_placement, host_available_bytes


def device_free_bytes(device: str) -> int | None:
    if device.startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    return None


def choose_placement(needed: int, device: str, requested: str = "auto", reserve: int = 0) -> str:
    """memory.hidden_placement with the memory this process sees now."""
    return hidden_placement(needed, reserve, device_free_bytes(device), host_available_bytes(),
                            not device.startswith("cuda"), requested)


class HiddenStates:
    """One stream's hidden states at the current layer boundary: sample i -> [1, T_i, hidden], kept on the
    compute device, on the host, or one safetensors file per sample under `folder` (read back one sample
    ahead on a thread). `put(i, h)` replaces sample i's state once its layer output exists."""

    def __init__(self, name: str, where: str, device: str, folder: Path | None = None):
        self.name, self.where, self.device = name, where, torch.device(device)
        self._mem: dict[int, torch.Tensor] = {}
        self.folder = None
        if where == "disk":
            if folder is None:
                raise ValueError("disk placement needs a spill folder")
            self.folder = Path(folder) / name
            self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def _file(self, i: int) -> Path:
        assert self.folder is not None
        return self.folder / f"{i:06d}.safetensors"

    def put(self, i: int, h: torch.Tensor) -> None:
        self.count = max(self.count, i + 1)
        if self.where == "device":
            self._mem[i] = h
        elif self.where == "host":
            self._mem[i] = h.to("cpu")
        else:
            tmp = self._file(i).with_suffix(".tmp")
            save_file({"h": h.detach().to("cpu").contiguous()}, str(tmp))
            os.replace(tmp, self._file(i))  # a crash never leaves a half-written state behind a good name

    def _read(self, i: int) -> torch.Tensor:
        if self.where == "disk":
            return load_file(str(self._file(i)))["h"]
        return self._mem[i]

    def stream(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(i, h on the device) for every sample in order; disk reads run one sample ahead."""
        if self.where != "disk":
            for i in range(self.count):
                yield i, to_device(self._mem[i], self.device) if self.where == "host" else self._mem[i]
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rainmerge-spill") as pool:
            nxt = pool.submit(self._read, 0) if self.count else None
            for i in range(self.count):
                h = nxt.result()
                nxt = pool.submit(self._read, i + 1) if i + 1 < self.count else None
                yield i, h.to(self.device)

    def close(self) -> None:
        self._mem.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def spill_folder(spill_dir: str | Path | None, need: int) -> Path:
    """A fresh folder for spilled hidden states, checked before any forward: writable, with room for them."""
    try:
        root = Path(tempfile.mkdtemp(prefix="rainmerge-hidden-", dir=spill_dir))
    except OSError as exc:
        raise ConfigError(f"spill_dir {spill_dir or tempfile.gettempdir()}: cannot create a folder there "
                          f"({exc.strerror})") from None
    free = shutil.disk_usage(root).free
    if free < need * 1.05:
        shutil.rmtree(root, ignore_errors=True)
        raise ConfigError(f"spill_dir {root.parent}: the hidden states need {need / 1e9:.1f} GB, the disk has "
                          f"{free / 1e9:.1f} GB free; point spill_dir at a larger disk or use hidden_states: host")
    return root
