"""The layer-sequential Stages 1-2 (rainmerge/sequential.py) against the whole-model path (stages.py), on
tiny Qwen2 (GQA + q/k/v biases) and Llama trios, with hidden states on the host and spilled to disk.

Tolerance (float32 forwards on the CPU): features, alpha and merged weights agree to rtol 1e-5 / atol 1e-6
of their scale; projector bases are compared as projectors (V_k diag(shrink) V_k^T; singular vectors
are only defined up to sign)."""

from __future__ import annotations

import pytest
import torch

from rainmerge import stages
from rainmerge.context import load_reasoning_model, open_models
from rainmerge.io.spill import HiddenStates, choose_placement
from rainmerge.sequential import run_sequential
from tests.tiny import trio_config

RTOL, ATOL = 1e-5, 1e-6


def _projector(b) -> torch.Tensor:
    Vk = b.V[:, : b.k].double()
    return Vk @ torch.diag(b.shrink().double()) @ Vk.T


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    scale = float(b.abs().max()) or 1.0
    assert torch.allclose(a.double(), b.double(), rtol=RTOL, atol=ATOL * scale), \
        f"{what}: max |diff| {float((a.double() - b.double()).abs().max()):.3g} (scale {scale:.3g})"


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def both_paths(request, trio_factory, calib, tmp_path_factory):
    """(ctx, whole-model results, {placement: sequential results}) on a 3-layer trio; layers 1 and 2 merged,
    so layer 0 runs unmerged in every stream and the merged layers read merged inputs in Stage 2."""
    arch = request.param
    trio = trio_factory(arch, num_hidden_layers=3)
    tmp = tmp_path_factory.mktemp(f"seq_{arch}")
    estimator = "two_pass" if arch == "qwen2" else "paper"  # both estimators, one per architecture
    cfg = trio_config(trio, calib, tmp / "out", layers=[1, 2], **{"stage2.estimator": estimator,
                                                                   "stage1.positions": "window",
                                                                   "stage1.radius": 1})
    ctx = open_models(cfg.models_spec(), cfg.runtime())
    cal = stages.encode_calibration(ctx, cfg.calibration_spec())
    model = load_reasoning_model(ctx)
    feats = stages.stage1_features(ctx, model, cal.reasoning, progress=False)
    whole_feats = {l: {g: x.clone() for g, x in f.items()} for l, f in feats.items()}
    bases = stages.stage1_projectors(ctx, feats, cfg.stage1)
    coeffs, detail = stages.stage2_coefficients(ctx, model, bases, cal.instruction, cfg.stage2, cfg.strength,
                                                progress=False)
    whole = dict(features=whole_feats, bases=bases, coeffs=coeffs, detail=detail)
    seq = {}
    for where in ("host", "disk"):
        feats_only = run_sequential(ctx, reasoning=cal.reasoning, placement=where, spill_dir=tmp, progress=False)
        r = run_sequential(ctx, reasoning=cal.reasoning, instruction=cal.instruction, stage1=cfg.stage1,
                           stage2=cfg.stage2, strength=cfg.strength, placement=where, spill_dir=tmp, progress=False)
        c, d = stages.stage2_solve(ctx, r.a1, r.u1, r.a0, r.u0, cfg.stage2)
        seq[where] = dict(features=feats_only.features, bases=r.bases, coeffs=c, detail=d, placement=r.placement)
    return cfg, ctx, cal, whole, seq, tmp


@pytest.mark.slow  # both paths on two trios: ~1 min on 2 cores
@pytest.mark.parametrize("where", ["host", "disk"])
def test_stage1_features_equal_the_whole_model_path(both_paths, where):
    _, ctx, _, whole, seq, tmp = both_paths
    got = seq[where]
    assert got["placement"] == where
    assert sorted(got["features"]) == sorted(whole["features"]) == [1, 2]
    for layer, groups in whole["features"].items():
        assert sorted(got["features"][layer]) == sorted(groups)
        for g, x in groups.items():
            assert got["features"][layer][g].shape == x.shape
            _close(got["features"][layer][g], x, f"layer {layer} {g}")
    assert not any(tmp.glob("rainmerge-hidden-*")), "spilled hidden states were not cleaned up"


@pytest.mark.slow  # both paths on two trios: ~1 min on 2 cores
@pytest.mark.parametrize("where", ["host", "disk"])
def test_projectors_and_alpha_equal_the_whole_model_path(both_paths, where):
    _, _, _, whole, seq, _ = both_paths
    got = seq[where]
    for layer, groups in whole["bases"].items():
        for name, b in groups.items():
            g = got["bases"][layer][name]
            assert (g.k, g.rank, g.rows, g.capped) == (b.k, b.rank, b.rows, b.capped), (layer, name)
            _close(_projector(g), _projector(b), f"layer {layer} basis {name}")
    a_whole = torch.tensor(whole["detail"]["alpha"])
    a_seq = torch.tensor(got["detail"]["alpha"])
    assert a_whole.shape == (2, 4)
    assert a_whole.std() > 0, "alpha is uniform: the test could not see a difference"
    _close(a_seq, a_whole, "alpha")
    for k in ("g", "H"):
        _close(torch.tensor(got["detail"][k]), torch.tensor(whole["detail"][k]), k)


@pytest.mark.slow  # both paths on two trios: ~1 min on 2 cores
def test_merged_weights_equal_the_whole_model_path(both_paths):
    from rainmerge.merge import write_merged_model
    from rainmerge.methods import build_method
    from tests.tiny import load_tensors

    cfg, ctx, _, whole, seq, tmp = both_paths
    outs = {}
    for label, res in (("whole", whole), ("disk", seq["disk"])):
        method = build_method(cfg, arch=ctx.arch, bases=res["bases"], coeffs=res["coeffs"], device="cpu")
        outs[label] = load_tensors(write_merged_model(ctx.reasoning, ctx.base, ctx.instruct, ctx.sites, method,
                                                      tmp / f"merged-{label}", {"warnings": []}, progress=False))
    lrm = load_tensors(ctx.reasoning.root)
    changed = 0
    for name, w in outs["whole"].items():
        _close(outs["disk"][name], w, name)
        changed += not torch.equal(w, lrm[name])
    assert changed == len(ctx.sites)  # every merged tensor moved, every other one is the LRM's


@pytest.mark.slow  # both paths on two trios: ~1 min on 2 cores
def test_two_pass_statistics_differ_between_the_lrm_and_the_probe_stream(both_paths):
    """The Stage-2 streams are really two: the probe merge's hidden states are not the LRM's."""
    cfg, ctx, cal, _, _, tmp = both_paths
    if cfg.stage2.estimator != "two_pass":
        pytest.skip("the LRM stream exists only for the two_pass estimator")
    r = run_sequential(ctx, reasoning=cal.reasoning, instruction=cal.instruction, stage1=cfg.stage1,
                       stage2=cfg.stage2, placement="host", progress=False)
    assert not torch.allclose(r.a0.nan_to_num(), r.a1.nan_to_num())


def test_hidden_states_round_trip_on_disk(tmp_path):
    hs = HiddenStates("s", "disk", "cpu", tmp_path)
    xs = [torch.randn(1, n, 8) for n in (3, 5, 2)]
    for i, x in enumerate(xs):
        hs.put(i, x)
    got = dict(hs.stream())
    assert all(torch.equal(got[i], x) for i, x in enumerate(xs))
    assert len(list((tmp_path / "s").glob("*.safetensors"))) == 3
    hs.close()
    assert not (tmp_path / "s").exists()


def test_placement_choice():
    assert choose_placement(10, "cpu", "device") == "host"  # on the CPU the device is the host
    assert choose_placement(10, "cpu", "disk") == "disk"
    assert choose_placement(10, "cpu") == "host"
    assert choose_placement(1 << 62, "cpu") == "disk"
    with pytest.raises(ValueError):
        choose_placement(10, "cpu", "gpu")


@pytest.mark.slow  # both paths on two trios: ~1 min on 2 cores
def test_run_merge_takes_either_path_with_equal_results(trio_factory, calib, tmp_path):
    """`stages_path` routes the CLI's merge; both paths write the same model (float32 tolerance)."""
    import json

    from rainmerge.merge import PROVENANCE_FILE
    from tests.tiny import load_tensors

    trio = trio_factory("qwen2", num_hidden_layers=3)
    outs = {}
    for path in ("whole", "sequential"):
        cfg = trio_config(trio, calib, tmp_path / path, stages_path=path, hidden_states="disk",
                          spill_dir=str(tmp_path), hash_inputs=False)
        out = stages.run_merge(cfg, progress=False)
        prov = json.loads((out / PROVENANCE_FILE).read_text())
        assert prov["plan"]["stages_path"]["path"] == path
        outs[path] = load_tensors(out)
    assert prov["plan"]["stages_path"]["hidden_states"] == "disk"
    for name, w in outs["whole"].items():
        _close(outs["sequential"][name], w, name)


def test_path_choice_follows_the_memory_budget():
    from rainmerge.memory import GIB, PathEstimate, choose_stages_path

    whole = PathEstimate({"stage1_features": 140 * GIB}, 46 * GIB, 600 * GIB)
    assert choose_stages_path("auto", whole, [80 * GIB], None, False)[0] == "sequential"
    assert choose_stages_path("auto", whole, [80 * GIB, 80 * GIB], None, False)[0] == "whole"  # layers spread
    assert choose_stages_path("auto", whole, [141 * GIB], 40 * GIB, False)[0] == "sequential"  # host too small
    assert choose_stages_path("whole", whole, [8 * GIB], None, False) == ("whole",
                                                                          "stages_path: whole (forced by the config)")
    assert choose_stages_path("auto", whole, None, 30 * GIB, True)[0] == "sequential"  # CPU: the host decides


def test_plan_reports_both_paths_and_the_pod_sizes(trio_factory, calib, tmp_path):
    from rainmerge.preflight import build_plan, format_plan

    trio = trio_factory("qwen2", num_hidden_layers=3)
    cfg = trio_config(trio, calib, tmp_path / "out", device="cuda", gpu_memory=["1MB"], hash_inputs=False)
    res = build_plan(cfg).resources
    assert set(res.paths) == {"whole", "sequential"}
    assert res.paths["sequential"].gpu_peak_bytes < res.paths["whole"].gpu_peak_bytes
    assert res.stages_path == "sequential" and "exceeds" in res.stages_path_reason  # 1 MB cannot hold the LRM
    assert res.gpu_peak_bytes == res.paths["sequential"].gpu_peak_bytes  # the chosen path's figures
    assert res.hidden_state_bytes > 0
    assert set(res.k8s) >= {"volume_size", "memory_request", "memory_limit", "gpus"}
    assert "stages 1-2 path: SEQUENTIAL" in format_plan(build_plan(cfg))
    big = trio_config(trio, calib, tmp_path / "out", device="cuda", gpu_memory=["80GB"], hash_inputs=False)
    assert build_plan(big).resources.stages_path == "whole"


@pytest.mark.slow  # both paths on two trios: ~1 min on 2 cores
def test_pipeline_step_functions_route_to_the_sequential_path(both_paths):
    """What collect_features / score_attention_heads call: forced sequential, same features and alpha."""
    from dataclasses import replace

    cfg, ctx, cal, whole, _, _ = both_paths
    seq_ctx = replace(ctx, stages_path="sequential", hidden_states="host")
    feats = stages.stage1_features_any_path(seq_ctx, cal.reasoning, progress=False)
    for layer, groups in whole["features"].items():
        for g, x in groups.items():
            _close(feats[layer][g], x, f"layer {layer} {g}")
    _, detail = stages.stage2_coefficients_any_path(seq_ctx, whole["bases"], cal.instruction, cfg.stage2,
                                                    cfg.strength, progress=False)
    _close(torch.tensor(detail["alpha"]), torch.tensor(whole["detail"]["alpha"]), "alpha")


def test_whole_path_spreads_over_several_gpus(monkeypatch, trio_factory, calib, tmp_path):
    """Two GPUs faked: the whole-model load asks accelerate for an 'auto' map over both, capped per device,
    nothing on the host; one GPU without gpu_memory keeps the single-device load."""
    from dataclasses import replace

    from rainmerge.context import device_placement

    trio = trio_factory("qwen2", num_hidden_layers=3)
    ctx = open_models(trio_config(trio, calib, tmp_path / "o").models_spec(),
                      trio_config(trio, calib, tmp_path / "o").runtime())
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (40 << 30, 80 << 30))
    cuda = replace(ctx, device="cuda")
    assert device_placement(cuda) == ("auto", {0: 40 << 30, 1: 40 << 30, "cpu": 0})
    assert device_placement(replace(cuda, gpu_memory=("70GiB",))) == ("auto", {0: "70GiB", "cpu": 0})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device_placement(cuda) == ("cuda", None)
    assert device_placement(ctx) == (None, None)


def test_spill_folder_errors_are_clear_before_any_forward(tmp_path):
    from rainmerge.errors import ConfigError
    from rainmerge.io.spill import spill_folder as _spill_folder

    with pytest.raises(ConfigError, match="cannot create"):
        _spill_folder(tmp_path / "missing" / "deeper", 10)
    with pytest.raises(ConfigError, match="need"):
        _spill_folder(tmp_path, 1 << 60)
    assert list(tmp_path.iterdir()) == []  # nothing left behind
    assert _spill_folder(tmp_path, 10).is_dir()


def test_plan_k8s_flag_prints_the_pod_sizes(trio_factory, calib, tmp_path, capsys):
    import json

    import yaml

    from rainmerge.cli import main

    trio = trio_factory("qwen2", num_hidden_layers=3)
    r, i = calib
    cfg = {"base": str(trio["base"]), "instruct": str(trio["instruct"]), "reasoning": str(trio["reasoning"]),
           "reasoning_calibration": str(r), "instruction_calibration": str(i), "output": str(tmp_path / "o"),
           "device": "cuda", "gpu_memory": ["1MB"], "hash_inputs": False, "stage1": {"positions": "tags"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["plan", "--config", str(tmp_path / "c.yaml"), "--k8s"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stages_path"] == "sequential" and out["gpus"] == 1
    assert out["volume_size"].endswith("Gi") and out["memory_limit"].endswith("Gi")
