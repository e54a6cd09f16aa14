"""A small deterministic CPU trainer for the toy trio (causal LM, loss on masked spans)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

Example = tuple[list[int], list[int]]  # (input_ids, loss mask 0/1)


def pack(docs: list[list[int]], seq_len: int) -> list[Example]:
    """Concatenate documents into full-length chunks (pretraining: every token is a target)."""
    flat = [t for d in docs for t in d]
    return [(flat[i:i + seq_len], [1] * seq_len) for i in range(0, len(flat) - seq_len + 1, seq_len)]


def _batch(exs: list[Example], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = max(len(e[0]) for e in exs)
    ids = torch.full((len(exs), n), pad)
    att = torch.zeros(len(exs), n, dtype=torch.long)
    lab = torch.full((len(exs), n), -100)
    for i, (x, m) in enumerate(exs):
        ids[i, :len(x)] = torch.tensor(x)
        att[i, :len(x)] = 1
        lab[i, :len(x)] = torch.where(torch.tensor(m) > 0, torch.tensor(x), torch.tensor(-100))
    return ids, att, lab


def train(model: torch.nn.Module, examples: list[Example], *, tokens: int, batch: int, lr: float, seed: int,
          pad_id: int, desc: str, progress: bool = True, log: Callable[[str], None] | None = None) -> float:
    """AdamW with warmup + cosine decay until `tokens` tokens have been seen; returns the final loss.

    No weight decay: the task vectors (fine-tuned - base) must reflect the data, not a shrink."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    avg_len = sum(len(e[0]) for e in examples) / len(examples)
    steps = max(1, int(tokens / (batch * avg_len)))
    warm = max(1, steps // 20)
    model.train()
    order: list[int] = []
    ema = None
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress)
    for step in bar:
        if len(order) < batch:
            order = list(range(len(examples)))
            rng.shuffle(order)
        idx, order = order[:batch], order[batch:]
        ids, att, lab = _batch([examples[i] for i in idx], pad_id)
        scale = min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr * max(scale, 0.02)
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{ema:.3f}")
    model.eval()
    if log:
        log(f"{desc}: {steps} steps, final loss {ema:.4f}")
    return float(ema)
