"""Batched generation with left padding (CPU or CUDA): the reference engine (`engines/padded.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass
class Generated:
    text: str  # new tokens decoded, special tokens kept, EOS and padding stripped
    prompt_tokens: int
    output_tokens: int  # generated tokens up to and including the first EOS
    hit_eos: bool


@torch.no_grad()
def generate_detailed(model, tok, prompts: list[str], max_new_tokens: int = 96, batch_size: int = 32,
                      progress: bool = True, desc: str = "generating", temperature: float = 0.0,
                      top_p: float = 1.0) -> list[Generated]:
    """Completions of already-rendered prompts, with token counts and whether EOS ended them."""
    device = next(model.parameters()).device
    tok.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    # top_k=0: only temperature and top-p shape the distribution (the default top_k=50 would cut it)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 else \
        dict(do_sample=False)
    result: dict[int, Generated] = {}
    for b in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
        idx = order[b:b + batch_size]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, **sampling)
        new = gen[:, enc["input_ids"].shape[1]:]
        for i, row, mask in zip(idx, new, enc["attention_mask"]):
            ids = row.tolist()
            hit = tok.eos_token_id in ids
            n = ids.index(tok.eos_token_id) + 1 if hit else len(ids)
            text = tok.decode([t for t in ids[:n - hit] if t != tok.pad_token_id], skip_special_tokens=False)
            result[i] = Generated(text, int(mask.sum()), n, hit)
    return [result[i] for i in range(len(prompts))]


def generate(model, tok, prompts: list[str], max_new_tokens: int = 96, batch_size: int = 32,
             progress: bool = True, desc: str = "generating") -> list[str]:
    """Greedy completions of already-rendered prompts (special tokens kept, so think tags stay visible)."""
    return [g.text for g in generate_detailed(model, tok, prompts, max_new_tokens, batch_size, progress, desc)]
