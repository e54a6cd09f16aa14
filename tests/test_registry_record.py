"""The registry's record under re-runs and faults (issues 26 and 28), against the session's throwaway
MLflow store: exact gate inputs, idempotent registration, digests re-hashed by audit/lineage and before
promotion and push, an append-only decision history, recorded alias positions, recorded Hub failures."""

import http.server
import json
import threading
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from rainmerge.cli import main
from rainmerge.errors import RainMergeError
from rainmerge.product import artifacts as A
from rainmerge.product import records, registry
from rainmerge.product.pipeline_config import HubConfig, PromotionGates
from tests.paired import evaluation, stored
from tests.test_promotion import LRM, TOY_CFG, _config, _inputs, _models

X = 94 / 147  # 0.63945578...: rounding it to 6 digits (the old tags) changes a tie into a loss
# as a registered version stores them: scores plus the paired intervals' ci.* values (tests/paired.py)
TIE = stored(evaluation(X, 0.5, n=147), evaluation(0.5, 0.5, n=147))[0]
GOOD = stored(evaluation(0.8, 0.5), evaluation(0.5, 0.5))[0]
BEST = stored(evaluation(0.9, 0.5), evaluation(0.5, 0.5))[0]
BAD = stored(evaluation(0.1, 0.1, malformed=0.5), evaluation(0.5, 0.5))[0]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _merged(tmp_path: Path, weights: bytes, meta: dict | None = None) -> A.DirRef:
    d = tmp_path / f"m-{uuid.uuid4().hex[:6]}" / "model"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(weights)
    (d / "config.json").write_text("{}")
    (d / "rainmerge_provenance.json").write_text(json.dumps({"created_at": uuid.uuid4().hex}))  # differs per run
    return A.make_ref("merged_model", d, meta or {"method": "rain"})


def _toy_gates() -> PromotionGates:
    from rainmerge.product.pipeline_config import load_pipeline_config

    return load_pipeline_config(TOY_CFG).promotion


def _pipeline_promote(tmp_path: Path, name: str, metrics: dict, weights: bytes = b"w1",
                      gates: PromotionGates | None = None, merged: A.DirRef | None = None) -> registry.Decision:
    """The pipeline's promote step body, as the ZenML step calls it."""
    from rainmerge.product.release import promote

    inputs = _inputs(tmp_path / uuid.uuid4().hex[:6])
    merged = merged or _merged(tmp_path, weights)
    return promote(merged, metrics | {"model": "merged"}, LRM | {"model": "reasoning"}, _models(inputs), None,
                   _config(inputs), gates or _toy_gates(), name, tmp_path / f"out-{uuid.uuid4().hex[:6]}", None)


def _tags(name: str, v: str) -> dict:
    return dict(MlflowClient().get_model_version(name, v).tags)


def _decisions(name: str, v: str) -> list[dict]:
    return [e for e in records.history(_tags(name, v)) if e["event"] == "decision"]


def test_tie_is_decided_identically_by_the_pipeline_and_promote(tmp_path, capsys):
    name = _name("t-tie")
    v1 = _pipeline_promote(tmp_path, name, TIE, b"w1").version
    assert registry.champion(name)[0] == v1
    assert registry.tag_metrics(_tags(name, v1))["if_inst_strict"] == X  # exact, not 0.544218
    d2 = _pipeline_promote(tmp_path, name, TIE, b"w2")  # the same score as the champion, other weights
    line = [r for r in d2.reasons if "champion v" in r][0]
    champ = registry.champion(name)[0]
    # promote on a third version with the same score, against the (same-scored) champion
    v3 = _pipeline_promote(tmp_path, name, BAD, b"w3").version
    c = MlflowClient()
    for k, v in registry.metric_tags(TIE, LRM).items():  # re-evaluated: now ties too
        c.set_model_version_tag(name, v3, k, v)
    capsys.readouterr()
    rc = main(["promote", name, v3, "--config", TOY_CFG])
    out = capsys.readouterr().out
    assert (rc == 0) == d2.promote, (d2.reasons, out)
    cli_line = [r.strip() for r in out.splitlines() if f"champion v{champ}" in r][0]
    assert cli_line.split()[0] == line.split()[0]  # PASS/FAIL alike
    assert cli_line.replace(f"v{champ}", "") == line.replace(f"v{v1}", "")  # the same numbers compared


def test_a_second_identical_run_registers_no_new_version(tmp_path, caplog):
    name = _name("t-idem")
    d1 = _pipeline_promote(tmp_path, name, GOOD, b"same")
    d2 = _pipeline_promote(tmp_path, name, GOOD, b"same")  # a new folder (no cache), identical bytes
    assert d2.version == d1.version and d2.linked and not d1.linked
    assert "linked to it, no new version" in caplog.text
    assert [e["event"] for e in records.history(_tags(name, d1.version))][-1] == "linked"
    assert len(_decisions(name, d1.version)) == 1  # no second verdict for the same inputs
    d3 = _pipeline_promote(tmp_path, name, BEST, b"same")  # same weights, other decision inputs
    d4 = _pipeline_promote(tmp_path, name, GOOD, b"other")
    assert len({d1.version, d3.version, d4.version}) == 3
    assert len(MlflowClient().search_model_versions(f"name = '{name}'")) == 3


def test_the_record_holds_digests_config_merge_and_who_when_why(tmp_path, capsys):
    import hashlib

    name = _name("t-rec")
    run = MlflowClient().create_run(MlflowClient().create_experiment(_name("t-rec-exp")), run_name="merge")
    merged = _merged(tmp_path, b"chosen", {"method": "rain", "step": "merge_1", "mlflow_run_id": run.info.run_id,
                                           "strength": 0.75, "candidate": 1})
    d = _pipeline_promote(tmp_path, name, GOOD, merged=merged)
    info = registry.lineage(name, d.version)
    want = hashlib.sha256(b"chosen").hexdigest()
    assert info["weights"]["files"]["model.safetensors"] == want and info["weights"]["status"] == "ok"
    assert "rainmerge_provenance.json" not in info["weights"]["files"]
    assert info["merge"]["step"] == "merge_1" and info["merge"]["mlflow_run_id"] == run.info.run_id
    assert info["config"]["method"] == "rain" and "strength" in info["config"]
    ev = _decisions(name, d.version)[0]
    assert ev["who"].startswith("pipeline") and ev["time"] and ev["reasons"] == d.reasons
    desc = MlflowClient().get_model_version(name, d.version).description
    assert want in desc and "merge_1" in desc and "Decision history" in desc and '"method": "rain"' in desc
    html = next(Path(tmp_path).rglob(f"lineage_{name}_v{d.version}.html")).read_text()
    assert want in html and "merge_1" in html and "Decision history" in html
    assert main(["lineage", name, d.version, "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["weights"]["recorded_sha256"] == records.overall({"config.json": hashlib.sha256(b"{}").hexdigest(),
                                                                "model.safetensors": want})
    assert js["history"][0]["event"] == "registered" and js["history"][-1]["event"] == "decision"


def test_a_flipped_byte_is_flagged_and_blocks_promotion_push_and_reregistration(tmp_path, capsys, monkeypatch):
    name = _name("t-flip")
    merged = _merged(tmp_path, b"0123456789")
    v = _pipeline_promote(tmp_path, name, GOOD, merged=merged).version
    capsys.readouterr()
    assert main(["audit", name]) == 0
    w = merged.path / "model.safetensors"
    w.write_bytes(b"0123456780")  # one byte flipped
    assert main(["audit", name]) == 1
    out = capsys.readouterr().out
    assert "FLAGGED" in out and "model.safetensors" in out and "weights changed" in out
    assert main(["lineage", name, v]) == 0
    assert "FLAG weights changed" in capsys.readouterr().out
    assert main(["promote", name, v, "--config", TOY_CFG]) == 2
    err = capsys.readouterr().err
    assert "promotion blocked" in err and "Traceback" not in err
    assert records.history(_tags(name, v))[-1]["event"] == "blocked"
    with pytest.raises(RainMergeError, match="missing or changed"):  # a re-run over the tampered cache
        _pipeline_promote(tmp_path, name, GOOD, merged=merged)
    assert len(MlflowClient().search_model_versions(f"name = '{name}'")) == 1
    from rainmerge.product.release import push_to_hub

    monkeypatch.setenv("HF_TOKEN", "hf_x")
    inputs = _inputs(tmp_path / "p")
    with pytest.raises(RainMergeError, match="Hub push blocked"):
        push_to_hub(merged, {"promote": True, "model": name, "version": v}, GOOD, LRM, _models(inputs),
                    _config(inputs), HubConfig(enabled=True, dry_run=True, repo_id="acme/x"), tmp_path / "hub", None)


def test_history_keeps_both_verdicts_after_a_reapplied_gate(tmp_path, capsys):
    name = _name("t-hist")
    v = _pipeline_promote(tmp_path, name, BAD, b"bad").version
    assert main(["promote", name, v, "--config", TOY_CFG]) == 1  # the gate again: rejected again
    assert main(["promote", name, v, "--config", TOY_CFG, "--force", "--reason", "ticket 7", "--operator", "bob"]) == 0
    ev = _decisions(name, v)
    assert [e["decision"] for e in ev] == ["rejected", "rejected", "promoted"]
    assert ev[-1]["forced"] and ev[-1]["who"] == "bob" and ev[-1]["why"] == "ticket 7"
    assert ev[0]["who"].startswith("pipeline") and all(e["time"] for e in ev)
    assert _tags(name, v)["promotion.decision"] == "promoted"  # the latest, mirrored
    capsys.readouterr()
    assert main(["lineage", name, v]) == 0
    out = capsys.readouterr().out
    assert out.count("decision rejected") == 2 and "decision promoted (FORCED" in out


def test_a_champion_without_metrics_is_an_error_not_no_champion(tmp_path, capsys):
    name = _name("t-nometric")
    v1 = _pipeline_promote(tmp_path, name, GOOD, b"a").version
    c = MlflowClient()
    for k in [k for k in _tags(name, v1) if k.startswith("metric.")]:
        c.delete_model_version_tag(name, v1, k)
    with pytest.raises(RainMergeError, match=f"champion v{v1} .* has no numeric 'if_inst_strict'"):
        _pipeline_promote(tmp_path, name, BEST, b"b")
    assert registry.champion(name)[0] == v1
    v2 = str(max(int(m.version) for m in c.search_model_versions(f"name = '{name}'")))
    assert records.history(_tags(name, v2))[-1]["event"] == "blocked"
    assert main(["promote", name, v2, "--config", TOY_CFG]) == 2
    err = capsys.readouterr().err
    assert "has no numeric" in err and "Traceback" not in err and "no current champion" not in err
    c.set_model_version_tag(name, v1, "metric.if_inst_strict", "n/a")  # non-numeric: the same clear error
    assert main(["promote", name, v2, "--config", TOY_CFG]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_misspelt_metric_recheck_leaves_nothing_audit_misreads(tmp_path, capsys):
    name = _name("t-typo")
    v1 = _pipeline_promote(tmp_path, name, GOOD, b"a").version
    before = records.history(_tags(name, v1))
    typo = PromotionGates.model_construct(**(PromotionGates().model_dump() | {"metric": "if_inst_strcit"}))
    with pytest.raises(RainMergeError, match="if_inst_strcit"):
        registry.promote_version(name, v1, gates=typo)
    assert records.history(_tags(name, v1)) == before and registry.champion(name)[0] == v1
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(Path(TOY_CFG).read_text() + "\npromotion:\n  metric: if_inst_strcit\n"
                   if "promotion:" not in Path(TOY_CFG).read_text()
                   else Path(TOY_CFG).read_text().replace("metric: if_inst_strict", "metric: if_inst_strcit"))
    capsys.readouterr()
    assert main(["promote", name, v1, "--config", str(cfg)]) == 2
    assert "if_inst_strcit" in capsys.readouterr().err
    # a real re-check that rejects the champion is recorded, keeps it champion, and audit reads it right
    strict = PromotionGates(min_gain_over_lrm=0.9)
    assert not registry.promote_version(name, v1, gates=strict).promote
    assert registry.champion(name)[0] == v1
    capsys.readouterr()
    assert main(["audit", name]) == 0
    out = capsys.readouterr().out
    assert "no flags" in out and "champion was kept" in out


def test_champion_moved_by_hand_onto_an_older_promoted_version_is_flagged(tmp_path, capsys):
    name = _name("t-older")
    v1 = _pipeline_promote(tmp_path, name, GOOD, b"a").version
    v2 = _pipeline_promote(tmp_path, name, BEST, b"b").version
    assert registry.champion(name)[0] == v2
    capsys.readouterr()
    assert main(["audit", name]) == 0
    MlflowClient().set_registered_model_alias(name, "champion", v1)  # v1 was promoted once: looks legitimate
    assert main(["audit", name]) == 1
    out = capsys.readouterr().out
    assert f"'champion' is on v{v1}, but rainmerge recorded it on v{v2}" in out


class _Deny(http.server.BaseHTTPRequestHandler):
    hits: list = []

    def _answer(self):
        _Deny.hits.append((self.command, self.path))
        body = b'{"error": "Invalid credentials in Authorization header"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _answer

    def log_message(self, *a):
        pass


def test_a_401_push_is_recorded_on_the_version_and_not_retried(tmp_path, monkeypatch):
    """A real HTTP server on 127.0.0.1 answering 401, the real HfApi pointed at it."""
    import huggingface_hub
    from huggingface_hub import HfApi

    from rainmerge.product.release import push_to_hub

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Deny)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    _Deny.hits = []

    class LocalHub(HfApi):
        def __init__(self, token=None, **kw):
            super().__init__(endpoint=url, token=token)

    monkeypatch.setattr(huggingface_hub, "HfApi", LocalHub)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # loopback only
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    try:
        name = _name("t-401")
        merged = _merged(tmp_path, b"w")
        d = _pipeline_promote(tmp_path, name, GOOD, merged=merged)
        assert d.promote
        inputs = _inputs(tmp_path / "p")
        from types import SimpleNamespace

        from rainmerge.product import hub

        monkeypatch.setattr(hub, "time", SimpleNamespace(sleep=lambda s: pytest.fail("a 401 was retried")))
        with pytest.raises(RainMergeError, match="401 Unauthorized"):
            push_to_hub(merged, d.as_dict(), GOOD | {"model": "merged"}, LRM | {"model": "reasoning"},
                        _models(inputs), _config(inputs),
                        HubConfig(enabled=True, dry_run=False, repo_id="acme/x", max_retries=3), tmp_path / "hub",
                        None)
    finally:
        srv.shutdown()
    # one attempt (create_repo itself may look the repo up once after its POST fails), no retries
    assert [h for h in _Deny.hits if h[0] == "POST"] == [("POST", "/api/repos/create")], _Deny.hits
    t = _tags(name, d.version)
    assert t["hub.status"] == "push_failed" and "401" in t["hub.error"] and "hf_wrong" not in json.dumps(t)
    assert records.history(t)[-1]["event"] == "push_failed"
    info = registry.audit(name)
    assert any("last Hub push failed" in n for n in info["notes"])


def test_card_paths_with_spaces_keep_only_names(tmp_path):
    from rainmerge.product.hub import model_card

    base = tmp_path / "my models" / "base model"
    inputs = {"base": {"path": str(base), "resolved_dir": str(base), "config_sha256": "1" * 64},
              "instruct": {"path": "acme/itm", "commit": "c" * 40, "resolved_dir": str(tmp_path / "hf cache" / "x")},
              "reasoning": {"path": "acme/lrm", "commit": "d" * 40, "resolved_dir": str(tmp_path / "hf cache" / "y")}}
    cfg = {"method": "rain", "reasoning_calibration": {"path": str(tmp_path / "my data" / "rc.json")},
           "note": f"tokenizer of {tmp_path}/odd dir/sub folder/tok differs"}
    card = model_card(cfg, inputs, [{"model": "merged", "if_inst_strict": 0.5}], "1")
    for folder in ("my models", "my data", "odd dir", "sub folder", "hf cache", str(tmp_path)):
        assert folder not in card, folder
    assert "local:base model" in card and "local:rc.json" in card
