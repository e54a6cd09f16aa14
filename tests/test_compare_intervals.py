"""`rainmerge compare` prints the paired intervals the promotion gates use, model - LRM, per metric."""

from rainmerge.compare import paired_vs_lrm


def _row(model, wins):
    # per-prompt (numerator, denominator) units, as suite.evaluate_model returns them under `paired`
    return {"model": model, "paired": {"if_inst_strict": {f"p{i}": (float(w), 1.0) for i, w in enumerate(wins)}}}


def test_intervals_are_model_minus_lrm_and_paired():
    lrm = _row("lrm", [0, 1] * 20)
    same = _row("same", [0, 1] * 20)
    better = _row("better", [1, 1] * 20)
    ivs = paired_vs_lrm([lrm, same, better])
    assert set(ivs) == {"same", "better"}
    s = ivs["same"]["if_inst_strict"]
    assert s.delta == 0 and s.lo == 0 and s.hi == 0  # identical per prompt: no spread when paired
    b = ivs["better"]["if_inst_strict"]
    assert abs(b.delta - 0.5) < 1e-12 and 0 < b.lo <= b.delta <= b.hi and b.n == 40


def test_no_lrm_row_means_no_intervals():
    assert paired_vs_lrm([_row("rain", [1, 0])]) == {}
