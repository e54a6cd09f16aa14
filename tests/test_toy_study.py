"""Issue 27: the strength rule of the toy study (benchmarks/toy_seeds.py choose_strength), on evaluation results
made up per prompt, so each branch of the rule is forced: eligibility by the gates and the well-formed bar, the
highest dev IF, the tie to the smaller strength, and the fallback when no strength is eligible."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.fast


def _study():
    spec = importlib.util.spec_from_file_location("toy_seeds", ROOT / "benchmarks" / "toy_seeds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _result(if_ok: int, wrong: int = 0, malformed: int = 0, well_formed: float = 1.0, n: int = 100) -> dict:
    """An evaluation of n format prompts (if_ok followed) and n sums (wrong of them wrong), as paired units."""
    ifs = {f"toy_if/{i}": [float(i < if_ok), 1.0] for i in range(n)}
    mal = {f"toy_if/{i}": [float(i < malformed), 1.0] for i in range(n)}
    reas = {f"toy_math/{i}": [float(i >= wrong), 1.0] for i in range(n)}
    zero = {k: [0.0, 1.0] for k in ifs}
    return {"if_inst_strict": if_ok / n, "reasoning_acc": 1 - wrong / n, "malformed_rate": malformed / n,
            "truncation_rate": 0.0, "think_well_formed": well_formed,
            "paired": {"if_inst_strict": ifs, "reasoning_acc": reas, "malformed_rate": mal, "truncation_rate": zero}}


class _Cached:
    """An Evaluator whose results are all known (no merge, no generation)."""

    def __init__(self, res: dict):
        self.res = res

    def model(self, name, method, strength=None):
        return self.res[name]


def test_the_rule_takes_the_best_eligible_strength_and_the_smaller_on_a_tie():
    mod = _study()
    gates = mod._gates(str(ROOT / "configs" / "toy.yaml"))
    res = {"lrm": _result(5), "rain@0.25": _result(6), "rain@0.5": _result(12, well_formed=0.995),
           "rain@0.75": _result(20, wrong=30),            # reasoning gate fails
           "rain@1.0": _result(12),                        # ties 0.5: the smaller wins
           "rain@1.5": _result(30, well_formed=0.98),      # below 99 % well-formed
           "rain@2.0": _result(40, malformed=10), "rain@3.0": _result(40, malformed=10)}  # malformed gate
    out = mod.choose_strength(_Cached(res), "rain", gates)
    assert out["strength"] == 0.5 and not out["none_eligible"]
    assert [r["eligible"] for r in out["grid"]] == [True, True, False, True, False, False, False]


def test_with_no_eligible_strength_the_rule_falls_back_to_the_smallest():
    mod = _study()
    gates = mod._gates(str(ROOT / "configs" / "toy.yaml"))
    res = {"lrm": _result(5), **{f"task_arithmetic@{s}": _result(50, wrong=40) for s in mod.GRID}}
    out = mod.choose_strength(_Cached(res), "task_arithmetic", gates)
    assert out["strength"] == mod.GRID[0] == 0.25 and out["none_eligible"]
