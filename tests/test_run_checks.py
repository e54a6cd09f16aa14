"""Issue #13: the checks before any weight is merged (rainmerge.preflight.merge_start.preflight and the loaders):
truncated or corrupt shards, NaN/Inf in any role, dtype mismatch, output overlapping an input, a full disk;
each named with its role, one line through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rainmerge.errors import ConfigError, CorruptInputError, DiskSpaceError, NonFiniteError
from rainmerge.io.lazy import ModelSource

from .merge_cli import MERGED, copy_model, merge_args, no_temporaries, run_cli


def _sources(trio, **roles):
    from rainmerge.config import ModelRef

    paths = {**trio, **roles}
    return {r: ModelSource(ModelRef(path=str(paths[r])), r) for r in ("base", "instruct", "reasoning")}


def _names(src):
    return [n for n in src.names() if n.startswith("model.layers.") and n.endswith("proj.weight")]


def test_preflight_passes_on_good_inputs(trio_factory, tmp_path):
    from rainmerge.preflight.merge_start import preflight, scan_nonfinite

    srcs = _sources(trio_factory())
    names = _names(srcs["reasoning"])
    assert preflight(srcs, names, tmp_path / "o", protected={"calibration": tmp_path / "c.json"},
                     scan_finite=True) == []
    for role, s in srcs.items():
        scan_nonfinite(s, names, role)


def _truncate(folder: Path, name: str, keep: int) -> None:
    f = folder / name
    f.write_bytes(f.read_bytes()[:keep])


def test_truncated_shard_is_named_with_its_role(trio_factory, calib, tmp_path, capsys):
    trio = trio_factory()
    itm = copy_model(trio["instruct"], tmp_path / "itm")
    size = (itm / "model.safetensors").stat().st_size
    _truncate(itm, "model.safetensors", size - 1000)
    out = tmp_path / "o"
    rc, line = run_cli(capsys, merge_args(trio, calib, out, instruct=itm))
    assert rc == 2 and "instruct: shard model.safetensors is truncated or corrupt" in line
    assert not out.exists()


def test_corrupt_second_shard_of_a_sharded_model(trio_factory, tmp_path):
    from huggingface_hub import save_torch_state_dict

    from rainmerge.io.lazy import read_header
    from rainmerge.preflight.merge_start import check_shards

    trio = trio_factory()
    d = tmp_path / "lrm"
    d.mkdir()
    shutil.copy(trio["reasoning"] / "config.json", d)
    save_torch_state_dict(load_file(trio["reasoning"] / "model.safetensors"), d, max_shard_size="60KB")
    shards = sorted(d.glob("model-*.safetensors"))
    assert len(shards) >= 3
    src = ModelSource(_ref(d), "reasoning")
    check_shards(src)  # fine
    # header intact but data cut short (what a killed download leaves): the preflight names it
    _truncate(d, shards[1].name, shards[1].stat().st_size - 10)
    with pytest.raises(CorruptInputError, match=rf"reasoning: shard {shards[1].name} is truncated or corrupt"):
        check_shards(src)
    with pytest.raises(CorruptInputError, match=rf"reasoning: shard {shards[1].name} is truncated or corrupt"):
        ModelSource(_ref(d), "reasoning")
    _truncate(d, shards[1].name, 5)
    with pytest.raises(CorruptInputError, match="too small"):
        read_header(shards[1], "reasoning")
    shards[1].write_bytes(b"\xff" * 64)
    with pytest.raises(CorruptInputError, match=rf"reasoning: shard {shards[1].name}"):
        read_header(shards[1], "reasoning")


def _ref(path):
    from rainmerge.config import ModelRef

    return ModelRef(path=str(path))


def test_index_entry_outside_the_model_folder(trio_factory, calib, tmp_path, capsys):
    trio = trio_factory()
    d = copy_model(trio["base"], tmp_path / "models" / "base")
    (d / "model.safetensors").rename(tmp_path / "models" / "outside.safetensors")
    sd = load_file(tmp_path / "models" / "outside.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: "../outside.safetensors" for k in sd}}))
    rc, line = run_cli(capsys, merge_args(trio, calib, tmp_path / "o", base=d))
    assert rc == 2 and "base: weight index" in line and "points outside the model folder" in line
    (d / "model.safetensors.index.json").write_text("{not json")
    rc, line = run_cli(capsys, merge_args(trio, calib, tmp_path / "o", base=d))
    assert rc == 2 and "base: weight index" in line and "not valid JSON" in line


def test_config_json_not_json(trio_factory, calib, tmp_path, capsys):
    trio = trio_factory()
    d = copy_model(trio["instruct"], tmp_path / "itm")
    (d / "config.json").write_text('{"model_type": "qwen2",\n  oops}')
    rc, line = run_cli(capsys, merge_args(trio, calib, tmp_path / "o", instruct=d))
    assert rc == 2 and "instruct: config" in line and "config.json is not valid JSON" in line and "line 2" in line


@pytest.mark.parametrize("role", ["base", "instruct", "reasoning"])
def test_nan_or_inf_in_each_role(trio_factory, tmp_path, role):
    from rainmerge.preflight.merge_start import preflight, scan_nonfinite

    trio = trio_factory()
    d = copy_model(trio[role], tmp_path / role)
    sd = load_file(d / "model.safetensors")
    sd[MERGED][3, 5] = float("nan") if role != "instruct" else float("inf")
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    srcs = _sources(trio, **{role: d})
    names = _names(srcs["reasoning"])
    kind = "1 NaN" if role != "instruct" else "1 Inf"
    with pytest.raises(NonFiniteError, match=rf"{role}: tensor {MERGED} in model.safetensors has .*{kind}"):
        scan_nonfinite(srcs[role], names, role)
    for r in srcs:
        if r != role:
            scan_nonfinite(srcs[r], names, r)
    with pytest.raises(NonFiniteError, match=role):
        preflight(srcs, names, tmp_path / "o2", scan_finite=True)


def test_lrm_scan_covers_tensors_the_forward_pass_reads(trio_factory, tmp_path):
    from rainmerge.preflight.merge_start import preflight

    trio = trio_factory()
    d = copy_model(trio["reasoning"], tmp_path / "lrm")
    sd = load_file(d / "model.safetensors")
    sd["model.embed_tokens.weight"][0, 0] = float("inf")  # not a merged tensor
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    srcs = _sources(trio, reasoning=d)
    with pytest.raises(NonFiniteError, match="reasoning: tensor model.embed_tokens.weight"):
        preflight(srcs, _names(srcs["reasoning"]), tmp_path / "o", scan_finite=True)


def _poison(trio, role, dst):
    d = copy_model(trio[role], dst)
    sd = load_file(d / "model.safetensors")
    sd[MERGED][3, 5] = float("nan")
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    return d


@pytest.mark.parametrize("role", ["base", "instruct", "reasoning"])
def test_nan_in_each_role_through_the_cli(trio_factory, calib, tmp_path, capsys, role):
    # no preflight wired yet: a one-line error at the first read of the tensor, no output left
    trio = trio_factory()
    d = _poison(trio, role, tmp_path / role)
    out = tmp_path / "o"
    rc, line = run_cli(capsys, merge_args(trio, calib, out, **{role: d}))
    assert rc == 2 and f"{role}: tensor {MERGED}" in line and "NaN" in line
    assert not out.exists()
    no_temporaries(out)


def test_dtype_mismatch_is_warned(trio_factory, tmp_path):
    from rainmerge.preflight.merge_start import preflight

    trio = trio_factory()
    d = copy_model(trio["instruct"], tmp_path / "itm")
    sd = {k: v.to(torch.bfloat16) for k, v in load_file(d / "model.safetensors").items()}
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    srcs = _sources(trio, instruct=d)
    names = _names(srcs["reasoning"])
    warnings = preflight(srcs, names, tmp_path / "o")
    assert len(warnings) == 1 and "instruct" in warnings[0] and "BF16" in warnings[0] and "F32" in warnings[0]


def test_preflight_refuses_output_overlapping_inputs(trio_factory, tmp_path):
    from rainmerge.preflight.merge_start import preflight

    trio = trio_factory()
    srcs = _sources(trio)
    names = _names(srcs["reasoning"])
    with pytest.raises(ConfigError, match="lies inside the instruct model folder"):
        preflight(srcs, names, trio["instruct"] / "out")
    cal = tmp_path / "cal" / "r.json"
    with pytest.raises(ConfigError, match="contains the reasoning calibration"):
        preflight(srcs, names, tmp_path / "cal", protected={"reasoning calibration": cal})


@pytest.fixture
def tiny_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


def test_preflight_full_disk(trio_factory, tiny_disk):
    from rainmerge.preflight.merge_start import preflight

    trio = trio_factory()
    srcs = _sources(trio)
    names = _names(srcs["reasoning"])
    out = tiny_disk / "o"
    with pytest.raises(DiskSpaceError, match=r"not enough disk space: the merged model needs about .* free"):
        preflight(srcs, names, out)


def test_full_disk_is_refused_before_work_and_during_the_write(trio_factory, calib, tiny_disk, capsys,
                                                                monkeypatch):
    import rainmerge.preflight.merge_start as merge_start

    trio = trio_factory()
    out = tiny_disk / "o"
    free = shutil.disk_usage(tiny_disk).free
    weights = sum(t.numel() * t.element_size() for t in load_file(trio["reasoning"] / "model.safetensors").values())
    (tiny_disk / "filler").write_bytes(b"\0" * max(0, free - weights // 2))
    rc, line = run_cli(capsys, merge_args(trio, calib, out))
    assert rc == 2 and "not enough disk space" in line  # the CLI's preflight, before any forward pass
    # and should the disk fill after the check (another writer), the write fails cleanly too
    monkeypatch.setattr(merge_start, "check_disk_space", lambda *a, **k: 0)
    rc, line = run_cli(capsys, merge_args(trio, calib, out))
    assert rc == 2 and "the disk became full while writing" in line
    assert not out.exists()
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler"]
