"""Driving the merge command line in tests (tests/test_overwrite.py, test_output_lock.py, test_run_checks.py,
test_one_line_errors.py, test_faults.py): the arguments of a small merge, the one-line-error contract, and the
stub that holds a merge mid-write for kill tests."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from rainmerge.cli import main

ROOT = Path(__file__).resolve().parents[1]
MERGED = "model.layers.1.mlp.down_proj.weight"  # a merged tensor (all modules, all layers by default)


def merge_args(trio, calib, out, *extra, method="task_arithmetic", **roles):
    r, i = calib
    paths = {**{k: str(v) for k, v in trio.items()}, **{k: str(v) for k, v in roles.items()}}
    return ["merge", "--base", paths["base"], "--instruct", paths["instruct"], "--reasoning", paths["reasoning"],
            "--reasoning-calibration", str(r), "--instruction-calibration", str(i), "--output", str(out),
            "--device", "cpu", "--method", method, "--quiet", "--set", "stage1.positions=tags", *extra]


def run_cli(capsys, argv) -> tuple[int, str]:
    """Run the CLI; a traceback fails the test. Returns (exit code, the single error line or '')."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("rainmerge: error:")]
    assert "Traceback" not in err
    if rc == 0:
        assert not lines
        return rc, ""
    assert rc == 2 and len(lines) == 1, err
    if os.environ.get("RAINMERGE_FAULT_LOG"):  # collect the messages (for reviewing their wording)
        with open(os.environ["RAINMERGE_FAULT_LOG"], "a") as f:
            f.write(lines[0] + "\n")
    return rc, lines[0]


def digest(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def no_temporaries(out: Path) -> None:
    assert not [p.name for p in out.parent.glob(f".{out.name}.*")]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid



# a merge that writes one shard, says 'writing' and hangs: kill it from the test
KILLED_MID_WRITE = textwrap.dedent("""
    import sys, time
    import rainmerge.merge as m

    def stuck(out_dir, *a, **k):
        (out_dir / "model-00001-of-00002.safetensors").write_bytes(b"0" * 4096)
        print("writing", flush=True)
        time.sleep(600)

    m.write_sharded = stuck
    from rainmerge.cli import main
    sys.exit(main(sys.argv[1:]))
""")
