"""Truncated, malformed and ok completions are told apart; the answer is read after </think>."""

import pytest

from rainmerge.eval.think import parse


def test_prefilled_open_tag():
    # the template ended the prompt with <think>: the completion starts inside the block
    p = parse("2 + 2 = 4\n</think>\n\nThe answer is 4.", True, "stop")
    assert p.status == "ok" and p.well_formed and p.answer == "The answer is 4."
    # the same text without the pre-fill has no opening tag: malformed
    q = parse("2 + 2 = 4\n</think>\n\nThe answer is 4.", False, "stop")
    assert q.status == "malformed" and q.answer == "The answer is 4."
    # a model that writes the tag itself, template not pre-filling
    r = parse("<think>2 + 2 = 4</think>The answer is 4.", False, "stop")
    assert r.status == "ok" and r.answer == "The answer is 4."


def test_length_is_truncated_whatever_the_tags():
    cut = parse("a+b: 7 + 1 = 8\n+c: 8 +", True, "length")
    assert cut.status == "truncated" and cut.answer == "" and cut.close_missing
    cut_after = parse("steps</think>The answer is", True, "length")
    assert cut_after.status == "truncated" and cut_after.answer == "The answer is"
    assert parse("a+b: 7 + 1 = 8\n+c: 8 +", True, "stop").status == "malformed"


@pytest.mark.parametrize("text", ["a</think>b</think>c", "<think>again</think>x", "steps</think>   "])
def test_malformed_when_finished_without_one_proper_block(text):
    assert parse(text, True, "stop").status == "malformed"


def test_unknown_finish_reason_rejected():
    with pytest.raises(ValueError, match="finish_reason"):
        parse("x", True, "abort")
