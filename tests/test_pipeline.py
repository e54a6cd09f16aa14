"""Real ZenML pipeline runs on the committed toy trio, with a throwaway ZenML store and MLflow DB."""

import json
import os
import re
from pathlib import Path

import pytest

from rainmerge.product.pipeline_config import load_pipeline_config as load_config

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "assets" / "toy"
pytestmark = pytest.mark.skipif(not (TOY / "reasoning" / "config.json").is_file(), reason="toy trio not built")
SECRET = "hf_TESTSECRETdoNotLeak0123456789"


def _cfg(name: str, **over):
    base = {"evaluation.limit": 6, "evaluation.device": "cpu", "evaluation.max_new_tokens": 96,
            "tracking.registered_model": name, "tracking.zenml_model": name, "stage1.positions": "tags",
            "device": "cpu"}
    base.update(over)
    return load_config(ROOT / "configs" / "toy.yaml", base)


def _statuses(run_name_prefix: str | None = None):
    from zenml.client import Client

    run = Client().list_pipeline_runs(sort_by="desc:created", size=1).items[0]
    run = Client().get_pipeline_run(run.id)
    return run, {n: str(s.status).split(".")[-1].lower() for n, s in run.steps.items()}


def test_run_registers_challenger_lineage_and_stage2_change_reuses_stage1(capsys):
    from pipelines.run import run_pipeline
    from rainmerge.product import registry
    from rainmerge.cli import main
    from rainmerge.io.lazy import sha256_file

    from pipelines.run import step_output

    d1 = run_pipeline(_cfg("t-cache"))
    run1, st1 = _statuses()
    assert all(s == "completed" for s in st1.values()), st1
    # the load step's look at the trio: every merged module's task-vector overlap against random subspaces
    overlap = step_output(run1, "load_models", "models").overlap
    assert len(overlap["modules"]) == 28 and all(m["random"] > 0 for m in overlap["modules"].values())
    info = registry.lineage("t-cache", d1["version"])
    assert "challenger" in info["aliases"]
    t = info["tags"]
    assert t["calibration.reasoning"] == sha256_file(TOY / "data" / "reasoning_calibration.json")
    assert t["calibration.instruction"] == sha256_file(TOY / "data" / "instruction_calibration.jsonl")
    assert t["zenml.run_id"] == str(run1.id) and t["input.reasoning"] == str(TOY / "reasoning")
    assert t["input.reasoning.weights_sha256"] and t["promotion.decision"] in ("promoted", "rejected")
    assert {s["step"] for s in info["steps"]} >= {"load_models", "collect_features", "merge", "promote"}
    assert json.loads(t["promotion.reasons"]) == d1["reasons"]
    assert Path(info["source"].removeprefix("file://"), "rainmerge_provenance.json").is_file()

    assert main(["lineage", "t-cache", d1["version"]]) == 0
    out = capsys.readouterr().out
    needles = (t["calibration.reasoning"], str(run1.id), t["config_sha256"], *(s["mlflow_run_id"] for s in info["steps"]))
    for needle in needles:
        assert needle in out

    expected = 0 if d1["reasons"] and all(r.startswith("PASS") for r in d1["reasons"]) else 1
    assert main(["promote", "t-cache", d1["version"], "--config", str(ROOT / "configs" / "toy.yaml")]) == expected
    assert main(["promote", "t-cache", d1["version"], "--force"]) == 2  # --force needs --reason
    assert main(["promote", "t-cache", d1["version"], "--force", "--reason", "toy check", "--operator", "ci"]) == 0
    forced = registry.lineage("t-cache", d1["version"])
    assert "champion" in forced["aliases"]
    assert forced["tags"]["promotion.forced"] == "true" and forced["tags"]["promotion.operator"] == "ci"
    assert forced["tags"]["promotion.reason"] == "toy check"
    assert forced["tags"]["promotion.gates_decision"] in ("promoted", "rejected")
    capsys.readouterr()
    assert main(["lineage", "t-cache", "999"]) == 2
    err = capsys.readouterr().err
    assert "has no version 999" in err and "Traceback" not in err

    d2 = run_pipeline(_cfg("t-cache", **{"stage2.rho": 0.25}))
    _, st2 = _statuses()
    for name in ("load_models", "build_calibration_sets", "collect_features", "compute_projectors",
                 "evaluate_reasoning"):
        assert st2[name] == "cached", (name, st2)
    for name in ("score_attention_heads", "merge", "evaluate_merged", "promote"):
        assert st2[name] == "completed", (name, st2)
    # the same run again: the same weights and decision inputs, so no new version (issue 26)
    d3 = run_pipeline(_cfg("t-cache", **{"stage2.rho": 0.25}))
    assert d3["version"] == d2["version"] and d3["linked"] and not d2["linked"]
    assert len(registry._client(None).search_model_versions("name = 't-cache'")) == 2


def test_failed_merge_leaves_no_model_and_rerun_resumes(monkeypatch):
    from pipelines.run import run_pipeline
    from rainmerge.methods.rain import Rain

    real = Rain.merge

    def boom(self, site, *a, **k):
        if site.layer == 2:
            raise RuntimeError("injected failure")
        return real(self, site, *a, **k)

    monkeypatch.setattr(Rain, "merge", boom)
    with pytest.raises(RuntimeError):
        run_pipeline(_cfg("t-fail", **{"stage2.rho": 0.4}))
    run, st = _statuses()
    assert st["merge"] == "failed"
    store = Path(os.environ["RAINMERGE_TEST_STORES"]) / "zenml"
    merge_dirs = [p for p in store.rglob("merge/merged_model/*/*/payload")]
    assert merge_dirs and not any((p / "model").exists() or list(p.glob(".model.tmp-*")) for p in merge_dirs
                                  if str(run.steps["merge"].id) in str(p))
    monkeypatch.setattr(Rain, "merge", real)
    d = run_pipeline(_cfg("t-fail", **{"stage2.rho": 0.4}))
    _, st = _statuses()
    assert st["score_attention_heads"] == "cached" and st["collect_features"] == "cached"
    assert st["merge"] == "completed" and d["version"]


def test_hub_push_token_never_logged(monkeypatch):
    import huggingface_hub

    from pipelines.run import run_pipeline

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token == SECRET))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id))

        def upload_folder(self, repo_id, folder_path, **kw):
            calls.append(("upload_folder", sorted(os.listdir(folder_path))))
            return type("Info", (), {"oid": "abc123"})()

        def create_tag(self, repo_id, tag, **kw):
            calls.append(("create_tag", tag))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    # permissive gates: only a promoted version is published (a rejected one makes no Hub request)
    d = run_pipeline(_cfg("t-hub", method="task_arithmetic", **{
        "hub.enabled": True, "hub.dry_run": False, "hub.repo_id": "acme/toy", "promotion.min_gain_over_lrm": -1.0,
        "promotion.max_truncation_increase": 1.0, "promotion.max_malformed_increase": 1.0,
        "promotion.max_reasoning_drop": 1.0}))
    assert d["promote"] and d["model"] == "t-hub-task_arithmetic"  # a baseline registers under its own name
    assert ("init", True) in calls and ("create_repo", "acme/toy") in calls
    upload = [c for c in calls if c[0] == "upload_folder"][0][1]
    assert "README.md" in upload and "model.safetensors" in upload
    assert [c for c in calls if c[0] == "create_tag"] == [("create_tag", "v1")]
    stores = Path(os.environ["RAINMERGE_TEST_STORES"])
    hits = [str(f) for f in stores.rglob("*") if f.is_file() and SECRET.encode() in f.read_bytes()]
    assert hits == []


def test_strength_sweep_shares_stage1_2_and_the_gates_pick_a_strength():
    from pipelines.run import run_pipeline, step_output
    from rainmerge.product import registry

    loose = {"promotion.min_gain_over_lrm": -1.0, "promotion.max_truncation_increase": 1.0,
             "promotion.max_malformed_increase": 1.0,
             "promotion.max_reasoning_drop": 1.0, "promotion.require_beats_champion": False}
    d = run_pipeline(_cfg("t-sweep", **{"sweep.strengths": [0.25, 1.0], "sweep.baselines": ["task_arithmetic"],
                                        **loose}))
    run, st = _statuses()
    # earlier tests of this session may have cached shared steps (same inputs): done either way
    assert all(s in ("completed", "cached") for s in st.values()), st
    assert {"merge_0", "merge_1", "merge_task_arithmetic_0", "merge_task_arithmetic_1", "select_candidate"} <= set(st)
    assert sum(n.startswith("score_attention_heads") for n in st) == 1  # Stage 2 once for every candidate
    sel = step_output(run, "select_candidate", "selection")
    ms = [step_output(run, f"evaluate_merged_{i}", "metrics") for i in range(2)]
    # the rule, independently: every candidate passes these gates, so the best IF (then lowest L_think) wins
    want = max(range(2), key=lambda i: (ms[i]["if_inst_strict"], ms[i]["if_inst_strict"], -ms[i]["l_think"]))
    assert sel["selected_strength"] == [0.25, 1.0][want]
    info = registry.lineage("t-sweep", d["version"])
    prov = json.loads(Path(info["source"].removeprefix("file://"), "rainmerge_provenance.json").read_text())
    assert prov["config"]["strength"] == sel["selected_strength"]
    # the lineage names the merge that produced the registered weights, and its strength (issue 26)
    step = f"merge_{want}"
    assert info["merge"]["step"] == step and float(info["merge"]["strength"]) == sel["selected_strength"]
    made = [s for s in info["steps"] if s.get("produced_registered_weights")]
    assert [s["zenml_step"] for s in made] == [step], info["steps"]
    assert f"merged by: step {step}" in registry.format_lineage(info)

    run_pipeline(_cfg("t-sweep", **{"sweep.strengths": [0.25, 1.0, 0.5], **loose}))
    _, st = _statuses()
    for name in ("collect_features", "compute_projectors", "score_attention_heads", "merge_0", "merge_1",
                 "evaluate_merged_0", "evaluate_merged_1"):
        assert st[name] == "cached", (name, st)
    assert st["merge_2"] == "completed" and st["select_candidate"] == "completed"


def test_snapshot_for_a_form_carries_the_config_as_its_parameter(capsys):
    from zenml.client import Client

    from rainmerge.cli import main

    assert main(["snapshot", "t-form", "--config", str(ROOT / "configs" / "toy.yaml"), "--set", "stage2.rho=0.3"]) == 0
    out = capsys.readouterr().out  # ZenML may print its own lines first
    sid = re.search(r"^snapshot t-form: (\S+)", out, re.M).group(1)
    params = Client().get_snapshot(sid).pipeline_configuration.parameters
    assert params["config"]["stage2"]["rho"] == 0.3 and params["config"]["method"] == "rain"
