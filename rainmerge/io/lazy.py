"""Resolve a model (local dir or Hub id@revision) and stream its tensors one at a time."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..config import ModelRef
from ..errors import ConfigError

_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def sha256_file(path: str | Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _resolve(ref: ModelRef, role: str) -> tuple[Path, str | None]:
    local = Path(ref.path).expanduser()
    if local.is_dir():
        return local.resolve(), None
    if local.exists() or ref.path.startswith((".", "/")) or ref.path.count("/") != 1:
        raise ConfigError(f"{role}: '{ref.path}' is neither a model directory nor a Hub id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        root = Path(snapshot_download(ref.path, revision=ref.revision, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # the hub raises many types (offline, gated, missing revision)
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 and it is not in the local cache)" if offline else ""
        raise ConfigError(f"{role}: cannot fetch '{ref.path}@{ref.revision or 'main'}'{hint}: {exc}") from None
    # snapshot folders are named by the resolved commit sha
    return root, root.name


class ModelSource:
    """Read-only view of one model folder; tensors are read lazily, one at a time."""

    def __init__(self, ref: ModelRef, role: str):
        self.ref, self.role = ref, role
        self.root, self.commit = _resolve(ref, role)
        cfg_path = self.root / "config.json"
        if not cfg_path.is_file():
            raise ConfigError(f"{role}: {self.root} has no config.json")
        self.config: dict[str, Any] = json.loads(cfg_path.read_text())
        self.files = self._weight_files()
        self._where: dict[str, Path] = {}
        self._meta: dict[str, tuple[tuple[int, ...], str]] = {}
        for f in self.files:
            with safe_open(f, framework="pt") as h:
                for name in h.keys():
                    if name in self._where:
                        raise ConfigError(f"{role}: tensor {name} appears in two weight files")
                    self._where[name] = f
                    sl = h.get_slice(name)
                    self._meta[name] = (tuple(sl.get_shape()), sl.get_dtype())

    def _weight_files(self) -> list[Path]:
        index = self.root / "model.safetensors.index.json"
        if index.is_file():
            files = sorted({self.root / v for v in json.loads(index.read_text())["weight_map"].values()})
        else:
            files = sorted(self.root.glob("*.safetensors"))
        if not files:
            bins = list(self.root.glob("*.bin")) + list(self.root.glob("*.pt"))
            hint = " (only pickle weights found; convert them to safetensors first)" if bins else ""
            raise ConfigError(f"{self.role}: no safetensors weights in {self.root}{hint}")
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ConfigError(f"{self.role}: weight files listed in the index are missing: {missing}")
        return files

    def names(self) -> list[str]:
        return list(self._where)

    def has(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][0]

    def dtype_str(self, name: str) -> str:
        return self._meta[name][1]

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        if name not in self._where:
            raise KeyError(f"{self.role}: no tensor {name}")
        # a handle per read: a long-lived mmap keeps every page read so far resident (counted as RSS)
        with safe_open(self._where[name], framework="pt") as h:
            t = h.get_tensor(name)
        return t if dtype is None else t.to(dtype)

    def close(self) -> None:
        """Nothing is held open between reads; kept so callers can release sources explicitly."""

    def file_digests(self) -> dict[str, str]:
        return {f.name: sha256_file(f) for f in self.files}

    def describe(self, with_hashes: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "role": self.role,
            "path": self.ref.path,
            "revision": self.ref.revision,
            "commit": self.commit,
            "resolved_dir": str(self.root),
            "model_type": self.config.get("model_type"),
            "config_sha256": sha256_file(self.root / "config.json"),
        }
        if with_hashes:
            out["weights_sha256"] = self.file_digests()
        return out
