"""Loading a model folder for the in-process engines, and the token ids that end a completion."""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ConfigError
from ...loading import (Placement, check_fits, folder_tensors, gpu_max_memory, load_causal_lm, load_tokenizer,
                        resolve_dtype, weight_bytes)
from .engine_config import EngineConfig


def placement(cfg: EngineConfig, device: str) -> Placement:
    """One device, or -- device_map/gpu_memory set, on a GPU -- a device map over the GPUs, nothing on the host.
    Continuous batching holds its KV cache on one device: inprocess over several visible GPUs is refused."""
    if device == "cpu" or not cfg.spread:
        return Placement(device)
    mem = gpu_max_memory(cfg.gpu_memory)
    if cfg.kind == "inprocess" and len([k for k in mem if k != "cpu"]) > 1:
        raise ConfigError("evaluation.engine: inprocess runs on one GPU (its paged KV cache is one tensor on the "
                          "first device); set gpu_memory to one size, or use kind padded or endpoint")
    return Placement(device, cfg.device_map or "auto", mem)


def fit_check(cfg: EngineConfig, model_dir: str, place: Placement, dtype: torch.dtype, kv_tokens: int | None) -> None:
    """Error before any load when weights (from the shard headers) + KV cache exceed the GPU budget: every
    device of a device map together, else the one device's free memory. Nothing to check on the host."""
    if place.device == "cpu":
        return
    from transformers import AutoConfig

    need = {"weights": weight_bytes(folder_tensors(model_dir), dtype)}
    if kv_tokens:
        mc = AutoConfig.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
        need["KV cache"] = kv_bytes(cfg, kv_bytes_per_token(mc, torch.finfo(dtype).bits // 8), kv_tokens)
    mem = place.max_memory or {0: int(torch.cuda.mem_get_info(torch.device(place.device).index or 0)[0])}
    check_fits(need, mem, f"evaluating {model_dir} in process ({cfg.kind})")


def kv_token_bytes(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """K and V of one token across every layer (GQA: key/value heads, not query heads)."""
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def kv_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """kv_token_bytes of a transformers model config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return kv_token_bytes(text.num_hidden_layers, kv, head_dim, dtype_bytes)


def kv_bytes(cfg: EngineConfig, token_bytes: int, seq_tokens: int) -> int:
    """KV cache of `max_concurrency` sequences of `seq_tokens` (capped by kv_cache_gib: the engine queues)."""
    full = cfg.max_concurrency * seq_tokens * token_bytes
    return min(full, int(cfg.kv_cache_gib * 2**30)) if cfg.kv_cache_gib and cfg.kind == "inprocess" else full


def load(model_dir: str, device: str, model: Any = None, tokenizer: Any = None, cfg: EngineConfig | None = None,
         kv_tokens: int | None = None):
    """(model, tokenizer) in eval mode through the project's one loader (rainmerge.loading): dtype, placement
    and trust_remote_code from the engine config; a GPU budget too small is an error before any load."""
    cfg = cfg or EngineConfig()
    tok = tokenizer if tokenizer is not None else load_tokenizer(model_dir, trust_remote_code=cfg.trust_remote_code)
    if model is None:
        dtype = resolve_dtype(cfg.dtype, device)
        place = placement(cfg, device)
        fit_check(cfg, model_dir, place, dtype, kv_tokens)
        model = load_causal_lm(model_dir, dtype, place, trust_remote_code=cfg.trust_remote_code)
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
