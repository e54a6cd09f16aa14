"""Think-tag and span token positions: on synthetic records, and on the authors' files in ../shared."""

import json

import pytest
from transformers import AutoTokenizer

from rainmerge.calibration import (ReasoningRecord, Template, encode_instruction,
                                   encode_reasoning, load_instruction, load_reasoning, protected_positions,
                                   resolve_calibration)
from rainmerge.config import CalibrationRef
from rainmerge.errors import ConfigError
from tests.conftest import SHARED
from tests.tiny import reasoning_records


@pytest.fixture(scope="module")
def tok(trio_factory):
    return AutoTokenizer.from_pretrained(trio_factory("qwen2")["reasoning"])


def test_window_positions():
    assert protected_positions(10, 50, 60, "window", 2) == [10, 11, 12, 48, 49, 50]
    assert protected_positions(10, 50, 60, "tags", 2) == [10, 50]


def test_reasoning_tags_are_the_tag_tokens(tok):
    recs = [ReasoningRecord.model_validate(r) for r in reasoning_records()]
    samples, rep = encode_reasoning(recs, Template(tok), "window", 3, 4096)
    assert rep.kept == 4
    for s in samples:
        assert tok.convert_ids_to_tokens(s.input_ids[s.think_open]) == "<think>"
        assert tok.convert_ids_to_tokens(s.input_ids[s.think_close]) == "</think>"
        assert s.positions[0] == s.think_open and s.positions[-1] == s.think_close and len(s.positions) == 8


def test_old_template_without_think_prefill_fails_clearly_or_is_patched(trio_factory, tmp_path):
    from tests.tiny import OLD_TEMPLATE, build_tokenizer

    old = build_tokenizer(tmp_path, OLD_TEMPLATE)
    with pytest.raises(ConfigError, match="does not pre-fill"):
        Template(old).check_tokens()
    recs = [ReasoningRecord.model_validate(r) for r in reasoning_records(2)]
    samples, rep = encode_reasoning(recs, Template(old, append_think_prefix=True), "tags", 0, 4096)
    assert rep.kept == 2 and old.convert_ids_to_tokens(samples[0].input_ids[samples[0].think_open]) == "<think>"


def test_sha256_is_verified(tmp_path):
    f = tmp_path / "x.json"
    f.write_text("[]")
    with pytest.raises(ConfigError, match="sha256"):
        resolve_calibration(CalibrationRef(path=str(f), sha256="0" * 64), "reasoning_calibration", tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        resolve_calibration(CalibrationRef(path=str(tmp_path / "nope.json")), "reasoning_calibration", tmp_path)


def test_schema_errors_name_the_record_and_field(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps([{"prompt": "p", "reasoning": "r", "response": "x"}, {"prompt": "p"}]))
    with pytest.raises(ConfigError, match="record 1: field 'reasoning'"):
        load_reasoning(f)


needs_shared = pytest.mark.skipif(not (SHARED / "reasoning_calibration_set.json").is_file(),
                                  reason="reference calibration files not present in ../shared")


@needs_shared
def test_reference_reasoning_file_all_tags_located(tok):
    path, digest = resolve_calibration(
        CalibrationRef(path=str(SHARED / "reasoning_calibration_set.json"),
                       sha256="bebb4cb5216f474fad2994128a4e70ca5ca0eeb89ee6b528db93a135b2b694e5"), "r", None)
    recs = load_reasoning(path)
    assert len(recs) == 150
    samples, rep = encode_reasoning(recs, Template(tok), "window", 5, 10**6)
    assert rep.kept == 150, rep.skipped
    for s in samples:
        assert tok.convert_ids_to_tokens(s.input_ids[s.think_open]) == "<think>"
        assert tok.convert_ids_to_tokens(s.input_ids[s.think_close]) == "</think>"
        assert s.input_ids.count(s.input_ids[s.think_close]) == 1
        assert len(s.positions) == 12


@needs_shared
def test_reference_instruction_spans_locate_in_the_right_regions(tok):
    recs = load_instruction(SHARED / "instruction_calibration_set.jsonl")
    assert len(recs) == 365
    tpl = Template(tok)
    samples, rep = encode_instruction(recs, tpl, "response", 10**6)
    assert rep.kept >= 0.9 * len(recs), rep.skipped
    by_id = {str(r.id): r for r in recs}
    close_id = tok.convert_tokens_to_ids("</think>")
    for s in samples[:60]:
        close = s.input_ids.index(close_id)
        rec = by_id[s.sample_id]
        for sp in s.spans:
            assert max(sp.instruction) < close  # instruction tokens are in the prompt
            assert all(t > close for t in sp.related + sp.unrelated)  # response rows come after </think>
            text = tok.decode([s.input_ids[t] for t in sp.instruction])
            assert any(p.strip()[:8] in text for rel in rec.related_prompt_list for p in rel.prompt_spans)
