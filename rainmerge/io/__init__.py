"""Safetensors I/O: lazy reading (lazy), atomic sharded writing (writer, stream), one writer per output
(lock), and hidden states spilled between layers (spill)."""

from .lazy import ModelSource, sha256_file
from .writer import AtomicDir, write_sharded

__all__ = ["AtomicDir", "ModelSource", "sha256_file", "write_sharded"]
