"""Issue #13: every remaining bad input (YAML, config values, calibration files, --set values) is a
one-line error (exit 2), never a traceback."""

from __future__ import annotations

import json

import pytest

from rainmerge.errors import ConfigError
from rainmerge.overrides import parse_sets

from .merge_cli import merge_args, run_cli


def test_yaml_syntax_error_names_file_line_column(trio_factory, calib, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("method: task_arithmetic\nstrength: 0.5\nlayers: [0, 1\noutput: o\n")
    rc, line = run_cli(capsys, ["merge", "--config", str(cfg)])
    assert rc == 2 and str(cfg) in line and "YAML syntax error at line 4, column" in line
    cfg.write_bytes(b"method: ties\xff\xfe\n")
    rc, line = run_cli(capsys, ["merge", "--config", str(cfg)])
    assert rc == 2 and "not UTF-8" in line


def test_invalid_values_are_one_line(trio_factory, calib, tmp_path, capsys):
    rc, line = run_cli(capsys, merge_args(trio_factory(), calib, tmp_path / "o", "--set", "layers=[0,",
                                  "--set", "stage2.rho=x"))
    assert rc == 2 and "invalid configuration: layers:" in line and "stage2.rho:" in line


def test_non_utf8_calibration_file(trio_factory, calib, tmp_path, capsys):
    bad = tmp_path / "reasoning.json"
    bad.write_bytes(calib[0].read_bytes().replace(b"Compute 1 plus", b"Compute \xe9 plus"))
    out = tmp_path / "o"
    rc, line = run_cli(capsys, merge_args(trio_factory(), (bad, calib[1]), out, method="rain"))
    assert rc == 2 and str(bad) in line and "not UTF-8" in line
    assert not out.exists()


def test_jsonl_error_reports_the_right_line(tmp_path):
    from rainmerge.calibration import load_instruction
    from tests.tiny import instruction_records

    rows = [json.dumps(r) for r in instruction_records(3)]
    bad = tmp_path / "i.jsonl"
    bad.write_text("\n".join(rows[:2] + ["", '{"id": 7, "prompt": '] + rows[2:]) + "\n")
    with pytest.raises(ConfigError, match=r"i.jsonl: line 4 is not valid JSON"):
        load_instruction(bad)


def test_set_keeps_digests_and_odd_numbers_as_text():
    sha = "1234567890" * 6 + "1234"
    assert parse_sets([f"reasoning_calibration.sha256={sha}"]) == {"reasoning_calibration.sha256": sha}
    got = parse_sets(["a=0123", "b=12", "c=0.5", "d=[0, 1]", "e=true", "f=0x10", "g=abc", "h=[1,", "i=" + "0" * 40])
    assert got == {"a": "0123", "b": 12, "c": 0.5, "d": [0, 1], "e": True, "f": "0x10", "g": "abc", "h": "[1,",
                   "i": "0" * 40}
    from rainmerge.config import load_config

    cfg = load_config(None, {"base": "a", "instruct": "b", "reasoning": "c", "output": "o", "method": "rain",
                             "stage2.enabled": False, "reasoning_calibration.url": "https://x/y.json",
                             **parse_sets([f"reasoning_calibration.sha256={sha}"])})
    assert cfg.reasoning_calibration.sha256 == sha


def test_compare_bad_config_and_methods_are_one_line(tmp_path, capsys):
    """`rainmerge compare` checks its config and --methods before any merge or evaluation starts."""
    out = tmp_path / "cmp"
    rc, line = run_cli(capsys, ["compare", "--config", str(tmp_path / "none.yaml"), "--out", str(out)])
    assert rc == 2 and "config file not found" in line
    rc, line = run_cli(capsys, ["compare", "--methods", "lrm,nope", "--out", str(out)])
    assert rc == 2 and "unknown nope" in line and "task_arithmetic" in line
    assert not out.exists()  # refused before anything ran
