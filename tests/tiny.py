"""Tiny random model trios and calibration records, built locally (never downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rainmerge.synthetic import R1_TEMPLATE, SPECIALS, build_tokenizer as _build

OLD_TEMPLATE = R1_TEMPLATE.replace("<|Assistant|><think>\n{% endif %}", "<|Assistant|>{% endif %}")
assert OLD_TEMPLATE != R1_TEMPLATE

CORPUS = [
    "Compute 12 plus 7 and answer in uppercase letters only.",
    "Let me think step by step. First add the units, then the tens.",
    "Write a short poem without commas. End your reply with the phrase Is there anything else?",
    "The answer is 19. Wrap your entire response in double quotation marks.",
    "Sort the list 3 1 2 and respond in JSON format.",
] * 20


def build_tokenizer(out: Path, template: str = R1_TEMPLATE, specials: list[str] = SPECIALS):
    return _build(out, template, specials, CORPUS)


def model_config(arch: str, vocab: int, **kw):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  rms_norm_eps=1e-6)
    common.update(kw)
    if arch == "qwen2":
        return Qwen2Config(tie_word_embeddings=False, **common)
    if arch == "llama":
        return LlamaConfig(tie_word_embeddings=False, attention_bias=False, **common)
    if arch == "mistral":  # explicit head_dim different from hidden / heads
        return MistralConfig(tie_word_embeddings=False, head_dim=24, sliding_window=None, **common)
    if arch == "qwen3":  # QK-norm, tied embeddings
        return Qwen3Config(tie_word_embeddings=True, head_dim=16, **common)
    raise ValueError(arch)


def build_trio(root: Path, arch: str = "qwen2", seed: int = 0, template: str = R1_TEMPLATE,
               dtype: torch.dtype = torch.float32, noise: float = 0.02, **kw) -> dict[str, Path]:
    """base random; ITM and LRM = base + independent perturbations (std `noise`) of every weight (incl.
    biases), each stored in `dtype` (bfloat16: like every real checkpoint)."""
    from transformers import AutoModelForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(root / "tok", template)
    cfg = model_config(arch, len(tok), **kw)
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(cfg).float()
    paths = {}
    sd = {k: v.clone() for k, v in base.state_dict().items()}
    for i, role in enumerate(["base", "instruct", "reasoning"]):
        g = torch.Generator().manual_seed(seed * 100 + i)
        model = AutoModelForCausalLM.from_config(cfg).float()
        new = {}
        for k, v in sd.items():
            step = 0.0 if role == "base" else torch.randn(v.shape, generator=g) * noise
            new[k] = v + step
        model.load_state_dict(new, strict=False)
        if cfg.tie_word_embeddings:
            model.tie_weights()
        d = root / role
        model.to(dtype).save_pretrained(d)
        tok.save_pretrained(d)
        paths[role] = d
    return paths


def reasoning_records(n: int = 4) -> list[dict]:
    return [{"prompt": f"Compute {i} plus {i + 3}.", "reasoning": f"First add the units. {i} plus {i + 3} is "
             f"{2 * i + 3}. Let me check it again step by step.", "response": f"The answer is {2 * i + 3}.",
             "sample_id": f"r{i}"} for i in range(n)]


def instruction_records(n: int = 3) -> list[dict]:
    out = []
    for i in range(n):
        out.append({
            "id": 1000 + i,
            "prompt": f"Write about the number {i}. Your answer must be in uppercase letters only. "
                      "Wrap your entire response in double quotation marks.",
            "reason": "The user wants uppercase and quotes. Let me think.",
            "response": f'"THE NUMBER {i} IS SMALL. IT IS ALSO NICE." Some unrelated tail text here.',
            "instruction_id_list": ["change_case:english_capital", "startend:quotation"],
            "related_prompt_list": [
                {"instruction_id": "change_case:english_capital",
                 "prompt_spans": ["in uppercase letters only"],
                 "response_spans": [f"THE NUMBER {i} IS SMALL"], "unrelated_response_spans": []},
                {"instruction_id": "startend:quotation",
                 "prompt_spans": ["Wrap your entire response in double quotation marks"],
                 "response_spans": ['"THE NUMBER'], "unrelated_response_spans": ["Some unrelated tail"]},
            ],
            "unrelated_response_spans": ["unrelated tail text"],
        })
    return out


def write_calibration(root: Path, n_reason: int = 4, n_instr: int = 3) -> tuple[Path, Path]:
    r, i = root / "reasoning.json", root / "instruction.jsonl"
    r.write_text(json.dumps(reasoning_records(n_reason)))
    i.write_text("\n".join(json.dumps(x) for x in instruction_records(n_instr)) + "\n")
    return r, i


# -- reading merged folders and the LRM's own features, shared by the identity tests -----------------

MODS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
        "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def load_tensors(folder):
    """Every tensor of a (possibly sharded) safetensors folder."""
    from safetensors import safe_open

    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(f, "pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def linear_inputs_at(model, sequences, layer_count):
    """Inputs of every linear of the first `layer_count` layers at chosen positions, from the model's own
    forward (hooks, no library code): `sequences` yields (input ids [1, T], positions); rows concatenated."""
    got = {(l, m): [] for l in range(layer_count) for m in MODS}
    hooks = [model.get_submodule(f"model.layers.{l}.{MODS[m]}").register_forward_pre_hook(
        lambda _m, a, key=(l, m): got[key].append(a[0][0])) for (l, m) in got]
    try:
        for ids, pos in sequences:
            n0 = {k: len(v) for k, v in got.items()}
            with torch.no_grad():
                model(input_ids=ids)
            for k, v in got.items():
                v[n0[k]] = v[n0[k]][pos]
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v).double() for k, v in got.items()}


def trio_config(trio, calib, out, **over):
    """A merge config over a tiny trio and its calibration files (CPU, tags positions), dotted overrides."""
    from rainmerge.config import load_config

    r, i = calib
    base = {"base": str(trio["base"]), "instruct": str(trio["instruct"]), "reasoning": str(trio["reasoning"]),
            "reasoning_calibration": str(r), "instruction_calibration": str(i), "output": str(out),
            "device": "cpu", "stage1.positions": "tags"}
    base.update(over)
    return load_config(None, base)


def assert_null_space_identity(inputs, merged, reasoning, base, instruct, min_kept: float, tol: float = 1e-4):
    """For every linear: the merged change leaves the LRM's protected inputs alone,
    ||(W_merged - W_LRM) x|| <= tol * ||tau x||, and keeps at least `min_kept` of the task vector's norm."""
    for (l, m), x in inputs.items():
        name = f"model.layers.{l}.{MODS[m]}.weight"
        tau = (instruct[name] - base[name]).double()
        change = (merged[name] - reasoning[name]).double()
        assert torch.linalg.norm(change @ x.T) <= tol * torch.linalg.norm(tau @ x.T), name
        assert torch.linalg.norm(change) > min_kept * torch.linalg.norm(tau), f"{name}: delta mostly erased"
