"""Synthetic inputs for tests and benchmarks: an R1-style tokenizer with think tokens, random trios
of any real architecture shape (written tensor by tensor), and calibration records of chosen length."""

from __future__ import annotations

import json
import os
import random
import zlib
from pathlib import Path
from typing import Any

import torch

from .io.stream import DTYPE_STR
from .io.writer import write_sharded

SPECIALS = ["<|begin|>", "<|end|>", "<|User|>", "<|Assistant|>", "<think>", "</think>", "<|pad|>"]
R1_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<|User|>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<|Assistant|>{{ m['content'] }}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}"
)
WORDS = ("the of and to in is that for it as with was on be by this are or an at from but not have which "
         "first then add sum check answer step number list sort count letter word each value result so let me "
         "think compute carry digit plus minus times equal upper lower comma quote json format").split()

SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}


def build_tokenizer(out: Path | None, template: str = R1_TEMPLATE, specials: list[str] = SPECIALS,
                    corpus: list[str] | None = None, vocab_size: int = 400):
    """Byte-level BPE trained in-process (deterministic, offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus or [" ".join(WORDS)] * 50, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0], eos_token=specials[1],
                                   pad_token=specials[-1], additional_special_tokens=specials[2:-1])
    fast.chat_template = template
    if out is not None:
        fast.save_pretrained(out)
    return fast


def _config(shape: dict[str, Any], layers: int | None):
    from transformers import AutoConfig

    kw = {k: v for k, v in shape.items() if k != "model_type"}
    if layers:
        kw["num_hidden_layers"] = layers
    return AutoConfig.for_model(shape["model_type"], **kw)


def write_random_trio(root: Path, shape: str | dict[str, Any], layers: int | None = None,
                      dtype: torch.dtype = torch.bfloat16, seed: int = 0, noise: float = 0.02,
                      max_shard_size: str = "2GB", link_base: bool = False, device: str = "cpu") -> dict[str, Path]:
    """base ~ N(0, 0.02); ITM and LRM = base + independent N(0, noise*0.02); one tensor in memory at a time.

    link_base hard-links the base's weights to the LRM's (same work and I/O; tau = ITM - LRM is still a
    real, non-zero task vector, so the identity statistics stay meaningful): a 7B trio then needs 30 GB
    of disk instead of 45 GB. device="cuda" draws every tensor on the GPU (much faster for large shapes;
    other random numbers than on the CPU, same distribution)."""
    from transformers import AutoModelForCausalLM

    cfg = _config(SHAPES[shape] if isinstance(shape, str) else shape, layers)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(cfg)
    cfg.architectures = [type(meta).__name__]  # real checkpoints carry it; mergekit requires it
    layout = {n: (tuple(p.shape), DTYPE_STR[dtype]) for n, p in meta.state_dict().items()}
    if cfg.tie_word_embeddings:
        layout.pop("lm_head.weight", None)
    tok = build_tokenizer(None)
    out = {}
    for role, role_i in (("instruct", 1), ("reasoning", 2), ("base", 0)):  # base last: it may link
        d = root / role
        d.mkdir(parents=True, exist_ok=True)
        if role == "base" and link_base:
            for f in (root / "reasoning").iterdir():
                if f.suffix == ".safetensors" or f.name == "model.safetensors.index.json":
                    os.link(f, d / f.name)
            cfg.save_pretrained(d)
            tok.save_pretrained(d)
            out[role] = d
            continue

        def produce(name: str, role_i: int = role_i) -> torch.Tensor:
            shape_ = layout[name][0]
            if name.endswith("norm.weight"):
                return torch.ones(shape_, dtype=dtype)
            g = torch.Generator(device=device).manual_seed(seed + zlib.crc32(name.encode()))
            t = torch.randn(shape_, generator=g, device=device) * 0.02
            if role_i:
                g2 = torch.Generator(device=device).manual_seed(seed + role_i * 7919 + zlib.crc32(name.encode()))
                t += torch.randn(shape_, generator=g2, device=device) * 0.02 * noise
            return t.to(dtype).cpu()

        write_sharded(d, layout, produce, max_shard_size, desc=f"generating {role}")
        cfg.save_pretrained(d)
        tok.save_pretrained(d)
        out[role] = d
    return out


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_calibration_of_length(root: Path, n_reasoning: int, n_instruction: int, words: int,
                                seed: int = 0) -> tuple[Path, Path]:
    """Reference-schema calibration files of about `words` words per sample (lengths vary +-50%)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    reasoning = [{"prompt": _words(rng, 40), "reasoning": _words(rng, int(words * rng.uniform(0.5, 1.5))),
                  "response": _words(rng, 30), "sample_id": f"r{i}"} for i in range(n_reasoning)]
    instr = []
    for i in range(n_instruction):
        c1, c2 = _words(rng, 8), _words(rng, 6)
        resp, unrel = _words(rng, 10), _words(rng, 10)
        instr.append({
            "id": i, "prompt": f"{_words(rng, 30)} {c1} {_words(rng, 10)} {c2}",
            "reason": _words(rng, int(words * rng.uniform(0.5, 1.5))),
            "response": f"{resp} {_words(rng, 40)} {unrel}",
            "instruction_id_list": ["a", "b"],
            "related_prompt_list": [
                {"instruction_id": "a", "prompt_spans": [c1], "response_spans": [resp], "unrelated_response_spans": []},
                {"instruction_id": "b", "prompt_spans": [c2], "response_spans": [],
                 "unrelated_response_spans": [unrel]}],
            "unrelated_response_spans": [],
        })
    r, j = root / "reasoning.json", root / "instruction.jsonl"
    r.write_text(json.dumps(reasoning))
    j.write_text("\n".join(json.dumps(x) for x in instr) + "\n")
    return r, j
