"""In-process continuous batching (transformers `ContinuousBatchingManager`, the engine behind
`generate_batch`): finished rows leave the batch at once and new prompts take their slots, so no decode
slot is spent on padding or on rows already done. The paged KV cache is sized here from the model's
shape and the budget; left to itself transformers sizes it from free memory (gigabytes even on CPU)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .engine_config import EngineConfig
from .hf import eos_ids, group_by_params, kv_bytes_per_token, load
from .types import Completion, Request, SamplingParams, finish_reason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheSizing:
    page_size: int
    num_blocks: int
    max_batch_tokens: int
    max_requests_per_batch: int
    bytes_per_block: int

    @property
    def gib(self) -> float:
        return self.num_blocks * self.bytes_per_block / 2**30


def size_cache(cfg: EngineConfig, model_config: Any, dtype_bytes: int, max_prompt: int, max_new: int) -> CacheSizing:
    """Room for `max_concurrency` whole sequences (prompt + budget), capped by `kv_cache_gib`; the cap
    only lowers concurrency (the scheduler queues the rest), never a sequence's own budget."""
    page = cfg.page_size or (32 if max_prompt + max_new <= 2048 else 256)
    per_req = math.ceil((max_prompt + max_new) / page)
    bytes_per_block = kv_bytes_per_token(model_config, dtype_bytes) * page
    blocks = per_req * cfg.max_concurrency
    if cfg.kv_cache_gib is not None:
        cap = int(cfg.kv_cache_gib * 2**30 // bytes_per_block)
        if cap < per_req:
            raise ValueError(f"kv_cache_gib={cfg.kv_cache_gib} holds {cap * page} tokens, fewer than one sequence "
                             f"of {max_prompt + max_new} (prompt + budget): raise it or lower max_new_tokens")
        blocks = min(blocks, cap)
    requests = max(1, min(cfg.max_concurrency, blocks // per_req))
    batch_tokens = cfg.max_batch_tokens or max(2048, requests)
    return CacheSizing(page, blocks, batch_tokens, requests, bytes_per_block)


class ContinuousEngine:
    name = "inprocess"

    def __init__(self, cfg: EngineConfig, model_dir: str, device: str, model: Any = None, tokenizer: Any = None,
                 kv_tokens: int | None = None):
        self.cfg = cfg
        self.model, self.tok = load(model_dir, device, model, tokenizer, cfg, kv_tokens)
        self.eos = eos_ids(self.model, self.tok)
        self.last_sizing: CacheSizing | None = None

    def _configs(self, temp: float, top_p: float, seed: int | None, prompts: list[list[int]], max_new: int):
        from transformers import ContinuousBatchingConfig, GenerationConfig

        sizing = size_cache(self.cfg, self.model.config, self.model.dtype.itemsize, max(map(len, prompts)), max_new)
        self.last_sizing = sizing
        sample = dict(do_sample=True, temperature=temp, top_p=top_p, top_k=0) if temp > 0 else dict(do_sample=False)
        gen = GenerationConfig(max_new_tokens=max_new, eos_token_id=self.eos, pad_token_id=self.tok.pad_token_id,
                               **sample)
        cb = ContinuousBatchingConfig(page_size=sizing.page_size, num_blocks=sizing.num_blocks,
                                      max_batch_tokens=sizing.max_batch_tokens,
                                      max_requests_per_batch=sizing.max_requests_per_batch, seed=seed,
                                      allow_block_sharing=False)
        log.info("continuous batching cache: %d blocks x %d tokens (%.3f GiB), %d requests, %d tokens per step",
                 sizing.num_blocks, sizing.page_size, sizing.gib, sizing.max_requests_per_batch,
                 sizing.max_batch_tokens)
        return gen, cb

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]:
        for (temp, top_p, seed), group in group_by_params(requests).items():
            ids = [self.tok(r.prompt, add_special_tokens=False)["input_ids"] for r in group]
            for i, out in self.generate_ids(ids, [r.params for r in group]):
                yield self._completion(group[i], out)

    def generate_ids(self, prompts: list[list[int]], params: list[SamplingParams],
                     cache_budget: int | None = None) -> Iterator[tuple[int, Any]]:
        """Token-level core: (index into `prompts`, transformers GenerationOutput) as each finishes.
        All `params` must share temperature, top_p and seed (one generation config per run).
        cache_budget: size the cache for this many new tokens per sequence (default: the largest budget)."""
        import torch

        temp, top_p, seed = params[0].temperature, params[0].top_p, params[0].seed
        if any((p.temperature, p.top_p, p.seed) != (temp, top_p, seed) for p in params):
            raise ValueError("generate_ids runs one sampling setting at a time")
        max_new = max(p.max_new_tokens for p in params)
        gen, cb = self._configs(temp, top_p, seed, prompts, max(max_new, cache_budget or 0))
        gen.max_new_tokens = max_new
        with torch.inference_mode(), self.model.continuous_batching_context_manager(
                generation_config=gen, continuous_batching_config=cb, block=True, timeout=30,
                warmup=False) as manager:
            for i, (toks, p) in enumerate(zip(prompts, params)):
                manager.add_request(toks, request_id=f"r{i}", max_new_tokens=p.max_new_tokens, eos_token_id=self.eos)
            left = {f"r{i}" for i in range(len(prompts))}
            while left:
                out = manager.get_result(timeout=1)
                if out is None:
                    if not manager.is_running():
                        raise RuntimeError(f"continuous batching stopped with {len(left)} request(s) unfinished")
                    continue
                if not out.is_finished() or out.request_id not in left:
                    continue
                if out.error is not None:
                    raise RuntimeError(f"generation failed for prompt {out.request_id[1:]}: {out.error}")
                left.discard(out.request_id)
                yield int(out.request_id[1:]), out

    def _completion(self, r: Request, out: Any) -> Completion:
        toks = list(out.generated_tokens)
        reason = finish_reason(toks, set(self.eos), r.params.max_new_tokens)
        body = toks[:-1] if reason == "stop" and toks else toks
        text = self.tok.decode(body, skip_special_tokens=False)
        return Completion(r.id, r.sample, text, len(out.prompt_ids), len(toks), reason)

    def close(self) -> None:
        self.model = None
