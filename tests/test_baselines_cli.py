"""Baselines behind the same interface, and the CLI with a YAML config plus overriding flags."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from rainmerge.config import load_config
from rainmerge.stages import run_merge

ROOT = Path(__file__).resolve().parents[1]
Q = "model.layers.0.self_attn.q_proj.weight"


def _run(trio, out, method, **over):
    cfg = {"base": str(trio["base"]), "instruct": str(trio["instruct"]), "reasoning": str(trio["reasoning"]),
           "output": str(out), "method": method, "device": "cpu", **over}
    run_merge(load_config(None, cfg), progress=False)
    return load_file(out / "model.safetensors")


def test_task_arithmetic_is_lrm_plus_lambda_tau(trio_factory, tmp_path):
    trio = trio_factory()
    m = _run(trio, tmp_path / "ta", "task_arithmetic", strength=0.7)
    b, i, r = (load_file(trio[k] / "model.safetensors") for k in ("base", "instruct", "reasoning"))
    assert torch.allclose(m[Q], r[Q] + 0.7 * (i[Q] - b[Q]), atol=1e-6)
    assert torch.equal(m["model.embed_tokens.weight"], r["model.embed_tokens.weight"])


def test_ties_and_dare_are_sparse_and_reproducible(trio_factory, tmp_path):
    trio = trio_factory()
    b = load_file(trio["base"] / "model.safetensors")
    t = _run(trio, tmp_path / "ties", "ties", density=0.3)
    kept = ((t[Q] - b[Q]).abs() > 0).float().mean()
    assert 0.3 <= kept <= 0.6  # union of two 30% masks
    d1 = _run(trio, tmp_path / "d1", "dare", density=0.5, seed=3)
    d2 = _run(trio, tmp_path / "d2", "dare", density=0.5, seed=3)
    d3 = _run(trio, tmp_path / "d3", "dare", density=0.5, seed=4)
    assert torch.equal(d1[Q], d2[Q]) and not torch.equal(d1[Q], d3[Q])


def test_cli_yaml_and_flag_override(trio_factory, calib, tmp_path):
    trio = trio_factory()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"base": {"path": str(trio["base"])}, "instruct": {"path": str(trio["instruct"])},
                                   "reasoning": {"path": str(trio["reasoning"])}, "method": "ties",
                                   "reasoning_calibration": {"path": str(calib[0])},
                                   "instruction_calibration": {"path": str(calib[1])},
                                   "output": str(tmp_path / "from_yaml"), "stage1": {"positions": "tags"}}))
    out = tmp_path / "from_flag"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "rainmerge", "merge", "--config", str(cfg), "--method", "rain",
                        "--output", str(out), "--device", "cpu", "--strength", "0.5", "--quiet",
                        "--set", "stage2.rho=0.25"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    prov = json.loads((out / "rainmerge_provenance.json").read_text())
    assert prov["method"] == "rain" and prov["config"]["strength"] == 0.5
    assert prov["config"]["stage2"]["rho"] == 0.25 and not (tmp_path / "from_yaml").exists()
    alpha = json.loads((out / "rain_alpha.json").read_text())
    assert len(alpha["alpha"]) == 2 and len(alpha["alpha"][0]) == 4
    bad = subprocess.run([sys.executable, "-m", "rainmerge", "merge", "--config", str(cfg), "--output", str(out)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "already exists" in bad.stderr and "Traceback" not in bad.stderr
