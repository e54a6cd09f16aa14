"""`rainmerge plan`'s evaluation placement: which engine evaluates, on how many GPUs, and the memory per GPU
(weights from the LRM's metadata, the KV cache from its shape and the budgets), with the checks a run would
otherwise fail minutes in: a model that does not fit the devices, a tensor-parallel size the heads cannot
split. The merged model has the LRM's shapes, so one placement serves both evaluations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..eval.engines.engine_config import EngineConfig
from ..eval.engines.hf import kv_bytes, kv_token_bytes
from ..loading import GPU_USABLE
from ..memory import parse_bytes
from .evaluation import evaluation_section, validated

ASSUMED_PROMPT_TOKENS = 1024  # the longest rendered prompt, for the KV estimate (IFEval/AIME prompts are shorter)
DEFAULT_GPU = 80 * 10**9  # the per-GPU budget assumed when neither the engine nor the merge names one


class EvalPlacement(BaseModel):
    engine: str
    placement: str  # in words
    gpus: int
    dtype: str
    weights_bytes: int  # the whole model at the evaluation dtype
    kv_bytes: int  # in process: the KV cache the engine sizes; endpoint: 0 (the server fills what is left)
    per_gpu_bytes: int
    gpu_budget_bytes: int  # per GPU
    fits: bool
    problems: list[str] = []
    notes: list[str] = []


def _budget(eng: EngineConfig, tree: dict) -> int:
    sizes = eng.gpu_memory or tree.get("gpu_memory") or []
    return min(parse_bytes(s) for s in sizes) if sizes else DEFAULT_GPU


def _longest_budget(ev: dict) -> int:
    default = int(ev.get("max_new_tokens") or 160)
    return max([int(b.get("max_new_tokens") or default) for b in ev.get("benchmarks") or []] or [default])


def placement_from_config(path: str | Path, overrides: dict[str, Any] | None, arch: dict[str, Any] | None,
                          params: int) -> EvalPlacement | None:
    """The placement of a YAML config's `evaluation:` (None for a merge-only config or unknown shapes)."""
    got = evaluation_section(path, overrides)
    if got is None:
        return None
    tree, ev = got
    eng = validated(path, "evaluation.engine", EngineConfig, ev.get("engine"))
    if not arch or not params:
        return None
    device = str(ev.get("device", "auto"))
    dtype = eng.dtype if eng.dtype != "auto" else ("float32" if device == "cpu" else "bfloat16")
    width = 4 if dtype == "float32" else 2
    weights = params * width
    kv_token = kv_token_bytes(arch["num_layers"], arch["num_kv_heads"], arch["head_dim"], width)
    seq = ASSUMED_PROMPT_TOKENS + _longest_budget(ev)
    budget, gpus, problems, notes = _budget(eng, tree), eng.gpus, [], []
    if device == "cpu":
        return EvalPlacement(engine=eng.kind, placement="host (device cpu)", gpus=0, dtype=dtype,
                             weights_bytes=weights, kv_bytes=0, per_gpu_bytes=0, gpu_budget_bytes=0, fits=True)
    if eng.kind == "endpoint":
        kv = 0
        if eng.url:
            where = f"the server at {eng.url} (its own placement; not checked here)"
        else:
            where = f"a started server, tensor parallel over {gpus} GPU(s)"
            if arch["num_heads"] % gpus:
                problems.append(f"tensor_parallel_size {gpus} does not divide the {arch['num_heads']} attention "
                                "heads (vLLM and SGLang shard whole heads)")
        per_gpu = weights // gpus
        notes.append("endpoint: the server fills the rest of each GPU with its KV cache (vLLM "
                     "--gpu-memory-utilization); the evaluation pods request tensor_parallel_size GPUs")
    else:
        full = eng.max_concurrency * seq * kv_token
        kv = kv_bytes(eng, kv_token, seq)
        where = (f"device map over {gpus} GPU(s) (accelerate, loaded straight onto them)" if eng.spread
                 else "one GPU")
        per_gpu = (weights + kv) // gpus
        notes.append(f"KV cache: {eng.max_concurrency} sequences x ({ASSUMED_PROMPT_TOKENS} prompt [assumed] + "
                     f"{_longest_budget(ev)} budget) tokens x {kv_token / 1024:.0f} KiB"
                     + (f", capped by kv_cache_gib {eng.kv_cache_gib}" if kv < full else ""))
        if eng.kind == "inprocess" and eng.kv_cache_gib and kv < seq * kv_token:
            problems.append(f"kv_cache_gib {eng.kv_cache_gib} holds fewer tokens than one sequence ({seq})")
    fits = per_gpu <= GPU_USABLE * budget
    if not fits:
        problems.append(f"{per_gpu / 1e9:.1f} GB per GPU exceeds {GPU_USABLE:g} x {budget / 1e9:.0f} GB: "
                        + ("raise tensor_parallel_size" if eng.kind == "endpoint" else
                           "cap the KV cache (kv_cache_gib, max_concurrency), spread over more GPUs (kind padded, "
                           "gpu_memory), or serve with tensor parallel (kind endpoint)"))
    return EvalPlacement(engine=eng.kind, placement=where, gpus=gpus, dtype=dtype, weights_bytes=weights, kv_bytes=kv,
                         per_gpu_bytes=per_gpu, gpu_budget_bytes=budget, fits=fits and not problems,
                         problems=problems, notes=notes)


def format_placement(p: EvalPlacement) -> str:
    L = ["", f"evaluation placement: engine {p.engine} on {p.placement}, {p.dtype}"]
    if p.gpus:
        L.append(f"  per GPU: ~{p.per_gpu_bytes / 1e9:.1f} GB (weights {p.weights_bytes / 1e9:.1f} GB"
                 + (f" + KV cache {p.kv_bytes / 1e9:.1f} GB" if p.kv_bytes else "") + f" over {p.gpus} GPU(s)) of "
                 f"{p.gpu_budget_bytes / 1e9:.0f} GB each -> {'fits' if p.fits else 'DOES NOT FIT'}")
    L.extend(f"  PROBLEM: {x}" for x in p.problems)
    L.extend(f"  - {n}" for n in p.notes)
    return "\n".join(L)
