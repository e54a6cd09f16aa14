"""Loading a model folder for the in-process engines, and the token ids that end a completion."""

from __future__ import annotations

from typing import Any

import torch


def load(model_dir: str, device: str, model: Any = None, tokenizer: Any = None, trust_remote_code: bool = False):
    """(model, tokenizer) in eval mode; bfloat16 on CUDA, float32 on CPU (as the project evaluates)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if model is None:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, trust_remote_code=trust_remote_code)
        model = model.to(device)
    return model.eval(), tok


def eos_ids(model: Any, tok: Any) -> list[int]:
    """The tokenizer's EOS first (what the padded reference stops on), then the generation config's."""
    ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for e in [extra] if isinstance(extra, int) else (extra or []):
        if e not in ids:
            ids.append(e)
    if not ids:
        raise ValueError("the model has no EOS token: generation could never stop before the budget")
    return ids


def group_by_params(requests) -> dict:
    """Requests sharing sampling settings run together (one generation config per group)."""
    groups: dict = {}
    for r in requests:
        p = r.params
        groups.setdefault((p.temperature, p.top_p, p.seed), []).append(r)
    return groups
