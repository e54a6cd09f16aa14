"""Batched greedy generation with left padding and a progress bar (CPU or CUDA)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def generate(model, tok, prompts: list[str], max_new_tokens: int = 96, batch_size: int = 32,
             progress: bool = True, desc: str = "generating") -> list[str]:
    """Greedy completions of already-rendered prompts (special tokens kept, so think tags stay visible)."""
    device = next(model.parameters()).device
    tok.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    result: dict[int, str] = {}
    for b in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
        idx = order[b:b + batch_size]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        for i, row in zip(idx, new):
            ids = row.tolist()
            if tok.eos_token_id in ids:
                ids = ids[:ids.index(tok.eos_token_id)]
            result[i] = tok.decode([t for t in ids if t != tok.pad_token_id], skip_special_tokens=False)
    return [result[i] for i in range(len(prompts))]
