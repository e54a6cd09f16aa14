"""Issue 27: the toy's held-out prompts use phrasings, note forms and topics that no training or calibration
text contains, by construction (the generator's partitions) and in the committed files."""

import json
import random
import re
from pathlib import Path

import pytest

from rainmerge.toy import tasks as T

TOY = Path(__file__).resolve().parents[1] / "assets" / "toy"
DATA = TOY / "data"


def _pattern(phrasing: str) -> re.Pattern:
    """A phrasing as a regex over prompts (keyword slots match any word)."""
    return re.compile(re.escape(phrasing).replace(re.escape("{k1}"), r"\w+").replace(re.escape("{k2}"), r"\w+"))


def _owner(prompt: str) -> dict[str, set[str]]:
    """Which parts' phrasings, note forms and topics occur in a prompt."""
    found: dict[str, set[str]] = {"phrasing": set(), "form": set(), "topic": set()}
    for part in T.PARTS:
        for per_part in T.PHRASINGS.values():
            if any(_pattern(p).search(prompt) for p in per_part[part]):
                found["phrasing"].add(part)
        for form in T.NOTE_FORMS[part]:
            head = form.split("{t}")[0]
            if prompt.startswith(head) and re.match(re.escape(form).replace(re.escape("{t}"), r"(\w+)"), prompt):
                found["form"].add(part)
        words = set(re.findall(r"[a-z]+", prompt.lower()))
        found["topic"] |= {part for t in T.TOPIC_SPLIT[part] if t in words}
    return found


def test_partitions_are_disjoint_and_cover_every_type():
    for part_a in T.PARTS:
        for part_b in T.PARTS:
            if part_a < part_b:
                assert not set(T.TOPIC_SPLIT[part_a]) & set(T.TOPIC_SPLIT[part_b])
                assert not set(T.NOTE_FORMS[part_a]) & set(T.NOTE_FORMS[part_b])
                for iid, per in T.PHRASINGS.items():
                    assert not set(per[part_a]) & set(per[part_b]), iid
    for iid, per in T.PHRASINGS.items():
        assert len(per["train"]) >= 4 and per["calib"] and len(per["eval"]) >= 2, iid
    # a phrasing of one part is never a substring of another part's (else "held out" would be in name only)
    every = [(part, p) for per in T.PHRASINGS.values() for part in T.PARTS for p in per[part]]
    for pa, a in every:
        for pb, b in every:
            assert pa == pb or a not in b, (a, b)
    # topic words are whole words that no other topic contains
    for a in T.TOPICS:
        assert sum(a in re.findall(r"[a-z]+", b) for b in T.TOPICS) == 1, a


@pytest.mark.parametrize("part", T.PARTS)
def test_generator_draws_stay_in_their_part(part):
    rng = random.Random(7)
    for i in range(300):
        t = T.make_instruction_task(rng, f"x{i}", part=part)
        owner = _owner(t.prompt)
        assert owner["phrasing"] == {part} and owner["form"] == {part} and owner["topic"] == {part}, t.prompt
        assert t.topic in T.TOPIC_SPLIT[part]
        n = T.make_plain_request(rng, f"n{i}", part=part)
        assert _owner(n.prompt)["topic"] == {part} and _owner(n.prompt)["form"] == {part}, n.prompt
    with pytest.raises(ValueError, match="part must be one of"):
        T.make_instruction_task(rng, "bad", part="test")


def test_held_out_space_has_room_for_fresh_draws_of_every_type():
    """The held-out part is far larger than the sets drawn from it, for every instruction type."""
    rng = random.Random(0)
    seen: dict[str, set[str]] = {iid: set() for iid in T.INSTRUCTIONS}
    for i in range(20000):
        t = T.make_instruction_task(rng, f"x{i}", part="eval")
        for iid in t.instruction_id_list:
            seen[iid].add(t.prompt)
    for iid, prompts in seen.items():
        # the committed held-out sets (200 + 600 extra) use 90-190 prompts of a type; capitals, whose
        # conflicts leave the fewest combinations, have ~380
        assert len(prompts) >= 300, (iid, len(prompts))


def _jsonl(name: str) -> list[dict]:
    return [json.loads(l) for l in (DATA / name).read_text().splitlines() if l.strip()]


@pytest.mark.skipif(not (DATA / "eval_instructions.jsonl").is_file(), reason="toy trio not built")
def test_committed_sets_hold_out_phrasings_and_topics():
    evals = [r["prompt"] for r in _jsonl("eval_instructions.jsonl")]
    if (DATA / "eval_instructions_extra.jsonl").is_file():
        evals += [r["prompt"] for r in _jsonl("eval_instructions_extra.jsonl")]
    calib = [r["prompt"] for r in _jsonl("instruction_calibration.jsonl")]
    calib_notes = [r["prompt"] for r in json.loads((DATA / "reasoning_calibration.json").read_text())
                   if r["source"] != "toy/keyed-sum"]
    assert evals and calib and calib_notes
    for prompts, part in ((evals, "eval"), (calib, "calib"), (calib_notes, "calib")):
        for p in prompts:
            owner = _owner(p)
            assert owner["topic"] == {part} and owner["form"] == {part}, p
            if part != "calib" or p in calib:
                assert owner["phrasing"] == {part}, p
    # the training sets the manifest's spec draws (base corpus, LRM, ITM) hold no held-out or calibration wording
    from rainmerge.toy.build import ToySpec, draw_sets

    spec = json.loads((TOY / "manifest.json").read_text())["spec"]
    sets = draw_sets(ToySpec(**{k: v for k, v in spec.items() if k in ToySpec.__dataclass_fields__}))
    train = {x.prompt for k, v in sets.items() if k.startswith("train") and k != "train_problems" for x in v}
    assert train
    for p in train:
        owner = _owner(p)
        assert owner["topic"] == {"train"} and owner["form"] == {"train"} and owner["phrasing"] <= {"train"}, p
    assert not set(evals) & train and not set(calib) & train and not set(evals) & set(calib)


@pytest.mark.skipif(not (TOY / "manifest.json").is_file(), reason="toy trio not built")
def test_dev_set_uses_calibration_wording_and_no_prompt_of_the_build(tmp_path):
    """The set merge settings are chosen on (`python -m rainmerge.toy devset`) never touches held-out wording or
    topics, and repeats no prompt of any set of the build."""
    from rainmerge.toy.__main__ import main
    from rainmerge.toy.build import ToySpec, draw_sets

    main(["devset", "--toy", str(TOY), "--out", str(tmp_path), "--n", "120", "--problems", "40"])
    rows = [json.loads(l) for l in (tmp_path / "eval_instructions.jsonl").read_text().splitlines()]
    probs = [json.loads(l) for l in (tmp_path / "eval_problems.jsonl").read_text().splitlines()]
    assert len(rows) == 120 and len(probs) == 40
    for r in rows:
        owner = _owner(r["prompt"])
        assert owner == {"phrasing": {"calib"}, "form": {"calib"}, "topic": {"calib"}}, r["prompt"]
    spec = json.loads((TOY / "manifest.json").read_text())["spec"]
    used = {x.prompt for v in draw_sets(ToySpec(**spec)).values() for x in v}
    if (DATA / "eval_instructions_extra.jsonl").is_file():
        used |= {r["prompt"] for r in _jsonl("eval_instructions_extra.jsonl")}
    dev = [r["prompt"] for r in rows + probs]
    assert len(set(dev)) == len(dev) and not set(dev) & used


def test_extra_held_out_sums_are_new_to_the_build_and_its_dev_set_and_count_as_reasoning(tmp_path):
    """`heldout --problems N` (the study's larger reasoning set) repeats no prompt of the build nor of the default
    dev set, and the evaluation reads it as a second reasoning benchmark."""
    import shutil

    from rainmerge.eval.benchmarks import embedded_specs
    from rainmerge.toy.__main__ import main
    from rainmerge.toy.build import DEV_SIZES, ToySpec, dev_sets, draw_sets

    (tmp_path / "data").mkdir()
    shutil.copy(TOY / "manifest.json", tmp_path / "manifest.json")
    main(["heldout", "--toy", str(tmp_path), "--n", "10", "--problems", "150"])
    probs = [json.loads(l) for l in (tmp_path / "data" / "eval_problems_extra.jsonl").read_text().splitlines()]
    assert len(probs) == len({p["prompt"] for p in probs}) == 150
    spec = ToySpec(**json.loads((TOY / "manifest.json").read_text())["spec"])
    used = {x.prompt for v in draw_sets(spec).values() for x in v}
    dev = {x.prompt for v in dev_sets(spec, *DEV_SIZES) for x in v}
    assert not {p["prompt"] for p in probs} & (used | dev)
    kinds = {s.name: s.kind for s in embedded_specs(tmp_path / "data")}
    assert kinds == {"toy_if_extra": "if", "toy_math_extra": "reasoning"}


def test_a_dev_set_larger_than_the_default_avoids_the_extra_held_out_sums(tmp_path):
    """The extra held-out sums avoid the default dev set's 100; a study that asks for more dev sums (v3.3: as many
    as held out) must not draw held-out ones (3-key sums have 729 values, so a blind draw collides)."""
    import shutil

    from rainmerge.toy.__main__ import main

    (tmp_path / "data").mkdir()
    shutil.copy(TOY / "manifest.json", tmp_path / "manifest.json")
    main(["heldout", "--toy", str(tmp_path), "--n", "10", "--problems", "150"])
    main(["devset", "--toy", str(tmp_path), "--out", str(tmp_path / "dev"), "--n", "10", "--problems", "400"])
    read = lambda f: {json.loads(l)["prompt"] for l in f.read_text().splitlines()}  # noqa: E731
    dev, extra = read(tmp_path / "dev" / "eval_problems.jsonl"), read(tmp_path / "data" / "eval_problems_extra.jsonl")
    assert len(dev) == 400 and len(extra) == 150 and not dev & extra


@pytest.mark.parametrize("recipe, changed", [("v2", set()), ("gentle", {"base_tokens", "finetune_lr"}),
                                             ("long-lrm", {"lrm_tokens"})])
def test_the_builder_recipes_differ_from_the_shipped_one_where_documented(recipe, changed):
    """docs/toy-v3.md compares the recipes to the shipped one by the knobs they turn; a recipe that moved
    another knob would make those comparisons wrong."""
    from dataclasses import asdict

    from rainmerge.toy.__main__ import parser, spec_from_args

    shipped = json.loads((TOY / "manifest.json").read_text())["spec"]
    spec = asdict(spec_from_args(parser().parse_args(["build", "--out", "x", "--recipe", recipe])))
    assert {k for k, v in spec.items() if shipped.get(k, v) != v} == changed


def test_a_built_trio_with_a_retired_unset_knob_still_loads_and_a_set_one_is_refused(tmp_path):
    """The v3.2 builds' manifests carry lrm_lr: None, a knob since removed; `heldout`/`devset` must still read
    them (the knob changed nothing), but a build that had set a knob this code lacks cannot be reproduced."""
    from rainmerge.toy.build import _built_spec

    spec = json.loads((TOY / "manifest.json").read_text())["spec"]
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": {**spec, "lrm_lr": None}}))
    assert _built_spec(tmp_path).lrm_tokens == spec["lrm_tokens"]
    (tmp_path / "manifest.json").write_text(json.dumps({"spec": {**spec, "lrm_lr": 2e-3}}))
    with pytest.raises(ValueError, match="lrm_lr"):
        _built_spec(tmp_path)


@pytest.mark.parametrize("argv", [["devset", "--out", "x", "--n", "0"], ["devset", "--out", "x", "--problems", "-1"],
                                  ["heldout", "--n", "0"], ["heldout", "--problems", "-3"]])
def test_set_sizes_below_one_are_refused_before_any_work(argv, capsys):
    """`devset --n 0` used to mean the default 300 (`a.n or 300`); a size that cannot be drawn is a usage error."""
    from rainmerge.toy.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "must be an integer >=" in capsys.readouterr().err
