"""Lazy safetensors reading and atomic, sharded writing."""

from .lazy import ModelSource, sha256_file
from .writer import AtomicDir, write_sharded

__all__ = ["AtomicDir", "ModelSource", "sha256_file", "write_sharded"]
