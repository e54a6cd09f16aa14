"""The promotion gates (rainmerge/product/gates.py) and their statistics (rainmerge/eval/stats.py)."""

from __future__ import annotations

import numpy as np
import pytest

from rainmerge.eval.stats import paired_bootstrap, paired_se, ratio, simulate_if_units
from rainmerge.product.pipeline_config import PromotionGates
from rainmerge.product.gates import GateError, decide, exceeds, flat, intervals, reaches
from tests.paired import evaluation, stored

pytestmark = pytest.mark.fast


def test_interval_identities():
    # delta is the difference of the two ratios; the interval holds it; swapping sides negates everything
    rng = np.random.default_rng(0)
    c, r = simulate_if_units(300, 0.05, rng)
    iv = paired_bootstrap(c, r, seed=3)
    assert iv.delta == pytest.approx(ratio(c) - ratio(r))
    assert iv.lo <= iv.delta <= iv.hi
    back = paired_bootstrap(r, c, seed=3)
    assert back.delta == pytest.approx(-iv.delta) and back.lo == pytest.approx(-iv.hi) and back.hi == pytest.approx(-iv.lo)
    # seeded: the same records give the same interval; the width tracks the delta-method standard error
    assert paired_bootstrap(c, r, seed=3) == iv
    assert (iv.hi - iv.lo) == pytest.approx(2 * 1.96 * paired_se(c, r), rel=0.15)
    # identical models: a point interval at 0
    same = paired_bootstrap(c, c)
    assert (same.lo, same.hi) == (0.0, 0.0)


def test_pairing_refuses_different_prompts():
    with pytest.raises(ValueError, match="same prompts"):
        paired_bootstrap({"a": [1, 1]}, {"b": [1, 1]})


def _pass_rate(n_prompts: int, gain: float, sims: int, seed: int) -> tuple[float, float]:
    """(new gate pass rate, old gate pass rate): lower bound > 0 vs point delta >= 0.02."""
    rng = np.random.default_rng(seed)
    new = old = 0
    for s in range(sims):
        c, r = simulate_if_units(n_prompts, gain, rng)
        new += paired_bootstrap(c, r, n_resamples=500, seed=s).lo > 0.0
        old += ratio(c) - ratio(r) >= 0.02
    return new / sims, old / sims


def test_zero_gain_rarely_passes_and_a_real_gain_usually_does():
    # false promotions on the held-out size (176 IFEval prompts): the old point gate passes a
    # merge with no real gain far more often than the paired lower bound does
    new0, old0 = _pass_rate(176, 0.0, 200, seed=1)
    assert new0 <= 0.05 and old0 >= 0.10, (new0, old0)
    new5, _ = _pass_rate(500, 0.05, 100, seed=2)
    assert new5 >= 0.8, new5  # power for +5 points on 500 prompts


def test_decide_passes_a_clear_gain_and_reports_each_interval():
    lrm = evaluation(0.5, 0.9)
    d = decide(evaluation(0.7, 0.9), lrm, None, PromotionGates())
    assert d.promote, d.reasons
    text = "\n".join(d.reasons)
    for m in ("if_inst_strict gain", "reasoning_acc change", "truncation_rate increase", "malformed_rate increase"):
        assert m in text and "95% CI" in text


@pytest.mark.parametrize("merged, failing", [
    (evaluation(0.5, 0.9), "if_inst_strict"),                  # no gain: [0, 0] is not above 0
    (evaluation(0.52, 0.9, offset=7), "if_inst_strict"),        # a small, uncertain gain
    (evaluation(0.7, 0.8), "reasoning_acc"),                    # 10 points lost
    (evaluation(0.7, 0.9, truncated=0.1), "truncation_rate"),   # runs out of budget more often
    (evaluation(0.7, 0.9, malformed=0.1), "malformed_rate"),
])
def test_decide_fails_the_gate_that_is_missed(merged, failing):
    d = decide(merged, evaluation(0.5, 0.9), None, PromotionGates())
    assert not d.promote
    assert [r for r in d.reasons if r.startswith("FAIL")][0].startswith(f"FAIL {failing}")


def test_stored_intervals_give_the_same_decision():
    # `rainmerge promote` reads ci.* back from the registry; the pipeline computes them from the units
    g = PromotionGates()
    merged, lrm = evaluation(0.62, 0.9, offset=3), evaluation(0.5, 0.9)
    m_stored, l_stored = stored(merged, lrm, g)
    a, b = decide(merged, lrm, None, g), decide(m_stored, l_stored, None, g)
    assert a.reasons == b.reasons and a.promote == b.promote
    with pytest.raises(GateError, match="level 0.95"):
        decide(m_stored, l_stored, None, g.model_copy(update={"confidence": 0.9}))


def test_exact_arithmetic_and_the_tie_rule():
    assert 0.6 < 0.55 + 0.05 and 0.6 - 0.55 < 0.05  # the float traps the gates must not fall into
    assert reaches(0.6, 0.55 + 0.05) and reaches(0.6 - 0.55, 0.05) and not exceeds(0.6 - 0.55, 0.05)
    assert not reaches(0.6, 0.6 + 1e-6)  # a real difference still counts
    # a drop of exactly the allowed 0.05 on every prompt: 0.5 - 0.55 is -0.050000000000000044 in floats
    assert 0.5 - 0.55 < -0.05
    lrm, merged = evaluation(0.5, 0.9), evaluation(0.7, 0.9)
    lrm["paired"]["reasoning_acc"] = {k: [0.55, 1.0] for k in lrm["paired"]["reasoning_acc"]}
    merged["paired"]["reasoning_acc"] = {k: [0.5, 1.0] for k in merged["paired"]["reasoning_acc"]}
    d = decide(merged, lrm, None, PromotionGates(max_reasoning_drop=0.05))
    assert d.promote and any(r.startswith("PASS reasoning_acc change -0.0500") for r in d.reasons), d.reasons
    g = PromotionGates(floors={"think_well_formed": 0.55 + 0.05})
    lrm = evaluation(0.5, 0.9)
    merged = evaluation(0.7, 0.9) | {"think_well_formed": 0.6}
    d = decide(merged, lrm, None, g)
    assert d.promote and any(r.startswith("PASS think_well_formed 0.6 >= floor") for r in d.reasons)
    # a tie with the champion passes (documented), the same in both the pipeline and `promote`
    champ = {"if_inst_strict": merged["if_inst_strict"]}
    d = decide(merged, lrm, champ, g, champion_version="1")
    assert d.promote and any("champion v1" in r and "a tie passes" in r for r in d.reasons)


def test_bad_metrics_are_one_line_errors():
    lrm, merged = evaluation(0.5, 0.9), evaluation(0.7, 0.9)
    with pytest.raises(GateError, match="champion v3 has no metric 'if_inst_strict'"):
        decide(merged, lrm, {}, PromotionGates(), champion_version="3")
    with pytest.raises(GateError, match="champion v3 has no metric"):
        decide(merged, lrm, None, PromotionGates(), champion_version="3")
    with pytest.raises(GateError, match="is not a number: 'n/a'"):
        decide(merged, lrm, {"if_inst_strict": "n/a"}, PromotionGates(), champion_version="2")
    m_stored, l_stored = stored(merged, lrm)
    del m_stored["ci.reasoning_acc.lo"]
    with pytest.raises(GateError, match="no paired records for 'reasoning_acc'"):
        decide(m_stored, l_stored, None, PromotionGates())


def test_metric_names_validated_at_config_load():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown promotion metric 'if_inst_strictt'"):
        PromotionGates(metric="if_inst_strictt")
    with pytest.raises(ValidationError, match="unknown metric"):
        PromotionGates(floors={"well_formed": 0.9})
    assert flat(intervals(evaluation(0.7, 0.9), evaluation(0.5, 0.9), PromotionGates(metric="if_inst_strict")))
