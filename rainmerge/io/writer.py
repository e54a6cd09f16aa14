"""Write a model folder atomically: into a temporary sibling, renamed only once complete.

Safety rules (issue #13):
- `--overwrite` replaces only a folder we wrote (its `rainmerge_provenance.json` lists exactly its other
  files and their sizes) or an empty one,
  and never an input: an output that is, contains or lies inside an input model folder or calibration
  file is refused (`check_output_path(..., protected=...)`; open `ModelSource` roots are always protected).
- One writer per output: `OutputLock(final)` takes a non-blocking `flock` on `.NAME.lock` beside the output
  (reentrant within a process); `AtomicDir` takes it on entry and holds it until the rename is done.
- Temporaries are named `.NAME.tmp-<pid>-<hex>` / `.NAME.old-<pid>-<hex>`; those of dead processes are
  removed (and reported) by the next writer that holds the lock.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from tqdm.auto import tqdm

from ..errors import ConfigError, DiskSpaceError
from .lock import OutputLock, _final, _temp_name
from .stream import DTYPE_STR, StreamingShard

log = logging.getLogger("rainmerge")

# the same name as rainmerge.merge.PROVENANCE_FILE (merge imports this module, so it is not imported here)
PROVENANCE_FILE = "rainmerge_provenance.json"
OWNED_MARKERS: tuple[str, ...] = (PROVENANCE_FILE,)

_DTYPES = {name: dt for dt, name in DTYPE_STR.items()}
_FULL = (errno.ENOSPC, errno.EDQUOT)

Protected = Mapping[str, "str | Path"] | Iterable["str | Path"] | None


def _protected_items(protected: Protected) -> list[tuple[str, Path]]:
    items: list[tuple[str, Path]] = []
    if protected is None:
        pass
    elif isinstance(protected, Mapping):
        items += [(str(k), Path(v)) for k, v in protected.items() if v is not None]
    else:
        for v in protected:  # paths, or (label, path) pairs
            if isinstance(v, tuple):
                items.append((str(v[0]), Path(v[1])))
            elif v is not None:
                items.append(("input", Path(v)))
    from .lazy import live_roots

    items += list(live_roots().items())
    return items


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_overlap(final: str | Path, protected: Protected) -> None:
    """Refuse an output that is, contains, or lies inside a protected input (model folder, calibration file)."""
    final = _final(final)
    for label, p in _protected_items(protected):
        rp = p.expanduser().resolve()
        if _same(final, rp):
            raise ConfigError(f"output {final} is the {label} ({p}); choose another output folder")
        if any(_same(rp, q) for q in final.parents):
            raise ConfigError(f"output {final} lies inside the {label} ({p}); choose a folder outside it")
        if final in rp.parents:
            raise ConfigError(f"output {final} contains the {label} ({p}); choose another output folder")


# the key of a marker file listing every other file of the folder: the provenance's `contents`
# ({path: bytes}), the toy manifest's `files` ({path: sha256})
CONTENTS_KEYS = ("contents", "files")


def folder_contents(folder: Path, skip: Iterable[str] = OWNED_MARKERS) -> dict[str, int]:
    """{relative path: bytes} of every file under `folder` except `skip`: what the provenance lists, so a
    later --overwrite can tell the folder is still the one rainmerge wrote."""
    skip = set(skip)
    return {str(f.relative_to(folder)): f.lstat().st_size for f in sorted(folder.rglob("*"))
            if (f.is_file() or f.is_symlink()) and str(f.relative_to(folder)) not in skip}


def _not_owned(folder: Path, markers: Iterable[str]) -> str | None:
    """Why `folder` is not a rainmerge output that --overwrite may replace (None when it is one): a marker
    must be a JSON object written by rainmerge that lists exactly the folder's other files (and their
    sizes, where recorded). A marker that lists nothing (`{}`) or a folder holding anything unlisted is
    the user's."""
    reasons = []
    for m in markers:
        path = folder / m
        if not path.is_file() or path.is_symlink():
            reasons.append(f"no {m}")
            continue
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            reasons.append(f"{m} is not readable JSON ({type(exc).__name__})")
            continue
        listed = next((rec[k] for k in CONTENTS_KEYS if isinstance(rec, dict) and isinstance(rec.get(k), dict)), None)
        if not listed:
            reasons.append(f"{m} lists none of the folder's files")
            continue
        have = folder_contents(folder, (m,))
        extra = sorted(set(have) - set(listed))
        missing = sorted(set(listed) - set(have))
        resized = sorted(k for k, v in listed.items() if isinstance(v, int) and k in have and have[k] != v)
        if extra or missing or resized:
            what = (f"{len(extra)} file(s) it does not list, e.g. {extra[0]}" if extra else
                    f"{len(missing)} listed file(s) missing, e.g. {missing[0]}" if missing else
                    f"{len(resized)} file(s) changed size, e.g. {resized[0]}")
            reasons.append(f"its contents differ from {m}: {what}")
            continue
        return None
    return "; ".join(reasons) or "no marker"


def check_output_path(final: Path, overwrite: bool, protected: Protected = None,
                      markers: Iterable[str] = OWNED_MARKERS) -> None:
    """Every check on the output that can fail before any work.

    `protected`: input model roots and calibration paths (a list, or a {label: path} mapping for
    clearer messages); the roots of every open `ModelSource` are added. `--overwrite` replaces only an
    empty folder or one carrying one of `markers` (our provenance file).
    """
    final = _final(final)
    check_overlap(final, protected)
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        kind = "a symlink" if final.is_symlink() else "not a directory"
        raise ConfigError(f"output {final} exists and is {kind}; choose another output")
    if final.exists():
        if not overwrite:
            raise ConfigError(f"output {final} already exists; pass --overwrite (or overwrite: true) to replace it")
        try:
            empty = next(final.iterdir(), None) is None
        except OSError as exc:
            raise ConfigError(f"output {final}: cannot list it: {exc.strerror}") from None
        why = None if empty else _not_owned(final, markers)
        if why is not None:
            raise ConfigError(
                f"output {final} exists and was not written by rainmerge, or was changed since ({why}); "
                "--overwrite only replaces an unchanged earlier rainmerge output or an empty folder: remove it "
                "yourself or choose another output")
    parent = final.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot create output under {parent}: not a directory")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot write under {parent}: permission denied")


def _is_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return True
    msg = str(exc)
    return "No space left on device" in msg or "Disk quota exceeded" in msg


def _full_error(final: Path, exc: BaseException, what: str = "") -> DiskSpaceError:
    where = f" ({what})" if what else ""
    name = final.name.split(".tmp-")[0].lstrip(".") if ".tmp-" in final.name else final.name
    return DiskSpaceError(f"output {final.parent / name}: the disk became full while writing{where}; free space "
                          "or choose another output (the partial output is removed)")


class AtomicDir:
    """Context manager: yields a temp dir; on success it replaces `final`, on error it is deleted.

    Holds the output lock from entry to the final rename; the output checks are repeated under the lock,
    and a folder that appeared at `final` meanwhile (not ours) is never replaced.
    """

    def __init__(self, final: str | Path, overwrite: bool = False, protected: Protected = None,
                 markers: Iterable[str] = OWNED_MARKERS):
        self.final = _final(final)
        self.overwrite = overwrite
        self.protected = protected
        self.markers = tuple(markers)
        check_output_path(self.final, overwrite, protected, self.markers)
        self.tmp = _temp_name(self.final, "tmp")
        self.lock = OutputLock(self.final)

    def __enter__(self) -> Path:
        self.lock.acquire()
        try:
            check_output_path(self.final, self.overwrite, self.protected, self.markers)
            self.tmp = _temp_name(self.final, "tmp")
            try:
                self.tmp.mkdir()
            except OSError as exc:
                if _is_full(exc):
                    raise _full_error(self.final, exc) from None
                raise ConfigError(f"cannot create {self.tmp}: {exc.strerror}") from None
        except BaseException:
            self.lock.release()
            raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                if exc is not None and not isinstance(exc, DiskSpaceError) and _is_full(exc):
                    raise _full_error(self.final, exc) from None
                return
            try:
                self._replace()
            except BaseException:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise
        finally:
            self.lock.release()

    def _replace(self) -> None:
        # a folder may have appeared at `final` while we worked (not by rainmerge: we hold the lock)
        check_output_path(self.final, self.overwrite, self.protected, self.markers)
        old = None
        if self.final.exists():
            old = _temp_name(self.final, "old")
            self.final.rename(old)
        try:
            self.tmp.rename(self.final)
        except OSError as exc:
            if old is not None:
                old.rename(self.final)
            raise ConfigError(f"cannot move the finished output into place at {self.final}: {exc.strerror}") from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_sharded(
    out_dir: Path,
    layout: dict[str, tuple[tuple[int, ...], str]],
    produce: Callable[[str], torch.Tensor],
    max_shard_size: str | int = "5GB",
    desc: str = "writing",
    progress: bool = True,
    upcoming: Callable[[list[str]], None] | None = None,
) -> dict[str, str]:
    """Write tensors shard by shard, streamed (io.stream): `produce(name)` is called once per tensor, in
    each shard's storage order, and at most a few produced tensors wait for the disk at any time.
    `upcoming(names)` is told each shard's tensor order first (lets a reader prefetch)."""
    meta = {n: torch.empty(shape, dtype=_DTYPES[dt], device="meta") for n, (shape, dt) in layout.items()}
    try:
        split = split_torch_state_dict_into_shards(meta, max_shard_size=max_shard_size)
    except ValueError as exc:
        raise ConfigError(f"max_shard_size: {exc}") from None
    bar = tqdm(total=len(layout), desc=desc, unit="tensor", disable=not progress)
    for filename, names in split.filename_to_tensors.items():
        try:
            with StreamingShard(out_dir / filename, list(names), layout, metadata={"format": "pt"}) as shard:
                if upcoming is not None:
                    upcoming(list(shard.order))
                for name in shard.order:
                    shard.write(name, produce(name))
                    bar.update(1)
        except Exception as exc:
            if _is_full(exc):
                raise _full_error(out_dir, exc, f"shard {filename}") from None
            raise
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
