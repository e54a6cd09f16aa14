"""Promotion, publishing and crash hygiene against the session's throwaway MLflow store (no pipelines)."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from rainmerge.config import MergeConfig
from rainmerge.product import registry
from rainmerge.product.pipeline_config import HubConfig, PromotionGates
from tests.paired import evaluation, stored

ROOT = Path(__file__).resolve().parents[1]
TOY_CFG = str(ROOT / "configs" / "toy.yaml")
# metrics as a registered version stores them: scores plus the paired intervals' ci.* values
GOOD, LRM = stored(evaluation(0.8, 0.5), evaluation(0.5, 0.5))
BAD, _ = stored(evaluation(0.1, 0.1, malformed=0.5), evaluation(0.5, 0.5))


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _metric_tags(merged, lrm):
    return {**{f"metric.{k}": str(v) for k, v in merged.items()}, **{f"lrm_metric.{k}": str(v) for k, v in lrm.items()}}


def _model_folder(tmp_path: Path, inputs: dict, calib_path: str) -> Path:
    d = tmp_path / "registered" / "model"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"weights")
    (d / "config.json").write_text("{}")
    prov = {"inputs": inputs, "calibration": {"reasoning": {"path": calib_path, "sha256": "ab" * 32}},
            "config": {"base": {"path": inputs["base"]["path"]}, "output": str(tmp_path / "out"),
                       "cache_dir": str(tmp_path / "cache")},
            "warnings": [f"tokenizer of {inputs['instruct']['resolved_dir']} differs"]}
    (d / "rainmerge_provenance.json").write_text(json.dumps(prov))
    return d


def _inputs(tmp_path: Path) -> dict:
    base = tmp_path / "toy" / "base"
    instruct = tmp_path / "toy" / "instruct"
    for p in (base, instruct):
        p.mkdir(parents=True)
    snap = tmp_path / "hf-cache" / "models--acme--lrm" / "snapshots" / "c0ffee"
    snap.mkdir(parents=True)
    return {"base": {"path": str(base), "revision": None, "commit": None, "resolved_dir": str(base),
                     "config_sha256": "1" * 64, "weights_sha256": {"model.safetensors": "2" * 64}},
            "instruct": {"path": str(instruct), "revision": None, "commit": None, "resolved_dir": str(instruct),
                         "config_sha256": "3" * 64},
            "reasoning": {"path": "acme/lrm", "revision": "main", "commit": "c0ffee", "resolved_dir": str(snap),
                          "config_sha256": "4" * 64}}


def _models(inputs: dict):
    """What the load step hands the later steps, for these inputs."""
    from rainmerge.product.artifacts import LoadedModels

    return LoadedModels(inputs={r: {"role": r, **d} for r, d in inputs.items()}, arch={}, layers=[], modules=[])


def _config(inputs: dict) -> MergeConfig:
    return MergeConfig(base={"path": inputs["base"]["path"]}, instruct={"path": inputs["instruct"]["path"]},
                      reasoning={"path": inputs["reasoning"]["path"]}, method="rain",
                      reasoning_calibration={"path": str(Path(inputs["base"]["path"]).parent / "rc.json")},
                      instruction_calibration={"path": str(Path(inputs["base"]["path"]).parent / "ic.jsonl")})


class FakeApi:
    calls: list = []

    def __init__(self, token=None):
        FakeApi.calls.append(("init",))

    def create_repo(self, repo_id, **kw):
        FakeApi.calls.append(("create_repo", repo_id))

    def upload_folder(self, repo_id, folder_path, **kw):
        FakeApi.calls.append(("upload_folder", folder_path))
        return type("Info", (), {"oid": "abc123"})()

    def create_tag(self, repo_id, tag, **kw):
        FakeApi.calls.append(("create_tag", tag))


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    return FakeApi.calls


def _push(tmp_path, name, version, decision_promote, dry_run=False):
    from rainmerge.product import artifacts as A
    from rainmerge.product.step_bodies import push_to_hub

    inputs = _inputs(tmp_path)
    folder = _model_folder(tmp_path, inputs, str(tmp_path / "data" / "reasoning_calibration.json"))
    merged = A.make_ref("merged_model", folder)
    decision = {"promote": decision_promote, "version": version, "model": name}
    hub_cfg = HubConfig(enabled=True, dry_run=dry_run, repo_id="acme/merged")
    res = push_to_hub(merged, decision, GOOD | {"model": "merged"}, LRM | {"model": "reasoning"}, _models(inputs), _config(inputs), hub_cfg,
                      tmp_path / "hub", None)
    return res, folder, inputs


def test_rejected_version_makes_no_hub_request(tmp_path, fake_hub):
    name = _name("t-hub-rej")
    v = registry.register(name, str(tmp_path), None, _metric_tags(BAD, LRM))
    d = registry.promote_version(name, v, BAD, LRM, PromotionGates())
    assert not d.promote
    res, _, _ = _push(tmp_path, name, v, decision_promote=False)
    assert res["status"] == "skipped" and "rejected" in res["reason"]
    assert fake_hub == []
    # the decision payload says promoted but the registry tag does not: still no request
    res, _, _ = _push(tmp_path / "again", name, v, decision_promote=True)
    assert res["status"] == "skipped" and "promotion.decision" in res["reason"]
    assert fake_hub == []


def test_promoted_version_is_pushed(tmp_path, fake_hub):
    name = _name("t-hub-ok")
    v = registry.register(name, str(tmp_path), None, _metric_tags(GOOD, LRM))
    assert registry.promote_version(name, v, GOOD, LRM, PromotionGates()).promote
    res, _, _ = _push(tmp_path, name, v, decision_promote=True)
    assert res["status"] == "pushed" and ("create_repo", "acme/merged") in fake_hub


def test_staged_card_and_provenance_have_no_absolute_paths(tmp_path):
    name = _name("t-card")
    v = registry.register(name, str(tmp_path), None, _metric_tags(GOOD, LRM))
    registry.promote_version(name, v, GOOD, LRM, PromotionGates())
    res, folder, inputs = _push(tmp_path, name, v, decision_promote=True, dry_run=True)
    original = (folder / "rainmerge_provenance.json").read_text()
    assert res["status"] == "dry_run"
    staged = Path(res["folder"])
    card = (staged / "README.md").read_text()
    prov = (staged / "rainmerge_provenance.json").read_text()
    machine = [str(tmp_path), str(Path.home()), "/tmp/"]
    for text in (card, prov):
        for p in machine:
            assert p not in text, (p, text[:2000])
        assert not re.search(r"(?<![\w:/.~-])/(tmp|home|root|work|Users|var)/", text), text[:2000]
    assert "local:base (sha256 " in card and "local:instruct (sha256 " in card
    assert "acme/lrm" in card and "c0ffee" in card
    meta = card.split("---")[1]
    assert "base_model:\n- acme/lrm" in meta and "local:" not in meta
    p = json.loads(prov)
    assert p["inputs"]["base"]["path"].startswith("local:base")
    assert p["calibration"]["reasoning"]["path"] == "local:reasoning_calibration.json"
    # the registered folder itself is untouched
    assert (folder / "rainmerge_provenance.json").read_text() == original
    assert str(tmp_path) in original and not (folder / "README.md").exists()


def test_concurrent_promotions_are_compared_with_each_other(monkeypatch):
    name = _name("t-cas")
    v1 = registry.register(name, "/x/1", None, _metric_tags(GOOD, LRM))
    v2 = registry.register(name, "/x/2", None, _metric_tags(GOOD, LRM))
    real = registry.decide

    def slow_decide(*a, **k):  # widen the window between reading the champion and moving the alias
        d = real(*a, **k)
        time.sleep(0.4)
        return d

    monkeypatch.setattr(registry, "decide", slow_decide)
    out: dict[str, registry.Decision] = {}
    barrier = threading.Barrier(2)

    def go(v):
        barrier.wait()
        out[v] = registry.promote_version(name, v, GOOD, LRM, PromotionGates())

    ts = [threading.Thread(target=go, args=(v,)) for v in (v1, v2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    reasons = {v: " ".join(d.reasons) for v, d in out.items()}
    first = [v for v, r in reasons.items() if "no current champion" in r]
    assert len(first) == 1, reasons
    second = ({v1, v2} - set(first)).pop()
    assert f"champion v{first[0]}" in reasons[second], reasons
    assert out[second].previous_champion == first[0]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_runs_of_a_killed_process_are_marked_failed():
    from mlflow import MlflowClient

    from rainmerge.product import hygiene, tracking

    tracking.experiment("t-hygiene")
    c = MlflowClient()
    exp = c.get_experiment_by_name("t-hygiene").experiment_id
    zid = str(uuid.uuid4())
    host = socket.gethostname()
    dead = c.create_run(exp, tags={hygiene.PID_TAG: str(_dead_pid()), hygiene.HOST_TAG: host,
                                   "zenml.run_id": zid, "rainmerge.level": "pipeline"})
    alive = c.create_run(exp, tags={hygiene.PID_TAG: str(os.getppid()), hygiene.HOST_TAG: host})
    other_host = c.create_run(exp, tags={hygiene.PID_TAG: str(_dead_pid()), hygiene.HOST_TAG: "elsewhere"})
    counts = hygiene.mark_dead_runs()
    assert counts["mlflow"] >= 1
    r = c.get_run(dead.info.run_id)
    assert r.info.status == "FAILED" and r.data.tags[hygiene.CLEANUP_TAG] == "process died"
    assert c.get_run(alive.info.run_id).info.status == "RUNNING"
    assert c.get_run(other_host.info.run_id).info.status == "RUNNING"
    assert hygiene.mark_dead_runs()["mlflow"] == 0  # idempotent


def test_forced_promotion_keeps_gates_verdict_operator_and_reason(capsys):
    from rainmerge.cli import main

    name = _name("t-force")
    v = registry.register(name, "/x/1", None, _metric_tags(BAD, LRM))
    assert main(["promote", name, v, "--config", TOY_CFG]) == 1
    assert main(["promote", name, v, "--config", TOY_CFG, "--force", "--reason", "hotfix for ticket 42",
                 "--operator", "alice"]) == 0
    info = registry.lineage(name, v)
    t = info["tags"]
    assert "champion" in info["aliases"]
    assert t["promotion.decision"] == "promoted" and t["promotion.gates_decision"] == "rejected"
    assert t["promotion.forced"] == "true" and t["promotion.operator"] == "alice"
    assert t["promotion.reason"] == "hotfix for ticket 42" and t["promotion.time"].endswith("+00:00")
    assert "FORCED by operator" not in t["promotion.reasons"]
    assert any(r.startswith("FAIL") for r in json.loads(t["promotion.reasons"]))
    capsys.readouterr()
    assert main(["audit", name]) == 0
    assert "alice" in capsys.readouterr().out


def test_force_without_reason_exits_2(capsys):
    from rainmerge.cli import main

    name = _name("t-noreason")
    v = registry.register(name, "/x/1", None, _metric_tags(BAD, LRM))
    assert main(["promote", name, v, "--config", TOY_CFG, "--force"]) == 2
    assert "--reason" in capsys.readouterr().err
    assert "promotion.decision" not in registry.lineage(name, v)["tags"]


def test_baseline_never_moves_the_rain_challenger():
    from rainmerge.methods import METHODS

    name = _name("t-rain")
    assert registry.registered_name(name, "rain") == name
    baselines = [m for m, info in METHODS.items() if not info.needs_stages]
    assert baselines
    rain_v = registry.register(registry.registered_name(name, "rain"), "/x/rain", None, {})
    for m in baselines:
        bname = registry.registered_name(name, m)
        assert bname == f"{name}-{m}"
        registry.register(bname, f"/x/{m}", None, {})
    assert "challenger" in registry.lineage(name, rain_v)["aliases"]


def test_alias_moved_outside_rainmerge_is_flagged(capsys):
    from mlflow import MlflowClient

    from rainmerge.cli import main

    name = _name("t-audit")
    v1 = registry.register(name, "/x/1", None, _metric_tags(GOOD, LRM))
    registry.promote_version(name, v1, GOOD, LRM, PromotionGates())
    v2 = registry.register(name, "/x/2", None, _metric_tags(BAD, LRM))
    assert main(["audit", name]) == 0
    capsys.readouterr()
    MlflowClient().set_registered_model_alias(name, "champion", v2)  # e.g. the MLflow UI
    assert main(["audit", name]) == 1
    out = capsys.readouterr().out
    assert f"is on v{v2}" in out and "FLAG" in out and f"recorded it on v{v1}" in out
    assert main(["lineage", name, v2]) == 0
    assert "FLAG" in capsys.readouterr().out
    assert main(["lineage", name, v1]) == 0  # v1 is involved too: rainmerge had put champion there
    assert f"recorded it on v{v1}" in capsys.readouterr().out
