"""The left-padded `model.generate` engine: today's path, kept as the reference the others are checked
against (greedy identity) and as the fallback for architectures continuous batching cannot run."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..generate import generate_detailed
from .engine_config import EngineConfig
from .hf import group_by_params, load
from .types import Completion, Request


class PaddedEngine:
    name = "padded"

    def __init__(self, cfg: EngineConfig, model_dir: str, device: str, model: Any = None, tokenizer: Any = None,
                 kv_tokens: int | None = None):
        self.cfg = cfg
        self.model, self.tok = load(model_dir, device, model, tokenizer, cfg, kv_tokens)

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        for (temp, top_p, seed), group in group_by_params(requests).items():
            by_budget: dict[int, list[Request]] = {}
            for r in group:
                by_budget.setdefault(r.params.max_new_tokens, []).append(r)
            for budget, reqs in by_budget.items():
                if seed is not None:
                    torch.manual_seed(seed)
                # rows of one batch finish together, so completions arrive a batch at a time
                for b in range(0, len(reqs), self.cfg.max_concurrency):
                    chunk = reqs[b:b + self.cfg.max_concurrency]
                    outs = generate_detailed(self.model, self.tok, [r.prompt for r in chunk], budget,
                                             self.cfg.max_concurrency, False, temperature=temp, top_p=top_p)
                    for r, g in zip(chunk, outs):
                        yield Completion(r.id, r.sample, g.text, g.prompt_tokens, g.output_tokens,
                                         "stop" if g.hit_eos else "length")

    def close(self) -> None:
        self.model = None
