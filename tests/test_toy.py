"""The committed toy trio (recipe v2, LRM think-mode format share 2%, seed 0, held-out phrasings and topics;
docs/toy-v3.md) has the properties the paper's problem needs, a tokenizer that fits its embedding, and held-out
sets disjoint from training and calibration (their wording and topics too: tests/test_toy_split.py)."""

import json
from pathlib import Path

import pytest

from rainmerge.eval.suite import evaluate_model

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "assets" / "toy"
DATA = TOY / "data"
pytestmark = pytest.mark.skipif(not (TOY / "reasoning" / "config.json").is_file(), reason="toy trio not built")
LIMIT = 120
SHIPPED_SETS = ["toy_if", "toy_math"]  # the trio's own held-out sets (not the enlarged generator draws)


def _jsonl(name: str) -> list[dict]:
    return [json.loads(l) for l in (DATA / name).read_text().splitlines() if l.strip()]


@pytest.fixture(scope="module")
def lrm_metrics():
    return evaluate_model(TOY / "reasoning", DATA, calibration=DATA / "instruction_calibration.jsonl",
                          limit=LIMIT, progress=False, batch_size=64, sets=SHIPPED_SETS)


@pytest.fixture(scope="module")
def itm_metrics():
    return evaluate_model(TOY / "instruct", DATA, limit=LIMIT, progress=False, batch_size=64, sets=SHIPPED_SETS)


def test_lrm_thinks_solves_and_follows_instructions_partially(lrm_metrics):
    # like a distilled reasoner: thinks on (almost) every prompt, format instructions obeyed only in part
    # (held-out phrasings and topics: IF 21.2% on these 120 prompts)
    assert lrm_metrics["think_well_formed"] >= 0.99
    assert lrm_metrics["reasoning_acc"] >= 0.90
    assert 0.10 <= lrm_metrics["if_inst_strict"] <= 0.70


def test_itm_obeys_but_does_not_reason(itm_metrics, lrm_metrics):
    # the ITM answers after an empty think block (a non-thinking mode in the LRM's template)
    # the skill carries to phrasings and topics it was never taught: 72.6% on these 120 held-out prompts
    assert itm_metrics["if_inst_strict"] >= 0.65
    assert itm_metrics["if_inst_strict"] >= lrm_metrics["if_inst_strict"] + 0.25
    assert itm_metrics["reasoning_acc"] <= 0.5 and itm_metrics["think_well_formed"] >= 0.99


def test_tokenizer_has_no_token_outside_the_embedding():
    from transformers import AutoTokenizer

    for role in ("base", "reasoning", "instruct"):
        tok = AutoTokenizer.from_pretrained(str(TOY / role))
        vocab = json.loads((TOY / role / "config.json").read_text())["vocab_size"]
        assert len(tok) == vocab and max(tok.get_vocab().values()) < vocab, role


def test_held_out_sets_are_disjoint_from_training_and_calibration():
    from rainmerge.toy.build import ToySpec, draw_sets

    manifest = json.loads((TOY / "manifest.json").read_text())
    fields = ToySpec.__dataclass_fields__
    spec = ToySpec(**{k: v for k, v in manifest["spec"].items() if k in fields})
    sets = draw_sets(spec)
    prompts = {k: [x.prompt for x in v] for k, v in sets.items()}
    # the committed files are the drawn sets
    assert [x["prompt"] for x in _jsonl("eval_instructions.jsonl")] == prompts["eval_instructions"]
    assert [x["prompt"] for x in _jsonl("eval_problems.jsonl")] == prompts["eval_problems"]
    assert [x["prompt"] for x in _jsonl("instruction_calibration.jsonl")] == prompts["calib_instructions"]
    cal_r = [r["prompt"] for r in json.loads((DATA / "reasoning_calibration.json").read_text())]
    traces_on_instr = prompts["calib_instructions"] if spec.calib_instruction_traces else []
    assert cal_r == prompts["calib_problems"] + prompts["calib_notes"] + traces_on_instr
    kl = [r["prompt"] for r in json.loads((DATA / "eval_reasoning_heldout.json").read_text())]
    assert kl == prompts["eval_reasoning_kl"]
    held_out = set(prompts["eval_instructions"]) | set(prompts["eval_problems"]) | set(kl)
    calibration = set(cal_r) | set(prompts["calib_instructions"])
    training = {p for k, v in prompts.items() if k.startswith("train") for p in v}
    assert not held_out & calibration and not held_out & training and not calibration & training


def test_manifest_matches_files():
    from rainmerge.io.lazy import sha256_file

    manifest = json.loads((TOY / "manifest.json").read_text())
    for rel, digest in manifest["files"].items():
        assert sha256_file(TOY / rel) == digest, rel
    total = sum(f.stat().st_size for f in TOY.rglob("*") if f.is_file())
    assert total <= 60 * 2**20
