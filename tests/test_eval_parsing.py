"""Think-format parsing and answer checking used by every evaluation."""

from rainmerge.eval.ifeval import score_response
from rainmerge.eval.think import check_answer, parse


def test_think_parsing():
    ok = parse("steps\n</think>\n\nThe answer is 7.", prefilled_open=True)
    assert ok.well_formed and ok.answer == "The answer is 7." and not ok.close_missing
    missing = parse("steps that never end", prefilled_open=True)
    assert not missing.well_formed and missing.close_missing and missing.answer == ""
    twice = parse("a</think>b</think>c", prefilled_open=True)
    assert not twice.well_formed
    direct = parse("Just an answer.", prefilled_open=False)
    assert not direct.has_think and direct.answer == "Just an answer."


def test_answers_integer_and_math_verify():
    assert check_answer("The answer is 17.", 17) and not check_answer("The answer is 18.", 17)
    assert check_answer(r"so the result is $\frac{1}{2}$", "0.5")
    assert check_answer(r"\boxed{\frac{3}{4}}", r"\frac{3}{4}") and not check_answer(r"\boxed{2}", "3")


def test_ifeval_checker_strict_and_empty_answer():
    r = score_response("k", "Answer in capitals.", ["change_case:english_capital"], [{}], "THE RIVER IS CALM.")
    assert r.prompt_strict
    assert not score_response("k", "p", ["punctuation:no_comma"], [{}], "a, b").prompt_strict
    empty = score_response("k", "p", ["punctuation:no_comma", "startend:quotation"], [{}, {}], "")
    assert empty.strict == [False, False]  # an empty answer follows nothing (not vacuously all())
