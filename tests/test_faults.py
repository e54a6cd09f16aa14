"""Issue #28: faults an attacker or an unlucky operator meets end in one clear line, with nothing lost
(the fault table is docs/faults.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rainmerge.errors import ConfigError
from rainmerge.io.lock import OutputLock, lock_path
from rainmerge.io.writer import check_output_path

from .merge_cli import KILLED_MID_WRITE, digest, merge_args, run_cli


# ----------------------------------------------------------------------------------------------
# the lock never follows a symlink, never writes into or deletes a file it did not create


def test_a_symlink_planted_at_the_lock_leaves_its_target_intact(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "merged"
    lock_path(out).symlink_to(victim)
    with pytest.raises(ConfigError, match="is a symlink"):
        OutputLock(out).acquire()
    assert victim.read_text() == "precious" and lock_path(out).is_symlink()


def test_a_hard_link_or_foreign_file_at_the_lock_is_left_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "merged"
    os.link(victim, lock_path(out))
    with pytest.raises(ConfigError, match="not a rainmerge lock file"):
        OutputLock(out).acquire()
    assert victim.read_text() == "precious" and lock_path(out).read_text() == "precious"
    lock_path(out).unlink()
    lock_path(out).write_text("my notes, not a pid")
    with pytest.raises(ConfigError, match="not a rainmerge lock file"):
        OutputLock(out).acquire()
    assert lock_path(out).read_text() == "my notes, not a pid"


def test_a_stale_lock_of_a_killed_run_is_reused_and_removed(tmp_path):
    out = tmp_path / "merged"
    lock_path(out).write_text("999999\n")  # what a killed rainmerge leaves
    with OutputLock(out):
        assert lock_path(out).read_text() == f"{os.getpid()}\n"
    assert not lock_path(out).exists()


def test_merge_cli_with_a_symlinked_lock_keeps_the_victim(trio_factory, calib, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "merged"
    lock_path(out).symlink_to(victim)
    rc, line = run_cli(capsys, merge_args(trio_factory(), calib, out))
    assert rc == 2 and "symlink" in line
    assert victim.read_text() == "precious" and not out.exists()


# ----------------------------------------------------------------------------------------------
# --overwrite replaces only an unchanged folder rainmerge wrote


def test_overwrite_keeps_a_user_folder_with_an_empty_provenance(trio_factory, calib, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "docs").mkdir(parents=True)
    (out / "docs" / "thesis.txt").write_text("years of work")
    (out / "rainmerge_provenance.json").write_text("{}")
    before = digest(out)
    rc, line = run_cli(capsys, merge_args(trio_factory(), calib, out, "--overwrite"))
    assert rc == 2 and "not written by rainmerge" in line and "remove it yourself" in line
    assert digest(out) == before


def test_overwrite_refuses_an_earlier_merge_with_a_file_added_then_replaces_it_when_clean(
        trio_factory, calib, tmp_path, capsys):
    trio = trio_factory()
    out = tmp_path / "o"
    assert run_cli(capsys, merge_args(trio, calib, out))[0] == 0
    prov = json.loads((out / "rainmerge_provenance.json").read_text())
    assert prov["contents"] and "rainmerge_provenance.json" not in prov["contents"]
    (out / "notes.txt").write_text("added by hand")
    rc, line = run_cli(capsys, merge_args(trio, calib, out, "--overwrite"))
    assert rc == 2 and "notes.txt" in line
    assert (out / "notes.txt").read_text() == "added by hand"
    (out / "notes.txt").unlink()
    assert run_cli(capsys, merge_args(trio, calib, out, "--overwrite"))[0] == 0


def test_overwrite_checks_sizes_against_the_provenance(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"x" * 10)
    (out / "rainmerge_provenance.json").write_text(json.dumps({"contents": {"model.safetensors": 10}}))
    check_output_path(out, True)  # ours, unchanged
    (out / "model.safetensors").write_bytes(b"y" * 11)
    with pytest.raises(ConfigError, match="changed size"):
        check_output_path(out, True)


# ----------------------------------------------------------------------------------------------
# bad values refused at config load, before any merge or evaluation

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_strength_is_refused_at_load(trio_factory, calib, tmp_path, capsys, value):
    out = tmp_path / "o"
    rc, line = run_cli(capsys, merge_args(trio_factory(), calib, out, f"--strength={value}"))
    assert rc == 2 and "strength" in line and "finite" in line and not out.exists()
    from rainmerge.product.pipeline_config import load_pipeline_config

    with pytest.raises(ConfigError, match="finite"):
        load_pipeline_config(ROOT / "configs" / "toy.yaml", {"sweep.strengths": [0.5, float(value)]})


@pytest.mark.parametrize("name", ["team/model", "a:b", "with space", "-lead"])
def test_an_invalid_registered_model_name_is_refused_before_the_pipeline(capsys, monkeypatch, name):
    import pipelines.run

    from rainmerge.cli import main

    monkeypatch.setattr(pipelines.run, "run_pipeline", lambda *a, **k: pytest.fail("the pipeline started"))

    rc = main(["run", "--config", str(ROOT / "configs" / "toy.yaml"), "--set", f"tracking.registered_model={name}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "tracking.registered_model" in err and "not a valid model name" in err


# ----------------------------------------------------------------------------------------------
# the tracking store: down, read-only, two first runs at once; secrets never echoed

SECRET_URI = "http://alice:S3cretPW@127.0.0.1:{port}"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.startswith("rainmerge: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("cmd", [["audit", "rainmerge-toy"], ["lineage", "rainmerge-toy", "1"]])
def test_a_down_tracking_server_is_answered_in_seconds_with_the_password_masked(capsys, cmd):
    import time

    from rainmerge.cli import main

    uri = SECRET_URI.format(port=_free_port())
    t0 = time.monotonic()
    rc = main([*cmd, "--tracking-uri", uri])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and time.monotonic() - t0 < 10
    assert "not reachable" in line and "alice:***@" in line and "S3cretPW" not in line
    assert "no registered model" not in line


def test_a_silent_tracking_server_times_out(monkeypatch, capsys):
    import socket

    from rainmerge.cli import main
    from rainmerge.product import tracking

    monkeypatch.setattr(tracking, "PROBE_SECONDS", 1.0)
    with socket.socket() as srv:  # accepts connections, never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        rc = main(["audit", "m", "--tracking-uri", f"http://127.0.0.1:{srv.getsockname()[1]}"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "no answer within 1 s" in line


def test_run_against_a_down_server_stops_before_the_pipeline(capsys, monkeypatch):
    from rainmerge.cli import main

    uri = SECRET_URI.format(port=_free_port())
    rc = main(["run", "--config", str(ROOT / "configs" / "toy.yaml"), "--set", f"tracking.tracking_uri={uri}"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "not reachable" in line and "S3cretPW" not in line


def _read_only(folder: Path) -> list[str]:
    """A command prefix under which `folder` is read-only (a read-only bind mount for root, whom
    permissions do not stop), or skip."""
    import shutil
    import subprocess

    if os.geteuid() != 0:
        for p in [folder, *folder.iterdir()]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        return []
    if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("no mount namespace to make a read-only store in")
    f = str(folder)
    return ["unshare", "-m", "sh", "-c", f'mount --bind "{f}" "{f}" && mount -o remount,ro,bind "{f}" && exec "$@"',
            "sh"]


def test_a_read_only_store_is_one_line_before_any_step(tmp_path):
    import sqlite3
    import subprocess
    import sys

    store = tmp_path / "mlflow"
    store.mkdir()
    sqlite3.connect(store / "mlflow.db").execute("create table t (x)").connection.commit()
    cmd = [*_read_only(store), sys.executable, "-m", "rainmerge", "run", "--config", str(ROOT / "configs" / "toy.yaml"),
           "--set", f"tracking.tracking_uri=sqlite:///{store / 'mlflow.db'}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    line = _one_error_line(p.stderr)
    assert p.returncode == 2 and "read-only" in line and str(store) in line


@pytest.mark.slow
def test_two_first_runs_at_once_on_a_fresh_store_all_work(tmp_path):
    """Three processes open the same fresh MLflow store at once, as the first steps of runs started
    together do: without the store-init lock one died in the schema migrations (`duplicate column name:
    step`, 2 of 2 tries in the report). pipelines.run.prepare_stores takes the same lock for ZenML."""
    import subprocess
    import sys

    code = "import sys; from rainmerge.product.tracking import experiment; experiment('race', sys.argv[1])"
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(3)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-2000:]


def test_uri_credentials_are_masked_in_messages_logs_and_params(caplog):
    import logging

    from rainmerge.logs import setup
    from rainmerge.product.tracking import flatten
    from rainmerge.redact import redact

    assert redact("http://alice:S3cretPW@host:5000/x") == "http://alice:***@host:5000/x"
    assert redact("https://hf_token123@huggingface.co") == "https://***@huggingface.co"
    assert redact("http://h/api?token=abc&x=1") == "http://h/api?token=***&x=1"
    assert redact("sqlite:////tmp/a.db and a@b.c") == "sqlite:////tmp/a.db and a@b.c"
    assert flatten({"tracking": {"tracking_uri": "http://alice:S3cretPW@h"}}) == {
        "tracking.tracking_uri": "http://alice:***@h"}
    log = setup()
    handler = next(h for h in log.handlers if type(h).__name__ == "_ConsoleHandler")
    record = logging.LogRecord("rainmerge", logging.WARNING, __file__, 1, "store %s failed", ("http://bob:pw1@h",), None)
    assert all(f.filter(record) for f in handler.filters)
    assert record.getMessage() == "store http://bob:***@h failed"


def test_uri_credentials_move_to_mlflow_env_before_any_step_sees_the_uri(monkeypatch):
    """ZenML stores every step parameter (the tracking URI among them) and Kubeflow every argument: the
    password leaves the URI for MLflow's own variables before the pipeline is built."""
    from rainmerge.product.tracking import credentials_to_env

    for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:S3cret%40PW@127.0.0.1:5000/p")
    assert credentials_to_env(None) == "http://127.0.0.1:5000/p"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000/p"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "S3cret@PW")
    assert credentials_to_env("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"  # nothing to move


# ----------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM: one line, the temporary folder and the lock removed (the merge held mid-write
# by merge_cli.KILLED_MID_WRITE)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_stopped_merge_prints_one_line_and_leaves_no_temporary_or_lock(trio_factory, calib, tmp_path, sig):
    import signal
    import subprocess
    import sys

    out = tmp_path / "merged"
    # a shell's background job starts with SIGINT ignored, and Python then never installs its Ctrl-C
    # handler: give the child the default disposition a terminal gives it
    p = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, *merge_args(trio_factory(), calib, out)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.stdout.readline().strip() == "writing"
    assert list(tmp_path.glob(".merged.tmp-*")) and lock_path(out).exists()
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=60)
    assert "Traceback" not in err and p.returncode == (130 if sig == "SIGINT" else 143), err
    lines = [l for l in err.splitlines() if l.startswith("rainmerge:")]
    assert len(lines) == 1 and ("interrupted" in lines[0] or "terminated" in lines[0])
    assert not list(tmp_path.glob(".merged.*")) and not out.exists()


def test_a_corrupted_cached_artifact_names_the_way_out(tmp_path):
    from rainmerge.errors import RainMergeError
    from rainmerge.product.artifacts import make_ref

    (tmp_path / "a.json").write_text("[1]")
    ref = make_ref("features", tmp_path)
    (tmp_path / "a.json").write_text("[2]")
    with pytest.raises(RainMergeError, match="rainmerge run --no-cache"):
        ref.verify()


# ----------------------------------------------------------------------------------------------
# issue 26.7: `rainmerge plan` offline prints nothing it does not know


def test_plan_offline_prints_no_placeholders_and_names_hub_ids(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from rainmerge.config import load_config
    from rainmerge.preflight import build_plan, format_plan

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    text = format_plan(build_plan(load_config(ROOT / "configs" / "qwen2.5-7b.yaml")))
    assert "not in the local HF cache" in text
    for placeholder in (" 0 B", "None", "(?)", "0 tensors", "local folder"):
        assert placeholder not in text, f"{placeholder!r} in:\n{text}"
    assert "metadata not read" in text and "resources: not estimated" in text
    assert "configured base Qwen/Qwen2.5-7B" in text  # the Hub id is compared with the LRM's declared base


@pytest.mark.slow
def test_a_very_large_calibration_file_warns_with_its_feature_size_before_any_forward(tmp_path, caplog):
    """10,000 records on the toy trio made 5.7 GB of features with no warning."""
    import logging

    from rainmerge.config import load_config
    from rainmerge.stages import check_plan

    toy = ROOT / "assets" / "toy" / "data"
    recs = json.loads((toy / "reasoning_calibration.json").read_text())
    big = [{**recs[i % len(recs)], "sample_id": f"r{i}"} for i in range(10_000)]
    (tmp_path / "big.json").write_text(json.dumps(big))
    over = {"reasoning_calibration": {"path": str(tmp_path / "big.json")}}
    with caplog.at_level(logging.WARNING, logger="rainmerge"):
        check_plan(load_config(ROOT / "configs" / "toy.yaml", over))
    warned = [r.getMessage() for r in caplog.records if "Stage 1 features" in r.getMessage()]
    assert len(set(warned)) == 1 and "10000 reasoning calibration records" in warned[0]
    assert "GiB" in warned[0] and "reasoning_calibration.max_samples" in warned[0]
    caplog.clear()
    over["reasoning_calibration"]["max_samples"] = 64  # the documented way out
    with caplog.at_level(logging.WARNING, logger="rainmerge"):
        check_plan(load_config(ROOT / "configs" / "toy.yaml", over))
    assert not [r for r in caplog.records if "Stage 1 features" in r.getMessage()]


# ----------------------------------------------------------------------------------------------
# issue 26.5: set-up is never silent for long


def test_setup_prints_a_heartbeat_while_a_step_runs(tmp_path):
    import re
    import subprocess

    text = (ROOT / "scripts" / "setup.sh").read_text()
    beat = re.search(r"^beat\(\) \{.*?^\}", text, re.S | re.M)
    assert beat, "scripts/setup.sh has no beat()"
    assert re.search(r'beat "installing the locked stack" pip install', text)
    script = tmp_path / "t.sh"
    script.write_text("set -euo pipefail\nt0=$SECONDS\n" + beat[0] + '\nbeat "waiting" sleep 3.5\nbeat "x" false || exit 7\n')
    p = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "SETUP_HEARTBEAT_S": "1"})
    assert p.returncode == 7  # a failing step's status is kept
    assert p.stderr.count("still waiting") >= 2, p.stderr


def test_long_library_steps_show_a_bar_with_eta(tmp_path, capsys, monkeypatch):
    """Hashing the inputs (and the finite scan, the Stage 1 solve) had no progress at all; the bars appear
    only after a few seconds (tqdm `delay`), so the toy's short steps stay quiet."""
    import time

    from rainmerge.io import lazy

    f = tmp_path / "w.bin"
    f.write_bytes(b"\0" * (1 << 20))
    real = lazy.sha256_file

    def slow(path, *a, **k):
        time.sleep(3.5)
        return real(path, *a, **k)

    monkeypatch.setattr(lazy, "sha256_file", slow)
    lazy.sha256_files([f])
    err = capsys.readouterr().err
    assert "hashing input weights" in err and "100%" in err and "<" in err  # elapsed<remaining: the ETA
