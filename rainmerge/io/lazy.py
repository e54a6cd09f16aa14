"""Resolve a model (local dir or Hub id@revision) and stream its tensors one at a time."""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..dtypes import DTYPE_BYTES
from ..refs import ModelRef
from ..errors import ConfigError, CorruptInputError, NonFiniteError

_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def sha256_file(path: str | Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# digests of files already hashed in this process, keyed by what changes when the bytes can: one read
# for hard-linked shards (the same inode in two model folders) and for a second describe() of a model
_DIGESTS: dict[tuple[int, int, int, int], str] = {}


def sha256_files(paths: list[Path], workers: int | None = None) -> list[str]:
    """sha256 of each file, several files at once (hashlib releases the GIL on large blocks, so
    threads hash in parallel: a 7B's shards are read at disk speed rather than one core's hash rate)."""
    from concurrent.futures import ThreadPoolExecutor

    keys = []
    for p in paths:
        st = os.stat(p)
        keys.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    todo = {k: p for k, p in zip(keys, paths) if k not in _DIGESTS}
    workers = workers or min(8, os.cpu_count() or 1)
    if todo:
        from tqdm.auto import tqdm

        # a 7B's shards take a minute or more: a bar (bytes, ETA) once it has run a few seconds
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo)))) as pool, \
                tqdm(total=sum(k[2] for k in todo), desc="hashing input weights", unit="B", unit_scale=True,
                     delay=3) as bar:
            for k, digest in zip(todo, pool.map(sha256_file, todo.values())):
                _DIGESTS[k] = digest
                bar.update(k[2])
    return [_DIGESTS[k] for k in keys]


_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit

_LIVE: weakref.WeakSet[ModelSource] = weakref.WeakSet()


def live_roots() -> dict[str, Path]:
    """Folders of the models open in this process (an output must never replace or lie in them)."""
    return {f"{s.role} model folder": s.root for s in list(_LIVE)}


def _corrupt(role: str, path: Path, detail: str) -> CorruptInputError:
    return CorruptInputError(f"{role}: shard {path.name} is truncated or corrupt: {detail} ({path})")


def read_header(path: str | Path, role: str = "model") -> dict[str, tuple[str, tuple[int, ...], int, int]]:
    """Parse a safetensors header without mapping the file: {name: (dtype, shape, start, end)}.

    Checks the header length, the JSON, every tensor's byte span against its dtype and shape and
    against the file size, so a truncated or corrupt shard is named before any tensor is read.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise _corrupt(role, path, f"{size} bytes, too small for a safetensors header")
            n = int.from_bytes(raw, "little")
            if n > min(size - 8, _MAX_HEADER):
                raise _corrupt(role, path, f"header length {n} exceeds the file size {size}")
            text = f.read(n)
    except OSError as exc:
        raise CorruptInputError(f"{role}: cannot read {path}: {exc.strerror}") from None
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(role, path, f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _corrupt(role, path, "header is not a JSON object")
    data = size - 8 - n
    out: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(int(x) for x in info["shape"]), info["data_offsets"]
            start, end = int(start), int(end)
        except (KeyError, TypeError, ValueError):
            raise _corrupt(role, path, f"bad header entry for tensor {name}") from None
        numel = 1
        for d in shape:
            numel *= d
        if dtype in DTYPE_BYTES and end - start != numel * DTYPE_BYTES[dtype]:
            raise _corrupt(role, path, f"tensor {name} spans {end - start} bytes, {dtype}{list(shape)} needs "
                                       f"{numel * DTYPE_BYTES[dtype]}")
        if not 0 <= start <= end:
            raise _corrupt(role, path, f"tensor {name} has invalid offsets {start}..{end}")
        if end > data:
            raise _corrupt(role, path, f"tensor {name} ends at byte {end} but the file holds {data} data bytes "
                                       f"(file size {size})")
        out[name] = (dtype, shape, start, end)
    return out


@contextmanager
def _open(path: Path, role: str) -> Iterator[Any]:
    try:
        h = safe_open(path, framework="pt")
    except FileNotFoundError:
        raise CorruptInputError(f"{role}: weight file {path} disappeared") from None
    except OSError as exc:
        raise CorruptInputError(f"{role}: cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # SafetensorError: header incomplete, file not fully covered, ...
        raise _corrupt(role, path, str(exc)) from None
    with h:
        yield h


def _load_json(path: Path, role: str, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CorruptInputError(f"{role}: {what} {path} is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise CorruptInputError(f"{role}: {what} {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
                                f"column {exc.colno}") from None
    except OSError as exc:
        raise CorruptInputError(f"{role}: cannot read {what} {path}: {exc.strerror}") from None


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
        self.config: dict[str, Any] = _load_json(cfg_path, role, "config")
        if not isinstance(self.config, dict):
            raise CorruptInputError(f"{role}: config {cfg_path} is not a JSON object")
        self.files = self._weight_files()
        self._where: dict[str, Path] = {}
        self._meta: dict[str, tuple[tuple[int, ...], str]] = {}
        for f in self.files:
            with _open(f, role) as h:
                try:
                    for name in h.keys():
                        if name in self._where:
                            raise ConfigError(f"{role}: tensor {name} appears in two weight files")
                        self._where[name] = f
                        sl = h.get_slice(name)
                        self._meta[name] = (tuple(sl.get_shape()), sl.get_dtype())
                except ConfigError:
                    raise
                except Exception as exc:
                    raise _corrupt(role, f, str(exc)) from None
        _LIVE.add(self)

    # checked on every read unless the caller checks itself (check=False, e.g. Stage 3 checks the merged
    # output and names the input only on failure); NaN/Inf in an input is always a broken input
    verify_finite = True

    def _weight_files(self) -> list[Path]:
        index = self.root / "model.safetensors.index.json"
        if index.is_file():
            files = self._index_files(index)
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

    def _index_files(self, index: Path) -> list[Path]:
        data = _load_json(index, self.role, "weight index")
        wm = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(v, str) and v for v in wm.values()):
            raise CorruptInputError(f"{self.role}: weight index {index} has no valid 'weight_map' "
                                    "(an object of tensor name -> file name)")
        root = os.path.normpath(self.root)
        files = set()
        for v in wm.values():
            # lexical: Hub snapshot files are symlinks into the cache's blobs, which is fine
            full = os.path.normpath(os.path.join(root, v))
            if os.path.isabs(v) or os.path.commonpath([root, full]) != root or full == root:
                raise CorruptInputError(f"{self.role}: weight index {index} points outside the model folder "
                                        f"('{v}'); every weight_map entry must be a file inside {self.root}")
            files.add(Path(full))
        return sorted(files)

    def names(self) -> list[str]:
        return list(self._where)

    def has(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][0]

    def dtype_str(self, name: str) -> str:
        return self._meta[name][1]

    def file_of(self, name: str) -> Path:
        return self._where[name]

    def tensor_bytes(self) -> int:
        """Bytes of all tensors (the size of a model with this layout, headers aside)."""
        total = 0
        for shape, dt in self._meta.values():
            n = DTYPE_BYTES.get(dt, 4)
            for d in shape:
                n *= d
            total += n
        return total

    def get(self, name: str, dtype: torch.dtype | None = None, check: bool | None = None) -> torch.Tensor:
        """The tensor as stored (or cast to `dtype`); NaN/Inf raises NonFiniteError unless check=False
        (default: `verify_finite`). The check runs on the stored dtype, before any cast."""
        if name not in self._where:
            raise KeyError(f"{self.role}: no tensor {name}")
        f = self._where[name]
        # a handle per read: a long-lived mmap keeps every page read so far resident (counted as RSS)
        with _open(f, self.role) as h:
            try:
                t = h.get_tensor(name)
            except Exception as exc:
                raise _corrupt(self.role, f, f"cannot read tensor {name}: {exc}") from None
        if self.verify_finite if check is None else check:
            check_finite(t, name, self.role, f)
        return t if dtype is None else t.to(dtype)

    def close(self) -> None:
        """Nothing is held open between reads; kept so callers can release sources explicitly."""
        _LIVE.discard(self)

    def file_digests(self) -> dict[str, str]:
        try:
            return dict(zip((f.name for f in self.files), sha256_files(list(self.files))))
        except OSError as exc:
            raise CorruptInputError(f"{self.role}: cannot read {exc.filename} to hash it: {exc.strerror}") from None

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


def all_finite(t: torch.Tensor) -> bool:
    """True when a float tensor holds no NaN/Inf, in its stored dtype (no cast).

    One reduction, no temporary: a NaN or Inf anywhere makes the sum NaN or Inf (IEEE addition
    propagates both, Inf - Inf is NaN). A finite sum proves finiteness; a non-finite one can also be
    an overflow of large finite values, so only then the exact (slower, boolean temporary) test runs."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def check_finite(t: torch.Tensor, name: str, role: str, file: Path | None = None) -> None:
    """Raise NonFiniteError naming tensor, role and file when a float tensor holds NaN or Inf."""
    if all_finite(t):
        return
    nan = int(torch.isnan(t).sum())
    inf = int(torch.isinf(t).sum())
    where = f" in {file.name}" if file is not None else ""
    raise NonFiniteError(f"{role}: tensor {name}{where} has {nan} NaN and {inf} Inf values "
                         f"(of {t.numel()}); the {role} model's weights are broken")
