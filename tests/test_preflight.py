"""`rainmerge plan`: every check from metadata only, on local trios, broken trios and (faked) Hub ids."""

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from rainmerge.errors import CorruptInputError
from rainmerge.io.lazy import read_header
from rainmerge.preflight import build_plan, run_plan
from tests.tiny import OLD_TEMPLATE, build_tokenizer, trio_config


def _plan(cfg, api=None):
    buf = io.StringIO()
    code = run_plan(cfg, api=api, out=buf)
    return code, buf.getvalue()


def test_plan_on_a_local_trio_reports_everything_and_exits_0(trio_factory, calib, tmp_path):
    trio = trio_factory()
    cfg = trio_config(trio, calib, tmp_path / "merged")
    code, text = _plan(cfg)
    assert code == 0, text
    rep = build_plan(cfg)
    assert rep.ok and not rep.problems
    json.loads(rep.to_json())  # pure data
    # architecture and every merged tensor's shape
    assert rep.arch["model_type"] == "qwen2" and rep.layers == [0, 1]
    assert {m.module for m in rep.module_shapes} == {"q", "k", "v", "o", "gate", "up", "down"}
    assert all(s == "ok" for m in rep.module_shapes for s in m.status.values())
    q = next(m for m in rep.module_shapes if m.module == "k")
    assert q.expected == [2 * 16, 64] and q.checked == 2
    # think tokens and the template's pre-fill
    assert [t.tag for t in rep.think_tokens] == ["<think>", "</think>"]
    assert all(t.single_token and t.added and t.within_embedding for t in rep.think_tokens)
    assert rep.template.prefill == "template" and rep.template.think_open_token_at is not None
    # rows vs width: exact count from the local calibration file (tags: 2 rows x 4 samples)
    cal = {c.role: c for c in rep.calibration}
    assert cal["reasoning_calibration"].exact and cal["reasoning_calibration"].kept == 4
    assert cal["reasoning_calibration"].rows == 8 and cal["instruction_calibration"].kept == 3
    rw = {r.group: r for r in rep.rows_vs_width}
    assert set(rw) == {"attn_in", "o_in", "mlp_in", "down_in"}
    # o_proj is projected over its full input (heads x head_dim), like the merge does
    assert rw["attn_in"].width == 64 and rw["o_in"].width == 64 and rw["down_in"].width == 96
    assert not any(r.cap_binds for r in rep.rows_vs_width)
    assert rw["attn_in"].kept_norm == pytest.approx((1 - 8 / 64) ** 0.5, abs=1e-3)
    # the plan's row count is what the merge will use
    from rainmerge.context import open_models
    from rainmerge.stages import encode_calibration

    sets = encode_calibration(open_models(cfg.models_spec(), cfg.runtime()), cfg.calibration_spec())
    assert sum(len(s.positions) for s in sets.reasoning) == cal["reasoning_calibration"].rows
    # resources and lineage (local inputs: weight digests, not None)
    res = rep.resources
    assert res.download_bytes == 0 and res.disk_output_bytes == rep.inputs["reasoning"].weight_bytes > 0
    assert res.host_ram_bytes > 0 and res.disk_temp_bytes > 0
    for role, entry in rep.lineage.inputs.items():
        digests = entry["weights_sha256"]
        assert digests and all(v and len(v) == 64 for v in digests.values()), role
    want = hashlib.sha256((trio["reasoning"] / "model.safetensors").read_bytes()).hexdigest()
    assert rep.lineage.inputs["reasoning"]["weights_sha256"]["model.safetensors"] == want
    for needle in ("protected rows vs input width", "think tokens", "model.layers.{L}.mlp.down_proj.weight",
                   "resources", "host RAM", "lineage", "OK"):
        assert needle in text, needle
    # a second plan of the same folders is cheap: digests are memoised
    assert build_plan(cfg).lineage.inputs == rep.lineage.inputs


def test_window_rows_that_reach_the_width_are_flagged(trio_factory, calib, tmp_path):
    # the per-head o_proj option projects each head's 16-wide slice: 48 rows bind its cap
    cfg = trio_config(trio_factory(), calib, tmp_path / "m", **{"stage1.positions": "window", "stage1.radius": 5,
                                                         "stage1.o_proj": "per_head"})
    rep = build_plan(cfg)
    assert rep.ok  # a warning, not a failure
    rw = {r.group: r for r in rep.rows_vs_width}
    # 4 short samples: <think>+5 and </think>-5 windows, 12 rows each
    assert rep.calibration[0].rows == 48 and rw["o_in"].cap_binds and rw["o_in"].removed == int(0.9 * 16)
    assert rw["o_in"].width == 16 and rw["o_in"].bases_per_layer == 4
    assert not rw["down_in"].cap_binds
    assert any("rank cap binds: identity not exact for o_in" in w for w in rep.warnings)
    # the default (full-width o_proj) keeps the identity exact with the same rows
    rep = build_plan(trio_config(trio_factory(), calib, tmp_path / "m2", **{"stage1.positions": "window",
                                                                      "stage1.radius": 5}))
    assert not any(r.cap_binds for r in rep.rows_vs_width)


def _broken_trio(trio, tmp_path):
    root = tmp_path / "broken"
    for role in ("base", "instruct", "reasoning"):
        shutil.copytree(trio[role], root / role)
    # instruct: one merged tensor with the wrong shape
    f = root / "instruct" / "model.safetensors"
    sd = load_file(f)
    sd["model.layers.1.mlp.up_proj.weight"] = sd["model.layers.1.mlp.up_proj.weight"][:80].clone()
    save_file(sd, f, metadata={"format": "pt"})
    # reasoning: a tokenizer without <think> and an old template without the pre-fill
    from rainmerge.synthetic import SPECIALS

    for p in (root / "reasoning").glob("*token*"):
        p.unlink()
    (root / "reasoning" / "chat_template.jinja").unlink(missing_ok=True)
    build_tokenizer(root / "reasoning", OLD_TEMPLATE, [s for s in SPECIALS if s != "<think>"])
    # base: a corrupt shard header (length field points past the end of the file)
    f = root / "base" / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[:8] = (10**12).to_bytes(8, "little")
    f.write_bytes(bytes(raw))
    return {r: root / r for r in ("base", "instruct", "reasoning")}


def test_plan_on_a_broken_trio_exits_2_naming_each_problem(trio_factory, calib, tmp_path):
    broken = _broken_trio(trio_factory(), tmp_path)
    cfg = trio_config(broken, calib, tmp_path / "merged")
    code, text = _plan(cfg)
    assert code == 2
    rep = build_plan(cfg)
    codes = {(p.code, p.role) for p in rep.problems}
    assert ("shape_mismatch", "instruct") in codes
    assert ("corrupt_header", "base") in codes
    assert ("think_token_missing", "reasoning") in codes
    assert ("template_no_prefill", "reasoning") in codes
    for needle in ("model.layers.1.mlp.up_proj.weight has shape (80, 64), expected (96, 64)",
                   "shard model.safetensors is truncated or corrupt", "'<think>' is not a single token", "template without pre-fill",
                   "WOULD FAIL"):
        assert needle in text, needle
    up = next(m for m in rep.module_shapes if m.module == "up")
    assert up.status["instruct"] == "1 bad" and up.status["reasoning"] == "ok"


def test_old_template_is_accepted_with_append_think_prefix(trio_factory, calib, tmp_path):
    trio = trio_factory()
    lrm = tmp_path / "lrm"
    shutil.copytree(trio["reasoning"], lrm)
    (lrm / "chat_template.jinja").write_text(OLD_TEMPLATE)
    cfg = trio_config({**trio, "reasoning": lrm}, calib, tmp_path / "m")
    rep = build_plan(cfg)
    assert [p.code for p in rep.problems] == ["template_no_prefill"]
    rep = build_plan(cfg.model_copy(update={"append_think_prefix": True}))
    assert rep.ok and rep.template.prefill == "appended" and rep.calibration[0].kept == 4


def test_output_and_layers_and_family_problems(trio_factory, calib, tmp_path):
    trio = trio_factory()
    out = tmp_path / "exists"
    out.mkdir()
    rep = build_plan(trio_config(trio, calib, out, layers=[0, 5]))
    assert {p.code for p in rep.problems} == {"output", "layers_out_of_range"}
    rep = build_plan(trio_config(trio, calib, tmp_path / "m", instruct=str(trio_factory("llama")["instruct"])))
    assert any(p.code == "arch_mismatch" and "family" in p.message for p in rep.problems)


def test_plan_and_merge_start_share_the_dtype_check(trio_factory, calib, tmp_path):
    # a bf16 ITM over an f32 base: `rainmerge plan` warns from the headers exactly what the merge start's
    # run-time preflight warns on the opened models (one check function, rainmerge.preflight.checks)
    from rainmerge.arch import arch_from_config
    from rainmerge.io.lazy import ModelSource
    from rainmerge.merge import merge_sites
    from rainmerge.preflight.merge_start import preflight

    trio = trio_factory()
    itm = tmp_path / "itm"
    shutil.copytree(trio["instruct"], itm)
    sd = {k: v.to(torch.bfloat16) for k, v in load_file(itm / "model.safetensors").items()}
    save_file(sd, itm / "model.safetensors", metadata={"format": "pt"})
    cfg = trio_config({**trio, "instruct": itm}, calib, tmp_path / "m")
    rep = build_plan(cfg)
    assert rep.ok  # a warning, not a failure
    dtype = [w for w in rep.warnings if "merged tensor(s) are" in w]
    assert len(dtype) == 1 and dtype[0].startswith("instruct: 14 merged tensor(s) are BF16 while the base's are F32")
    srcs = {r: ModelSource(getattr(cfg, r), r) for r in ("base", "instruct", "reasoning")}
    arch = arch_from_config(srcs["reasoning"].config, "reasoning")
    assert preflight(srcs, list(merge_sites(arch, rep.layers, rep.modules)), tmp_path / "o") == dtype  # its call
    assert not [w for w in build_plan(trio_config(trio, calib, tmp_path / "m")).warnings if "merged tensor" in w]


def test_merge_start_warns_a_dtype_difference_once(trio_factory, calib, tmp_path, caplog):
    # check_plan logs the plan's dtype warning; the run-time preflight finds the same one and keeps it in
    # the provenance without logging it again
    from rainmerge.stages import run_merge

    trio = trio_factory()
    itm = tmp_path / "itm"
    shutil.copytree(trio["instruct"], itm)
    sd = {k: v.to(torch.bfloat16) for k, v in load_file(itm / "model.safetensors").items()}
    save_file(sd, itm / "model.safetensors", metadata={"format": "pt"})
    out = run_merge(trio_config({**trio, "instruct": itm}, calib, tmp_path / "m", method="task_arithmetic"),
                    progress=False)
    logged = [r.getMessage() for r in caplog.records if "merged tensor(s) are BF16" in r.getMessage()]
    # (caplog may hold a record twice: the conftest hands rainmerge's records over and root propagates)
    assert logged and set(logged) == {logged[0]} and logged[0].startswith("plan: instruct: 14 merged tensor(s)")
    prov = json.loads(next(out.glob("*provenance*.json")).read_text())
    assert any("merged tensor(s) are BF16" in w for w in prov["warnings"])


def test_header_reader_catches_truncation(tmp_path):
    f = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(4, 4), "b": torch.ones(3)}, f)
    tensors = {n: (shape, dt) for n, (dt, shape, _, _) in read_header(f).items()}
    assert tensors == {"a": ((4, 4), "F32"), "b": ((3,), "F32")}
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(CorruptInputError, match="truncated or corrupt"):
        read_header(f)
    f.write_bytes(b"\x05\x00")
    with pytest.raises(CorruptInputError, match="too small"):
        read_header(f)


def test_lineage_caveat_from_the_lrm_card(trio_factory, calib, tmp_path):
    trio = trio_factory()
    root = tmp_path / "t"
    for role in ("base", "reasoning"):
        shutil.copytree(trio[role], root / role)
    c = json.loads((root / "base" / "config.json").read_text())
    c["_name_or_path"] = "Qwen/Qwen2.5-7B"
    (root / "base" / "config.json").write_text(json.dumps(c))
    (root / "reasoning" / "README.md").write_text("---\nbase_model: Qwen/Qwen2.5-Math-7B\nlicense: mit\n---\n# LRM\n")
    rep = build_plan(trio_config({"base": root / "base", "instruct": trio["instruct"], "reasoning": root / "reasoning"},
                          calib, tmp_path / "m"))
    assert rep.ok  # a warning, not a failure
    assert rep.lineage.lrm_declared_base == ["Qwen/Qwen2.5-Math-7B"] and rep.lineage.configured_base == "Qwen/Qwen2.5-7B"
    assert rep.lineage.caveat and any("descends from Qwen/Qwen2.5-Math-7B" in w for w in rep.warnings)


# -------------------------------------------------------------------------------------------------
# Hub ids: a fake HfApi serves local folders and records every call


class FakeHfApi:
    """model_info / get_safetensors_metadata / hf_hub_download over local folders; records calls."""

    def __init__(self, repos: dict[str, Path], cache: Path, card: dict | None = None, corrupt: set[str] = ()):
        self.repos, self.cache, self.card, self.corrupt = repos, cache, card or {}, set(corrupt)
        self.calls: list[tuple[str, str, str | None]] = []

    def _sha(self, repo):
        return hashlib.sha1(repo.encode()).hexdigest()

    def model_info(self, repo_id, revision=None, files_metadata=False, **_):
        self.calls.append(("model_info", repo_id, revision))
        root = self.repos[repo_id]
        sib = []
        for f in sorted(root.iterdir()):
            lfs = {"sha256": hashlib.sha256(f.read_bytes()).hexdigest()} if f.suffix == ".safetensors" else None
            sib.append(SimpleNamespace(rfilename=f.name, size=f.stat().st_size, lfs=lfs))
        return SimpleNamespace(sha=self._sha(repo_id), siblings=sib, card_data=self.card.get(repo_id))

    def get_safetensors_metadata(self, repo_id, revision=None, **_):
        from huggingface_hub.utils import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

        self.calls.append(("get_safetensors_metadata", repo_id, revision))
        if repo_id in self.corrupt:
            from huggingface_hub.errors import SafetensorsParsingError

            raise SafetensorsParsingError(f"Failed to parse safetensors header for 'model.safetensors' ({repo_id})")
        files, wm = {}, {}
        for f in sorted(self.repos[repo_id].glob("*.safetensors")):
            tensors = read_header(f)
            files[f.name] = SafetensorsFileMetadata(metadata={}, tensors={
                n: TensorInfo(dtype=dt, shape=list(s), data_offsets=(0, 0)) for n, (dt, s, _, _) in tensors.items()})
            wm.update({n: f.name for n in tensors})
        return SafetensorsRepoMetadata(metadata=None, sharded=False, weight_map=wm, files_metadata=files)

    def hf_hub_download(self, repo_id, filename, revision=None, **_):
        self.calls.append(("hf_hub_download", repo_id, filename))
        src = self.repos[repo_id] / filename
        if not src.is_file():
            raise FileNotFoundError(filename)
        dst = self.cache / repo_id / (revision or "main") / filename
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        return str(dst)


def test_plan_on_hub_ids_reads_only_metadata(trio_factory, calib, tmp_path):
    trio = trio_factory()
    repos = {"acme/base": trio["base"], "acme/instruct": trio["instruct"], "acme/lrm": trio["reasoning"]}
    api = FakeHfApi(repos, tmp_path / "fetched", card={"acme/lrm": {"base_model": "acme/math-base"}})
    cfg = trio_config({"base": "acme/base", "instruct": "acme/instruct", "reasoning": "acme/lrm"}, calib,
               tmp_path / "merged")
    cfg = cfg.model_copy(update={"base": cfg.base.model_copy(update={"revision": "main"})})
    code, text = _plan(cfg, api)
    assert code == 0, text
    downloads = [c[2] for c in api.calls if c[0] == "hf_hub_download"]
    assert downloads and not [f for f in downloads if f.endswith((".safetensors", ".bin"))], downloads
    assert "config.json" in downloads and "tokenizer.json" in downloads
    assert {c[1] for c in api.calls if c[0] == "get_safetensors_metadata"} == set(repos)
    rep = build_plan(cfg, api)
    for role, repo in (("base", "acme/base"), ("instruct", "acme/instruct"), ("reasoning", "acme/lrm")):
        r = rep.inputs[role]
        assert r.source == "hub" and r.commit == api._sha(repo)
        assert all(w.sha256_source == "hub-lfs" and len(w.sha256) == 64 for w in r.weight_files)
        # nothing is in the HF cache: a merge would download every weight and small file
        assert r.download_bytes == sum(f.stat().st_size for f in repos[repo].iterdir())
    assert rep.resources.download_bytes == sum(r.download_bytes for r in rep.inputs.values())
    assert all(s == "ok" for m in rep.module_shapes for s in m.status.values())
    assert rep.think_tokens[0].single_token and rep.template.prefill == "template"
    assert rep.lineage.caveat and "acme/math-base" in rep.lineage.caveat
    assert rep.lineage.inputs["reasoning"]["commit"] == api._sha("acme/lrm")
    # everything after model_info is read at the resolved commit, not at a moving branch
    assert {c[2] for c in api.calls if c[0] == "get_safetensors_metadata"} == {api._sha(r) for r in repos}


def test_plan_on_hub_ids_with_a_corrupt_header_exits_2(trio_factory, calib, tmp_path):
    trio = trio_factory()
    repos = {"acme/base": trio["base"], "acme/instruct": trio["instruct"], "acme/lrm": trio["reasoning"]}
    api = FakeHfApi(repos, tmp_path / "fetched", corrupt={"acme/instruct"})
    cfg = trio_config({"base": "acme/base", "instruct": "acme/instruct", "reasoning": "acme/lrm"}, calib, tmp_path / "m")
    code, text = _plan(cfg, api)
    assert code == 2 and "corrupt_header" in text and "Failed to parse safetensors header" in text
    assert not [c for c in api.calls if c[0] == "hf_hub_download" and c[2].endswith(".safetensors")]


def test_offline_hub_id_uses_the_cache_or_fails_clearly(trio_factory, calib, tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-lrm"
    shutil.copytree(trio_factory()["reasoning"], repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trio = trio_factory()
    rep = build_plan(trio_config({**trio, "reasoning": "acme/tiny-lrm"}, calib, tmp_path / "m"))
    assert rep.ok, rep.problems
    assert rep.inputs["reasoning"].source == "hub-cache" and rep.inputs["reasoning"].commit == sha
    rep = build_plan(trio_config({**trio, "base": "acme/not-cached"}, calib, tmp_path / "m"))
    assert [p.code for p in rep.problems] == ["hub_error"] and "not in the local HF cache" in rep.problems[0].message


def test_preflight_imports_no_orchestration():
    code = ("import sys, rainmerge.preflight; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('zenml', 'mlflow', 'kfp')]; assert not bad, bad")
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={"PYTHONPATH": str(root),
                                                                           "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin"})
