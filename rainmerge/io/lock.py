"""One writer per output folder, and the debris of dead writers.

`OutputLock(final)` takes a non-blocking `flock` on `.NAME.lock` beside the output (reentrant within a
process). Temporaries are named `.NAME.tmp-<pid>-<hex>` / `.NAME.old-<pid>-<hex>`; those of dead
processes are removed (and reported) by the next writer that holds the lock.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import threading
import uuid
from pathlib import Path

from ..errors import ConfigError, OutputLockedError

log = logging.getLogger("rainmerge")


def _final(final: str | Path) -> Path:
    return Path(final).expanduser().resolve()


def lock_path(final: str | Path) -> Path:
    f = _final(final)
    return f.parent / f".{f.name}.lock"


def _temp_name(final: Path, kind: str) -> Path:
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _tree_bytes(p: Path) -> int:
    if not p.is_dir():
        return p.lstat().st_size if p.exists() or p.is_symlink() else 0
    total = 0
    for root, _dirs, files in os.walk(p):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


# ----------------------------------------------------------------------------------------------
# one writer per output


class _Held:
    def __init__(self, fd: int):
        self.fd, self.count = fd, 1


_HELD: dict[Path, _Held] = {}
_HELD_GUARD = threading.Lock()


def _lock_owner(path: Path) -> str:
    try:
        pid = path.read_text().split()[0]
        return f"pid {int(pid)}"
    except (OSError, IndexError, ValueError):
        return "pid unknown"


_PID_TEXT = re.compile(rb"\d{0,10}\n?")


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """Open the lock file without following a symlink; returns (fd, created by us).

    A file already there is only used when it is one a rainmerge process left (a regular file of ours,
    one link, holding at most a pid): a symlink, a hard link or any other file planted at the lock's name
    could point at someone's data, which the lock must never write to or delete.
    """
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create the lock file {path}: {exc.strerror}") from None
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:  # its holder released it meanwhile: try again from the start
        return _open_lock_file(path)
    except OSError as exc:
        what = "is a symlink" if exc.errno == errno.ELOOP else f"cannot be opened ({exc.strerror})"
        raise ConfigError(f"the lock file {path} {what}; rainmerge never follows or replaces it: remove it "
                          "yourself (or choose another output)") from None
    st = os.fstat(fd)
    head = os.pread(fd, 16, 0) if stat.S_ISREG(st.st_mode) else b""
    if (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != os.getuid() or st.st_size > 11
            or not _PID_TEXT.fullmatch(head)):
        os.close(fd)
        raise ConfigError(f"{path} is in the way of the output's lock and is not a rainmerge lock file (not a "
                          "plain file of yours holding a pid); rainmerge leaves it untouched: move it away "
                          "or choose another output")
    return fd, False


class OutputLock:
    """Exclusive, non-blocking lock on an output folder, held from entry to exit.

    Reentrant within one process (an orchestrator may hold it around the whole run while `AtomicDir`
    takes it again for the write). On the first acquisition the stale temporaries of killed runs
    beside the output are removed and reported; `self.cleaned` lists them as (path, bytes).
    """

    def __init__(self, final: str | Path, cleanup: bool = True):
        self.final = _final(final)
        self.path = lock_path(self.final)
        self.cleanup = cleanup
        self.cleaned: list[tuple[Path, int]] = []
        self._entered = False

    def acquire(self) -> OutputLock:
        import fcntl

        if self._entered:
            raise RuntimeError("OutputLock is not reusable while held")
        with _HELD_GUARD:
            held = _HELD.get(self.final)
            if held is not None:
                held.count += 1
                self._entered = True
                return self
            try:
                self.final.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the output's folder {self.final.parent}: {exc.strerror}") from None
            while True:
                fd, created = _open_lock_file(self.path)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise OutputLockedError(
                        f"another rainmerge process is writing {self.final} ({_lock_owner(self.path)}, lock "
                        f"{self.path}); wait for it to finish or choose another output") from None
                except OSError as exc:
                    os.close(fd)
                    raise ConfigError(f"cannot lock {self.path}: {exc.strerror}") from None
                try:  # the holder before us may have removed the file between our open and flock
                    same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            try:  # the pid is only for a second writer's message (the file is ours: _open_lock_file checked)
                if not created:
                    os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except OSError:  # a full disk must not stop us here
                pass
            _HELD[self.final] = _Held(fd)
            self._entered = True
        if self.cleanup:
            try:
                self.cleaned = clean_stale(self.final)
            except BaseException:
                self.release()
                raise
        return self

    def release(self) -> None:
        if not self._entered:
            return
        self._entered = False
        with _HELD_GUARD:
            held = _HELD[self.final]
            held.count -= 1
            if held.count:
                return
            del _HELD[self.final]
            try:
                os.unlink(self.path)  # while still locked, so no one else can hold this inode
            except OSError:
                pass
            os.close(held.fd)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holds_lock(final: str | Path) -> bool:
    """Whether this process holds the output lock of `final`."""
    return _final(final) in _HELD


# ----------------------------------------------------------------------------------------------
# stale temporaries of killed runs

_TEMP_RE = re.compile(r"^(?P<kind>tmp|old)-(?:(?P<pid>\d+)-)?(?P<tag>[0-9a-f]{8})$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def stale_temporaries(final: str | Path) -> list[tuple[Path, str, int | None]]:
    """Our temporaries beside `final`: (path, 'tmp' | 'old', writer pid or None for pre-pid names)."""
    final = _final(final)
    prefix = f".{final.name}."
    out = []
    if not final.parent.is_dir():
        return out
    for p in sorted(final.parent.iterdir()):
        if not p.name.startswith(prefix):
            continue
        m = _TEMP_RE.match(p.name[len(prefix):])
        if m is None:
            continue
        out.append((p, m["kind"], int(m["pid"]) if m["pid"] else None))
    return out


def clean_stale(final: str | Path) -> list[tuple[Path, int]]:
    """Remove the temporaries of dead writers beside `final` (call with the output lock held).

    A `.old-*` left by a run killed between its two renames, with no output in place, is the previous
    output: it is restored rather than deleted. Returns what was removed, with sizes; each is logged.
    """
    final = _final(final)
    if not holds_lock(final):
        raise RuntimeError(f"clean_stale({final}) needs the output lock")
    removed: list[tuple[Path, int]] = []
    found = stale_temporaries(final)
    found.sort(key=lambda x: x[1] != "old")  # olds first: one may have to be restored
    for path, kind, pid in found:
        if pid is None:
            log.warning("leaving %s (%s) in place: it has no writer pid (older rainmerge); delete it by hand "
                        "if no merge is writing %s", path, human_bytes(_tree_bytes(path)), final)
            continue
        if _pid_alive(pid):
            continue
        if kind == "old" and not final.exists():
            try:
                path.rename(final)
                log.warning("restored %s from %s, left by a killed rainmerge run (pid %d)", final, path.name, pid)
                continue
            except OSError:
                pass
        size = _tree_bytes(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        log.warning("removed stale temporary %s (%s) left by a killed rainmerge run (pid %d)",
                    path, human_bytes(size), pid)
        removed.append((path, size))
    return removed


# ----------------------------------------------------------------------------------------------
# where the output may go
