"""Generation engines on the toy LRM: continuous batching gives the padded reference's greedy outputs,
budgets end in 'length' (scored as truncated, not malformed), sampling is seeded, runs resume."""

import json
from pathlib import Path

import pytest

from rainmerge.eval.engines import (Completion, EngineConfig, Request, SamplingConfig, SamplingParams, build_engine,
                                    read_records, run_requests, sampling_requests)
from rainmerge.eval.engines.hf import load
from rainmerge.eval.engines.inprocess import kv_bytes_per_token, size_cache
from rainmerge.eval.think import check_answer, parse

TOY = Path(__file__).resolve().parents[1] / "assets" / "toy"
LRM = str(TOY / "reasoning")


def _render(tok, prompt):
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def toy():
    model, tok = load(LRM, "cpu")
    rows = []
    for name in ("eval_problems.jsonl", "eval_instructions.jsonl"):
        lines = (TOY / "data" / name).read_text().splitlines()
        rows += [json.loads(l) for l in lines[:24]]
    return model, tok, rows


def _requests(tok, rows, budget=160):
    return [Request(str(r["key"]), _render(tok, r["prompt"]), 0, SamplingParams(budget)) for r in rows]


def test_greedy_inprocess_equals_padded_reference(toy):
    model, tok, rows = toy
    reqs = _requests(tok, rows)
    padded = build_engine(EngineConfig(kind="padded", max_concurrency=16), LRM, model=model, tokenizer=tok)
    cb = build_engine(EngineConfig(kind="inprocess", max_concurrency=16), LRM, model=model, tokenizer=tok)
    ref = {c.key: c for c in padded.generate(reqs)}
    got = {c.key: c for c in cb.generate(reqs)}
    assert set(got) == {r.key for r in reqs}
    assert [got[r.key] for r in reqs] == [ref[r.key] for r in reqs]  # text, token counts and finish reason
    assert any("</think>" in c.text for c in got.values())  # special tokens kept: think tags visible
    # the cache was sized from the model and the budget, not from free memory
    s = cb.last_sizing
    assert s.num_blocks * s.page_size >= 16 * 160 and s.gib < 0.01


def test_small_budget_is_truncated_not_malformed_and_wrong(toy):
    model, tok, rows = toy
    probs = [r for r in rows if "answer" in r][:4]
    cb = build_engine(EngineConfig(kind="inprocess", max_concurrency=4), LRM, model=model, tokenizer=tok)
    out = {c.id: c for c in cb.generate(_requests(tok, probs, budget=8))}
    prefilled = _render(tok, "x").rstrip().endswith("<think>")
    for r in probs:
        c = out[str(r["key"])]
        assert c.finish_reason == "length" and c.output_tokens == 8
        p = parse(c.text, prefilled, c.finish_reason)
        assert p.status == "truncated" and not check_answer(p.answer, r["answer"])
        # the same text had it stopped there would be a format failure, not a truncation
        assert parse(c.text, prefilled, "stop").status == "malformed"


def test_seeded_sampling_reproducible_and_seed_sensitive(toy):
    model, tok, rows = toy
    cb = build_engine(EngineConfig(kind="inprocess", max_concurrency=8), LRM, model=model, tokenizer=tok)
    items = [(str(r["key"]), _render(tok, r["prompt"])) for r in rows[:6]]
    reqs = sampling_requests(items, SamplingConfig(temperature=1.5, top_p=0.95, samples=2, seed=11), 40)
    assert {r.params.seed for r in reqs} == {11, 12} and all(r.params.temperature == 1.5 for r in reqs)
    a = {c.key: c.text for c in cb.generate(reqs)}
    b = {c.key: c.text for c in cb.generate(reqs)}
    assert a == b  # same seeds, same samples
    assert any(a[(i, 0)] != a[(i, 1)] for i, _ in items)  # the two seeds really sample
    greedy = {c.key: c.text for c in cb.generate(_requests(tok, rows[:6], 40))}
    assert any(a[(i, 0)] != greedy[(i, 0)] for i, _ in items)


class _Counting:
    """The real engine, recording which requests it was asked to generate."""

    name = "counting"

    def __init__(self, inner):
        self.inner, self.asked = inner, []

    def generate(self, requests):
        self.asked += [r.key for r in requests]
        return self.inner.generate(requests)

    def close(self):
        self.inner.close()


def test_resume_after_kill_generates_only_the_rest(toy, tmp_path):
    model, tok, rows = toy
    reqs = _requests(tok, rows[:10], 60)
    cb = build_engine(EngineConfig(kind="inprocess", max_concurrency=8), LRM, model=model, tokenizer=tok)
    full = run_requests(cb, reqs, tmp_path / "full.jsonl", progress=False)
    assert [c.key for c in full] == [r.key for r in reqs]
    lines = (tmp_path / "full.jsonl").read_text().splitlines()
    assert len(lines) == len(reqs)
    # a kill after 4 completions, the 5th torn half-way through its line
    killed = tmp_path / "killed.jsonl"
    killed.write_text("\n".join(lines[:4]) + "\n" + lines[4][: len(lines[4]) // 2])
    eng = _Counting(cb)
    resumed = run_requests(eng, reqs, killed, progress=False)
    finished = {tuple(json.loads(l)[k] for k in ("id", "sample")) for l in lines[:4]}
    assert sorted(eng.asked) == sorted(r.key for r in reqs if r.key not in finished)
    assert resumed == full
    assert len(read_records(killed)) == len(reqs) and all(json.loads(l) for l in killed.read_text().splitlines())
    eng.asked.clear()
    assert run_requests(eng, reqs, killed, progress=False) == full and eng.asked == []


def test_cache_sizing_follows_model_shape_and_cap(toy):
    model, _, _ = toy
    c = model.config
    per_token = kv_bytes_per_token(c, 4)
    assert per_token == 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    s = size_cache(EngineConfig(max_concurrency=10, page_size=32), c, 4, max_prompt=40, max_new=200)
    assert s.num_blocks == 10 * 8 and s.max_requests_per_batch == 10  # ceil(240 / 32) = 8 pages each
    capped = size_cache(EngineConfig(max_concurrency=10, page_size=32, kv_cache_gib=20 * s.bytes_per_block / 2**30),
                        c, 4, max_prompt=40, max_new=200)
    assert capped.num_blocks == 20 and capped.max_requests_per_batch == 2  # the cap lowers concurrency only
    with pytest.raises(ValueError, match="fewer than one sequence"):
        size_cache(EngineConfig(page_size=32, kv_cache_gib=4 * s.bytes_per_block / 2**30), c, 4, 40, 200)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="needs `url`"):
        EngineConfig(kind="endpoint")
    with pytest.raises(ValueError, match="identical samples"):
        SamplingConfig(temperature=0.0, samples=4)
    with pytest.raises(ValueError, match="unique"):
        run_requests(None, [Request("a", "p"), Request("a", "p")], "/nonexistent/x.jsonl")
    assert Completion("a", 0, "t", 1, 2, "stop").key == ("a", 0)
