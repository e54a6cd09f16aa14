"""Every bad input fails before heavy work with a clear message, and nothing appears at the output."""

import json
import shutil

import pytest
import torch

from rainmerge.config import load_config
from rainmerge.errors import CalibrationError, ConfigError
from rainmerge.stages import run_merge
from tests.tiny import trio_config


def _fails(cfg, exc, match, out):
    with pytest.raises(exc, match=match):
        run_merge(cfg, progress=False)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_bad_config_values():
    with pytest.raises(ConfigError, match="lo"):
        load_config(None, {"base": "a", "instruct": "b", "reasoning": "c", "output": "o", "method": "ties",
                           "stage2.lo": 2.0, "stage2.hi": 1.0})
    with pytest.raises(ConfigError, match="needs reasoning_calibration"):
        load_config(None, {"base": "a", "instruct": "b", "reasoning": "c", "output": "o"})
    with pytest.raises(ConfigError, match="Extra inputs"):
        load_config(None, {"base": "a", "instruct": "b", "reasoning": "c", "output": "o", "method": "ties",
                           "stage1.radiuss": 3})
    with pytest.raises(ConfigError, match="url"):
        load_config(None, {"base": "a", "instruct": "b", "reasoning": "c", "output": "o",
                           "reasoning_calibration": {"url": "https://x/y.json"}, "stage2.enabled": False})


def test_missing_model_dir(trio_factory, calib, tmp_path):
    out = tmp_path / "o"
    _fails(trio_config(trio_factory(), calib, out, base=str(tmp_path / "nowhere")), ConfigError, "neither", out)


def test_shape_and_family_mismatch(trio_factory, calib, tmp_path):
    out = tmp_path / "o"
    other = trio_factory("qwen2", intermediate_size=80)
    _fails(trio_config(trio_factory(), calib, out, instruct=str(other["instruct"])), ConfigError, "intermediate", out)
    _fails(trio_config(trio_factory(), calib, out, instruct=str(trio_factory("llama")["instruct"])),
           ConfigError, "family", out)


def test_missing_merged_tensor(trio_factory, calib, tmp_path):
    from safetensors.torch import load_file, save_file

    src = trio_factory()["instruct"]
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    sd = load_file(broken / "model.safetensors")
    sd.pop("model.layers.1.mlp.down_proj.weight")
    save_file(sd, broken / "model.safetensors")
    out = tmp_path / "o"
    _fails(trio_config(trio_factory(), calib, out, instruct=str(broken)), ConfigError, "down_proj.weight is missing", out)


def test_pickle_only_weights_are_refused(trio_factory, calib, tmp_path):
    d = tmp_path / "pickled"
    shutil.copytree(trio_factory()["base"], d)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    out = tmp_path / "o"
    _fails(trio_config(trio_factory(), calib, out, base=str(d)), ConfigError, "pickle", out)


def test_tokenizer_without_think_token(trio_factory, calib, tmp_path):
    from tests.tiny import SPECIALS, build_tokenizer

    d = tmp_path / "lrm"
    shutil.copytree(trio_factory()["reasoning"], d)
    for f in d.glob("tokenizer*"):
        f.unlink()
    build_tokenizer(d, specials=[s for s in SPECIALS if s != "</think>"])
    out = tmp_path / "o"
    _fails(trio_config(trio_factory(), calib, out, reasoning=str(d)), ConfigError, "not a single token", out)


def test_existing_output_layers_device(trio_factory, calib, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        run_merge(trio_config(trio_factory(), calib, out), progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    out2 = tmp_path / "o2"
    _fails(trio_config(trio_factory(), calib, out2, layers=[0, 7]), ConfigError, "out of range", out2)
    if not torch.cuda.is_available():
        _fails(trio_config(trio_factory(), calib, out2, device="cuda"), ConfigError, "CUDA is not available", out2)


def test_unlocatable_calibration_records(trio_factory, calib, tmp_path):
    bad = tmp_path / "instr.jsonl"
    rows = [json.loads(l) for l in calib[1].read_text().splitlines()]
    for r in rows:
        for rel in r["related_prompt_list"]:
            rel["prompt_spans"] = ["text that is nowhere in the prompt"]
    bad.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "o"
    _fails(trio_config(trio_factory(), (calib[0], bad), out), CalibrationError, "could not be used", out)


def test_failure_during_write_leaves_no_partial_output(trio_factory, calib, tmp_path, monkeypatch):
    from rainmerge.methods import task_arithmetic

    def boom(self, site, lrm, base, itm):
        if site.layer == 1:
            raise RuntimeError("injected")
        return lrm

    monkeypatch.setattr(task_arithmetic.TaskArithmetic, "merge", boom)
    out = tmp_path / "o"
    _fails(trio_config(trio_factory(), calib, out, method="task_arithmetic", max_shard_size="50KB"),
           RuntimeError, "injected", out)
