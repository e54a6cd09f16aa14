"""Reasoning calibration from the user's own prompts (rainmerge.calibration_builder) on the toy LRM."""

import json
from pathlib import Path

import pytest

from rainmerge.calibration import Template, encode_reasoning, load_reasoning
from rainmerge.calibration_builder import classify, main, read_prompts
from rainmerge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
LRM = ROOT / "assets" / "toy" / "reasoning"
needs_toy = pytest.mark.skipif(not (LRM / "config.json").is_file(), reason="toy trio not built")

PROBLEMS = ["Add the numbers a=7 b=1 c=5 d=9.", "Add the numbers a=2 b=8 c=3.", "Add the numbers a=4 b=9 c=3 d=5 e=3.",
            "Add the numbers a=6 b=6 c=1 d=2."]


def _prompts(tmp_path: Path) -> Path:
    rows = [{"prompt": p, "id": f"p{i}"} for i, p in enumerate(PROBLEMS)]
    rows += [{"prompt": ""}, {"prompt": PROBLEMS[0]}]  # +1 empty, +1 duplicate
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


@needs_toy
def test_builds_loadable_calibration_with_counts(tmp_path):
    out = tmp_path / "cal.json"
    assert main(["--model", str(LRM), "--prompts", str(_prompts(tmp_path)), "--out", str(out),
                 "--max-new-tokens", "96", "--quiet"]) == 0
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["n_prompts"] == 6 and report["generated"] == 4 and report["kept"] == 4
    assert report["dropped"] == {"empty_prompt": 1, "duplicate_prompt": 1} and report["n_dropped"] == 2
    recs = load_reasoning(out)
    assert [r.sample_id for r in recs] == ["p0", "p1", "p2", "p3"]
    assert all(r.reasoning and r.response and "<think>" not in r.reasoning for r in recs)
    assert recs[0].response == "The answer is 22."  # 7+1+5+9, the LRM's own greedy answer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(LRM))
    samples, rep = encode_reasoning(recs, Template(tok), "tags", 0, 8192)
    assert rep.kept == 4 and not rep.skipped
    ids_open, ids_close = tok.convert_tokens_to_ids(["<think>", "</think>"])
    for s in samples:
        assert s.input_ids[s.think_open] == ids_open and s.input_ids[s.think_close] == ids_close
        assert s.think_open < s.think_close


@needs_toy
def test_budget_too_small_drops_everything_as_truncated(tmp_path):
    out = tmp_path / "cal.json"
    rc = main(["--model", str(LRM), "--prompts", str(_prompts(tmp_path)), "--out", str(out),
               "--max-new-tokens", "4", "--quiet"])
    assert rc == 1 and not out.exists()
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["kept"] == 0 and report["dropped"]["truncated"] == 4
    assert report["drop_examples"]["truncated"][0]["completion"]


@pytest.mark.parametrize("completion, reason", [
    ("a+b: 1 + 2 = 3\n</think>\n\nThe answer is 3.", None),
    ("a+b: 1 + 2 = 3\nThe answer is 3.", "no_think_close"),
    ("x\n</think>\n\ny</think>z", "malformed_think"),
    ("x\n</think><think>y</think>z", "malformed_think"),
    ("\n</think>\n\nThe answer is 3.", "empty_reasoning"),
    ("x\n</think>\n\n", "empty_answer"),
])
def test_classify(completion, reason):
    got, reasoning, answer = classify(completion, 10, 100)
    assert got == reason
    if reason is None:
        assert reasoning == "a+b: 1 + 2 = 3" and answer == "The answer is 3."


def test_classify_truncated():
    assert classify("x\n</think>\n\nThe ans", 100, 100)[0] == "truncated"


def test_read_prompts_errors(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"text": "no prompt"}\n')
    with pytest.raises(ConfigError, match="prompt"):
        read_prompts(f)
    f.write_text("not json\n")
    with pytest.raises(ConfigError, match="JSON"):
        read_prompts(f)
    with pytest.raises(ConfigError, match="not found"):
        read_prompts(tmp_path / "missing.jsonl")
