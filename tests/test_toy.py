"""The committed toy trio has the properties the paper's problem needs, and RAIN beats the baselines."""

import json
from pathlib import Path

import pytest

from rainmerge.eval.suite import evaluate_model

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "assets" / "toy"
pytestmark = pytest.mark.skipif(not (TOY / "reasoning" / "config.json").is_file(), reason="toy trio not built")


@pytest.fixture(scope="module")
def lrm_metrics():
    return evaluate_model(TOY / "reasoning", TOY / "data", calibration=TOY / "data" / "instruction_calibration.jsonl",
                          limit=120, progress=False)


@pytest.fixture(scope="module")
def itm_metrics():
    return evaluate_model(TOY / "instruct", TOY / "data", limit=120, progress=False)


def test_lrm_thinks_solves_and_ignores_instructions(lrm_metrics):
    assert lrm_metrics["think_well_formed"] >= 0.95
    assert lrm_metrics["reasoning_acc"] >= 0.80
    assert lrm_metrics["if_inst_strict"] <= 0.25


def test_itm_obeys_and_never_thinks(itm_metrics):
    assert itm_metrics["if_inst_strict"] >= 0.80
    assert itm_metrics["think_present"] == 0.0


def test_evaluation_sets_are_disjoint_from_calibration():
    data = TOY / "data"
    cal = {json.loads(l)["prompt"] for l in (data / "instruction_calibration.jsonl").read_text().splitlines()}
    ev = {json.loads(l)["prompt"] for l in (data / "eval_instructions.jsonl").read_text().splitlines()}
    probs = {r["prompt"] for r in json.loads((data / "reasoning_calibration.json").read_text())}
    ev_p = {json.loads(l)["prompt"] for l in (data / "eval_problems.jsonl").read_text().splitlines()}
    assert not cal & ev and not probs & ev_p


def test_manifest_matches_files():
    from rainmerge.io.lazy import sha256_file

    manifest = json.loads((TOY / "manifest.json").read_text())
    for rel, digest in manifest["files"].items():
        assert sha256_file(TOY / rel) == digest, rel
    total = sum(f.stat().st_size for f in TOY.rglob("*") if f.is_file())
    assert total <= 25 * 2**20
