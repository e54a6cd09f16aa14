"""benchmarks/gpu_eval_engine.py runs unattended on a lent GPU: its CPU smoke run (tiny shape) must go
through both engines and write every row of its JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_eval_engine_smoke_on_cpu(tmp_path):
    out = tmp_path / "gee.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_eval_engine.py"), "--device", "cpu", "--tiny",
                        "--json", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(out.read_text())["shapes"]["tiny"]
    pad, cb = row["padded@64"], row["inprocess@64"]
    assert pad["tokens"] == pad["sequences"] * 8 and cb["tokens"] == cb["sequences"] * 8  # every sequence decoded 8
    assert cb["sequences"] == 6 and cb["kv_blocks"] >= 6 and cb["tokens_per_s"] > 0 and pad["tokens_per_s"] > 0
