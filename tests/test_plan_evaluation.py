"""`rainmerge plan` estimates evaluation tokens and time per engine (labelled estimates)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rainmerge.eval.engines import EngineConfig, SamplingConfig
from rainmerge.preflight.evaluation import (ASSUMED_TOKENS_PER_S, EvalWorkload, estimate_evaluation,
                                            format_evaluation)

ROOT = Path(__file__).resolve().parents[1]


def _w(n, budget, kind="reasoning"):
    return EvalWorkload(name=f"b{n}", kind=kind, prompts=n, max_new_tokens=budget, prompts_source="nominal")


def test_estimate_arithmetic():
    ws = [_w(500, 32768), _w(300, 4096, "if")]
    one = estimate_evaluation(ws, params=int(7.6e9), engine=EngineConfig(), sampling=SamplingConfig(),
                              device="cuda")
    four = estimate_evaluation(ws, params=int(7.6e9), engine=EngineConfig(), device="cuda",
                               sampling=SamplingConfig(temperature=0.6, top_p=0.95, samples=4))
    assert one.budget_tokens_per_model == 500 * 32768 + 300 * 4096
    assert one.expected_tokens_per_model == 500 * 3500 + 300 * 1500
    assert four.budget_tokens_per_model == 4 * one.budget_tokens_per_model
    e = {x.engine: x for x in four.engines}
    assert e["inprocess"].hours_per_model == pytest.approx(
        four.expected_tokens_per_model / ASSUMED_TOKENS_PER_S[("inprocess", "cuda")] / 3600)
    # padded: ceil(2000/16) batches x 16 slots x 32768 + ceil(1200/16) x 16 x 4096 slot-tokens
    slots = 125 * 16 * 32768 + 75 * 16 * 4096
    assert e["padded"].hours_per_model == pytest.approx(slots / ASSUMED_TOKENS_PER_S[("padded", "cuda")] / 3600)
    assert e["padded"].hours_total == pytest.approx(2 * e["padded"].hours_per_model)
    assert e["inprocess"].hours_per_model < e["padded"].hours_per_model
    text = format_evaluation(four)
    assert "ESTIMATES" in text and "<- configured" in text


def test_plan_cli_prints_the_evaluation_section():
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "rainmerge", "plan", "--config",  # noqa: E731
                                     str(ROOT / "configs" / "toy.yaml"), *a], capture_output=True, text=True, env=env,
                                    cwd=ROOT, timeout=120)
    out = run("--json", "--set", "evaluation.sampling.samples=3", "--set", "evaluation.sampling.temperature=0.6")
    ev = json.loads(out.stdout)["evaluation"]
    assert ev["samples"] == 3 and {w["name"]: w["prompts"] for w in ev["workloads"]} == {
        "eval_instructions": 200, "eval_problems": 200}
    assert ev["budget_tokens_per_model"] == 3 * 400 * ev["workloads"][0]["max_new_tokens"]
    bad = run("--set", "evaluation.engine.kind=endpoint")
    assert bad.returncode == 2 and "needs `url`" in bad.stderr and "Traceback" not in bad.stderr
