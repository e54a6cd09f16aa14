"""benchmarks/bench_gpu.py is the one script a lent GPU runs, unchanged and unattended: a CPU smoke run of
the same code path (1 layer, 3 + 3 samples) must write every stage's row into its JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_gpu_runs_every_stage_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu", "--layers", "1",
           "--shapes", "qwen2.5-0.5b", "--reasoning-samples", "3", "--instruction-samples", "3", "--words", "60",
           "--work", str(tmp_path / "work"), "--json", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    rows = data["shapes"]["qwen2.5-0.5b"]
    stages = ["generate_trio", "encode_calibration", "load_lrm", "stage1_features", "stage1_solve", "stage2",
              "stage3_merge"]
    assert [s for s in stages if s not in rows] == [] and data["no_time_left"] == []
    assert rows["stage1_features"]["tokens"] > 0 and rows["stage2"]["tokens_per_s"] > 0
    assert all("rss_over_model" in rows[s] for s in stages[1:])
    merged = tmp_path / "work" / "qwen2.5-0.5b" / "out"
    assert (merged / "rainmerge_provenance.json").is_file()
    prov = json.loads((merged / "rainmerge_provenance.json").read_text())
    assert {s["solve_dtype"] for s in prov["module_stats"].values()} <= {"float32", "float64 (redo)", "float64 (float64 factor kept)"}
