"""End-to-end RAIN merges on tiny Qwen2 (GQA + biases), Llama, Mistral (explicit head_dim), Qwen3 (QK-norm)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rainmerge.config import load_config
from rainmerge.merge import PROVENANCE_FILE
from rainmerge.stages import run_merge
from tests.tiny import MODS, assert_null_space_identity, linear_inputs_at, load_tensors, reasoning_records

def _records_text(tok, r):
    return tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                   add_generation_prompt=True) + r["reasoning"] + "\n</think>\n\n" + r["response"]


def _inputs_at_tags(model, tok, layer_count):
    """Inputs of every linear at the <think> / </think> tokens, from the model's own forward."""
    open_id, close_id = tok.convert_tokens_to_ids(["<think>", "</think>"])

    def seqs():
        for r in reasoning_records():
            ids = tok(_records_text(tok, r), add_special_tokens=False, return_tensors="pt")["input_ids"]
            pos = ((ids[0] == open_id) | (ids[0] == close_id)).nonzero().flatten()
            assert len(pos) == 2
            yield ids, pos

    return linear_inputs_at(model, seqs(), layer_count)


@pytest.mark.parametrize("arch", ["qwen2", "llama", "mistral", "qwen3"])
def test_rain_merge_keeps_protected_features_and_copies_the_rest(arch, trio_factory, calib, tmp_path):
    trio = trio_factory(arch)
    r_cal, i_cal = calib
    out = tmp_path / "merged"
    cfg = load_config(None, {"base": str(trio["base"]), "instruct": str(trio["instruct"]),
                             "reasoning": str(trio["reasoning"]), "reasoning_calibration": str(r_cal),
                             "instruction_calibration": str(i_cal), "output": str(out), "device": "cpu",
                             "stage1.positions": "tags", "max_shard_size": "100KB"})
    run_merge(cfg, progress=False)

    merged, lrm = load_tensors(out), load_tensors(trio["reasoning"])
    base, itm = load_tensors(trio["base"]), load_tensors(trio["instruct"])
    assert merged.keys() == lrm.keys()
    assert json.loads((out / "model.safetensors.index.json").read_text())["weight_map"].keys() == merged.keys()
    merged_names = {f"model.layers.{l}.{p}.weight" for l in range(2) for p in MODS.values()}
    for name, t in lrm.items():
        if name not in merged_names:
            assert merged[name].dtype == t.dtype and torch.equal(merged[name], t), name
        else:
            assert not torch.equal(merged[name], t), f"{name} was not merged"

    model = AutoModelForCausalLM.from_pretrained(trio["reasoning"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(trio["reasoning"])
    assert_null_space_identity(_inputs_at_tags(model, tok, 2), merged, lrm, base, itm, min_kept=0.2)

    prov = json.loads((out / PROVENANCE_FILE).read_text())
    assert prov["inputs"]["reasoning"]["weights_sha256"] and prov["calibration"]["reasoning"]["used"] == 4
    assert set(prov["module_stats"]) == merged_names
    assert all(s["residual"] < 1e-6 for s in prov["module_stats"].values())
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = tok("Compute 1 plus 2.", return_tensors="pt")["input_ids"]
    assert torch.isfinite(reloaded(input_ids=ids).logits).all()
    assert (out / "chat_template.jinja").is_file() or "chat_template" in (out / "tokenizer_config.json").read_text()


WIDE = dict(hidden_size=192, num_attention_heads=6, num_key_value_heads=2, intermediate_size=256)  # head_dim 32


def _inputs_at_windows(model, tok, layer_count, records, radius):
    """Inputs of every linear at <think>..+r and </think>-r..</think>, from the model's own forward."""
    open_id, close_id = tok.convert_tokens_to_ids(["<think>", "</think>"])

    def seqs():
        for r in records:
            ids = tok(_records_text(tok, r), add_special_tokens=False, return_tensors="pt")["input_ids"]
            t_open = int((ids[0] == open_id).nonzero()[0])
            t_close = int((ids[0] == close_id).nonzero()[0])
            yield ids, sorted(set(range(t_open, t_open + radius + 1)) | set(range(t_close - radius, t_close + 1)))

    return linear_inputs_at(model, seqs(), layer_count)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_cli_merge_identity_on_every_module_when_rows_exceed_head_dim(arch, trio_factory, tmp_path):
    """Issue #9: 144 protected rows > head_dim 32, < hidden 192: exact on all modules, o_proj included
    (default stage1.o_proj: full)."""
    from rainmerge.cli import main
    from tests.tiny import write_calibration

    trio = trio_factory(arch, **WIDE)
    r_cal, i_cal = write_calibration(tmp_path, n_reason=12)
    out, strength = tmp_path / "merged", 0.9
    rc = main(["merge", "--base", str(trio["base"]), "--instruct", str(trio["instruct"]),
               "--reasoning", str(trio["reasoning"]), "--reasoning-calibration", str(r_cal),
               "--instruction-calibration", str(i_cal), "--output", str(out), "--device", "cpu",
               "--strength", str(strength), "--quiet", "--set", "stage1.positions=window", "--set", "stage1.radius=5",
               "--set", "stage1.ridge=1e-10", "--set", "stage2.normalize=mean", "--set", "max_shard_size=100KB"])
    assert rc == 0
    merged, lrm = load_tensors(out), load_tensors(trio["reasoning"])
    base, itm = load_tensors(trio["base"]), load_tensors(trio["instruct"])
    alpha = torch.tensor(json.loads((out / "rain_alpha.json").read_text())["alpha"], dtype=torch.float64)
    assert alpha.shape == (2, 6) and float(alpha.max() - alpha.min()) > 0.05, alpha  # per-head alpha spread

    model = AutoModelForCausalLM.from_pretrained(trio["reasoning"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(trio["reasoning"])
    X = _inputs_at_windows(model, tok, 2, reasoning_records(12), radius=5)
    assert X[(0, "o")].shape[0] >= 120 and X[(0, "o")].shape[1] == 192
    assert_null_space_identity(X, merged, lrm, base, itm, min_kept=0.1)
    for l in range(2):  # Delta_o = lambda * tau_O diag(alpha per head over its head_dim columns) P_perp
        x, name = X[(l, "o")], f"model.layers.{l}.{MODS['o']}.weight"
        tau, change = (itm[name] - base[name]).double(), (merged[name] - lrm[name]).double()
        # paper Eq. 4 closed form with the configured per-direction ridge (lambda_i = 1e-10 s_i^2, i.e. the
        # exact projector to 1e-10): independent of the basis code (pinv); this layer-0 o_in has s/s_max ~ 2e-6
        P_perp = torch.eye(x.shape[1], dtype=torch.float64) - torch.linalg.pinv(x, rtol=1e-12) @ x / (1 + 1e-10)
        want = strength * (tau * alpha[l].repeat_interleave(32)[None, :]) @ P_perp
        assert torch.linalg.norm(change - want) <= 1e-4 * torch.linalg.norm(want), name
        # the spread matters: projecting per full width first and scaling after would break the identity
        wrong = strength * (tau @ P_perp) * alpha[l].repeat_interleave(32)[None, :]
        assert torch.linalg.norm(wrong @ x.T) > 1e-3 * torch.linalg.norm(tau @ x.T), name

    from rainmerge.projection import projection_summary

    stats = json.loads((out / PROVENANCE_FILE).read_text())["module_stats"]
    assert len(stats) == 14 and all(s["rule"] == "exact" and s["rows"] >= 120 for s in stats.values())
    line = projection_summary(stats)
    assert "projection exact (residual <= 1e-04) on 14 " in line and "rule: exact 14 / energy 0 / capped 0" in line
