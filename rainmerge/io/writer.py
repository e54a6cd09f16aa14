"""Write a model folder atomically: into a temporary sibling, renamed only once complete."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import ConfigError

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class AtomicDir:
    """Context manager: yields a temp dir; on success it replaces `final`, on error it is deleted."""

    def __init__(self, final: str | Path, overwrite: bool = False):
        self.final = Path(final).expanduser().resolve()
        self.overwrite = overwrite
        check_output_path(self.final, overwrite)
        self.tmp = self.final.parent / f".{self.final.name}.tmp-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}.old-{uuid.uuid4().hex[:8]}"
            self.final.rename(old)
        self.tmp.rename(self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def check_output_path(final: Path, overwrite: bool) -> None:
    if final.exists() and not overwrite:
        raise ConfigError(f"output {final} already exists; pass --overwrite (or overwrite: true) to replace it")
    if final.exists() and not final.is_dir():
        raise ConfigError(f"output {final} exists and is not a directory")
    parent = final.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot create output under {parent}: not a directory")
    import os

    if not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot write under {parent}: permission denied")


def write_sharded(
    out_dir: Path,
    layout: dict[str, tuple[tuple[int, ...], str]],
    produce: Callable[[str], torch.Tensor],
    max_shard_size: str | int = "5GB",
    desc: str = "writing",
    progress: bool = True,
    upcoming: Callable[[list[str]], None] | None = None,
) -> dict[str, str]:
    """Write tensors shard by shard; `produce(name)` is called once per tensor, so one shard is in memory.
    `upcoming(names)` is told each shard's tensor order first (lets a reader prefetch)."""
    meta = {n: torch.empty(shape, dtype=_DTYPES[dt], device="meta") for n, (shape, dt) in layout.items()}
    try:
        split = split_torch_state_dict_into_shards(meta, max_shard_size=max_shard_size)
    except ValueError as exc:
        raise ConfigError(f"max_shard_size: {exc}") from None
    bar = tqdm(total=len(layout), desc=desc, unit="tensor", disable=not progress)
    for filename, names in split.filename_to_tensors.items():
        if upcoming is not None:
            upcoming(list(names))
        shard: dict[str, torch.Tensor] = {}
        for name in names:
            t = produce(name)
            if tuple(t.shape) != layout[name][0] or t.dtype != _DTYPES[layout[name][1]]:
                raise RuntimeError(f"{name}: produced {tuple(t.shape)} {t.dtype}, planned {layout[name]}")
            shard[name] = t.contiguous()
            bar.update(1)
        save_file(shard, str(out_dir / filename), metadata={"format": "pt"})
        del shard
    bar.close()
    if split.is_sharded:
        index = {"metadata": {**split.metadata}, "weight_map": split.tensor_to_filename}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    return split.tensor_to_filename


def copy_side_files(src: Path, dst: Path, skip: Iterable[str] = ()) -> list[str]:
    """Copy config, generation config, tokenizer and chat template files verbatim (no weights)."""
    skip = set(skip)
    copied = []
    for f in sorted(src.iterdir()):
        if not f.is_file() or f.name in skip or f.name.startswith("."):
            continue
        if f.suffix in {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".pkl"}:
            continue
        if f.name == "model.safetensors.index.json":
            continue
        shutil.copy2(f, dst / f.name)
        copied.append(f.name)
    return copied
