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

from .test_safety import _args, _cli, _digest


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
    rc, line = _cli(capsys, _args(trio_factory(), calib, out))
    assert rc == 2 and "symlink" in line
    assert victim.read_text() == "precious" and not out.exists()


# ----------------------------------------------------------------------------------------------
# --overwrite replaces only an unchanged folder rainmerge wrote


def test_overwrite_keeps_a_user_folder_with_an_empty_provenance(trio_factory, calib, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "docs").mkdir(parents=True)
    (out / "docs" / "thesis.txt").write_text("years of work")
    (out / "rainmerge_provenance.json").write_text("{}")
    before = _digest(out)
    rc, line = _cli(capsys, _args(trio_factory(), calib, out, "--overwrite"))
    assert rc == 2 and "not written by rainmerge" in line and "remove it yourself" in line
    assert _digest(out) == before


def test_overwrite_refuses_an_earlier_merge_with_a_file_added_then_replaces_it_when_clean(
        trio_factory, calib, tmp_path, capsys):
    trio = trio_factory()
    out = tmp_path / "o"
    assert _cli(capsys, _args(trio, calib, out))[0] == 0
    prov = json.loads((out / "rainmerge_provenance.json").read_text())
    assert prov["contents"] and "rainmerge_provenance.json" not in prov["contents"]
    (out / "notes.txt").write_text("added by hand")
    rc, line = _cli(capsys, _args(trio, calib, out, "--overwrite"))
    assert rc == 2 and "notes.txt" in line
    assert (out / "notes.txt").read_text() == "added by hand"
    (out / "notes.txt").unlink()
    assert _cli(capsys, _args(trio, calib, out, "--overwrite"))[0] == 0


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
    rc, line = _cli(capsys, _args(trio_factory(), calib, out, f"--strength={value}"))
    assert rc == 2 and "strength" in line and "finite" in line and not out.exists()
    from rainmerge.product.config import load_pipeline_config

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
