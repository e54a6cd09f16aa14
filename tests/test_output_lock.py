"""Issue #13: one writer per output (the output lock), and the temporaries a killed run leaves are
removed or restored by the next one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from rainmerge.errors import OutputLockedError
from rainmerge.io.lock import OutputLock, lock_path
from rainmerge.io.writer import AtomicDir

from .merge_cli import KILLED_MID_WRITE, ROOT, dead_pid, merge_args, no_temporaries, run_cli


# ----------------------------------------------------------------------------------------------
# one writer per output

_HOLD = textwrap.dedent("""
    import sys
    from rainmerge.io.lock import OutputLock
    with OutputLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()
""")


def test_second_writer_fails_fast_while_the_first_holds_the_lock(trio_factory, calib, tmp_path, capsys):
    trio = trio_factory()
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rc, line = run_cli(capsys, merge_args(trio, calib, out))
        assert rc == 2 and "another rainmerge process is writing" in line and f"pid {holder.pid}" in line
        assert not out.exists()
        with pytest.raises(OutputLockedError):
            OutputLock(out).acquire()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert run_cli(capsys, merge_args(trio, calib, out))[0] == 0  # once released: exactly one success


_RACER = textwrap.dedent("""
    import pathlib, sys, time
    import rainmerge.stages as st
    barrier, me = pathlib.Path(sys.argv[1]), sys.argv[2]
    Orig = st.OutputLock

    class Racing(Orig):  # both writers reach the lock together (the merge takes it before any work)
        def __init__(self, *a, **k):
            (barrier / me).touch()
            t0 = time.time()
            while len(list(barrier.iterdir())) < 2 and time.time() - t0 < 120:
                time.sleep(0.02)
            super().__init__(*a, **k)

        def __enter__(self):
            held = super().__enter__()
            time.sleep(1.5)  # hold it while the other one tries
            return held

    st.OutputLock = Racing
    from rainmerge.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def test_two_concurrent_merges_into_one_output(trio_factory, calib, tmp_path):
    trio = trio_factory()
    out = tmp_path / "o"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(barrier), str(k), *merge_args(trio, calib, out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for k in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    assert "Traceback" not in err
    assert "another rainmerge process is writing" in err or "already exists" in err
    assert (out / "rainmerge_provenance.json").is_file()
    no_temporaries(out)


def test_lock_is_reentrant_in_process_and_released(tmp_path):
    out = tmp_path / "o"
    with OutputLock(out):
        assert lock_path(out).read_text().split()[0] == str(os.getpid())
        with AtomicDir(out) as tmp:
            (tmp / "f").write_text("x")
        assert (out / "f").is_file() and lock_path(out).exists()
    assert not lock_path(out).exists()


# ----------------------------------------------------------------------------------------------
# temporaries of killed runs


def test_killed_run_temporaries_are_removed_and_reported(trio_factory, calib, tmp_path, capsys, caplog):
    out = tmp_path / "o"
    dead = dead_pid()
    stale = tmp_path / f".o.tmp-{dead}-deadbeef"
    stale.mkdir()
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 5000)
    live = tmp_path / f".o.tmp-{os.getppid()}-0badf00d"  # a live process: never touched
    live.mkdir()
    legacy = tmp_path / ".o.tmp-cafebabe"  # pre-pid name: reported, left alone
    legacy.mkdir()
    caplog.set_level("WARNING", logger="rainmerge")
    assert run_cli(capsys, merge_args(trio_factory(), calib, out))[0] == 0
    assert not stale.exists() and live.is_dir() and legacy.is_dir()
    msgs = [r.getMessage() for r in caplog.records]
    assert any("removed stale temporary" in m and stale.name in m and "4.9 KiB" in m for m in msgs), msgs
    assert any("leaving" in m and legacy.name in m for m in msgs), msgs


def test_a_real_kill_9_mid_write_is_cleaned_by_the_next_run(trio_factory, calib, tmp_path, capsys, caplog):
    trio = trio_factory()
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, *merge_args(trio, calib, out)], stdout=subprocess.PIPE,
                         text=True, cwd=ROOT)
    try:
        assert p.stdout.readline().strip() == "writing"
        left = [x for x in tmp_path.glob(".o.tmp-*")]
        assert len(left) == 1 and f"tmp-{p.pid}-" in left[0].name
    finally:
        p.kill()
        p.wait(timeout=60)
    caplog.set_level("WARNING", logger="rainmerge")
    assert run_cli(capsys, merge_args(trio, calib, out))[0] == 0
    assert not left[0].exists() and (out / "rainmerge_provenance.json").is_file()
    no_temporaries(out)
    assert any("removed stale temporary" in r.getMessage() and left[0].name in r.getMessage()
               and "KiB" in r.getMessage() for r in caplog.records)


def test_killed_between_renames_restores_the_previous_output(tmp_path, caplog):
    out = tmp_path / "o"
    old = tmp_path / f".o.old-{dead_pid()}-12345678"
    old.mkdir()
    (old / "rainmerge_provenance.json").write_text("{}")
    tmp = tmp_path / f".o.tmp-{dead_pid()}-87654321"
    tmp.mkdir()
    caplog.set_level("WARNING", logger="rainmerge")
    with OutputLock(out) as lk:
        pass
    assert (out / "rainmerge_provenance.json").is_file() and not old.exists() and not tmp.exists()
    assert [p for p, _ in lk.cleaned] == [tmp]
    assert any("restored" in r.getMessage() for r in caplog.records)
