"""Evaluate any model folder: instruction following (IFEval checkers), think format, reasoning, L_think."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..calibration import ReasoningRecord, Template, encode_reasoning
from .benchmarks import Benchmark, embedded_specs, load_benchmark
from .scoring import metrics as scoring_metrics
from .scoring import score
from .think import think_kl


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def default_data_dir(cfg: Any, configured: str | None = None) -> str:
    """The evaluation folder: as configured, else the folder of the reasoning calibration (the toy layout)."""
    if configured:
        return configured
    cal = cfg.reasoning_calibration
    return str(Path(cal.path).parent) if cal is not None and cal.path else "."


def held_out_file(cfg: Any) -> str | None:
    """The instruction calibration file whose prompts evaluation must hold out."""
    return cfg.instruction_calibration.path if cfg.instruction_calibration else None


def load_model(path: str | Path, device: str, dtype: str = "auto", trust_remote_code: bool = False):
    """(model, tokenizer) on `device` through the one loader (rainmerge.loading); dtype auto: bfloat16 on a
    GPU, float32 on the host."""
    from ..loading import Placement, load_causal_lm, load_tokenizer, resolve_dtype

    tok = load_tokenizer(path, trust_remote_code=trust_remote_code)
    model = load_causal_lm(path, resolve_dtype(dtype, device), Placement(device), trust_remote_code=trust_remote_code)
    return model, tok


def render(tok, prompt: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def _l_think(model_dir: str | Path, lrm_dir: str | Path, data_dir: Path, device: str) -> float | None:
    """KL to the LRM at the think-tag positions of the held-out reasoning traces (when the set exists)."""
    if not (data_dir / "eval_reasoning_heldout.json").is_file():
        return None
    model, _ = load_model(model_dir, device)
    lrm, ltok = load_model(lrm_dir, device)
    held = json.loads((data_dir / "eval_reasoning_heldout.json").read_text())
    recs = [ReasoningRecord.model_validate(r) for r in held]
    samples, _ = encode_reasoning(recs, Template(ltok), "window", 1, 10**6)
    return think_kl(model, lrm, samples, device)


def build_requests(tok, benchmarks: list[Benchmark], sampling: Any, max_new_tokens: int) -> list[Any]:
    """Every (prompt, sample) request, each benchmark with its own budget, prompts rendered by the chat template."""
    from .engines.base import sampling_requests

    out = []
    for b in benchmarks:
        items = [(row["id"], render(tok, row["prompt"])) for row in b.rows]
        out += sampling_requests(items, sampling, b.max_new_tokens or max_new_tokens)
    return out


def _longest(tok, requests: list[Any], device: str) -> int | None:
    """Prompt + budget tokens of the longest request (the GPU fit check's KV cache); None on the host."""
    if device == "cpu" or not requests:
        return None
    prompts = {r.prompt for r in requests}
    longest = max(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
    return longest + max(r.params.max_new_tokens for r in requests)


def evaluate_benchmarks(model_dir: str | Path, benchmarks: list[Benchmark], records_path: str | Path, *,
                        engine: Any = None, sampling: Any = None, max_new_tokens: int = 160, device: str = "cpu",
                        lrm_dir: str | Path | None = None, data_dir: str | Path | None = None,
                        progress: bool = True, name: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Generate every sample (resumable from `records_path`), score each, aggregate: (metrics, records).
    metrics carry `paired` (per-prompt units for the gates) and `datasets` (each set's pin and counts)."""
    from .engines.base import build_engine, run_requests
    from .engines.engine_config import EngineConfig, SamplingConfig

    from ..loading import load_tokenizer

    name = name or Path(model_dir).name
    engine = engine or EngineConfig()
    tok = load_tokenizer(model_dir, trust_remote_code=engine.trust_remote_code)
    prefilled = render(tok, "x").rstrip().endswith("<think>")
    requests = build_requests(tok, benchmarks, sampling or SamplingConfig(), max_new_tokens)
    eng = build_engine(engine, str(model_dir), device, tokenizer=tok, kv_tokens=_longest(tok, requests, device))
    try:
        completions = run_requests(eng, requests, records_path, f"eval {name}", progress)
    finally:
        eng.close()
    records = score(benchmarks, completions, prefilled)
    metrics: dict[str, Any] = {"model": name, **scoring_metrics(records)}
    metrics["datasets"] = [b.meta for b in benchmarks]
    if lrm_dir is not None and data_dir is not None:
        lt = _l_think(model_dir, lrm_dir, Path(data_dir), device)
        if lt is not None:
            metrics["l_think"] = lt
    return metrics, records


def evaluate_model(model_dir: str | Path, data_dir: str | Path, *, lrm_dir: str | Path | None = None,
                   calibration: str | Path | None = None, device: str = "cpu", batch_size: int = 32,
                   limit: int | None = None, max_new_tokens: int = 160, progress: bool = True,
                   name: str | None = None, records_path: str | Path | None = None,
                   sets: list[str] | None = None) -> dict[str, Any]:
    """The embedded sets of `data_dir` (eval_instructions/eval_problems.jsonl), greedy, in-process engine;
    `sets` keeps only the named ones (e.g. ["toy_if", "toy_math"], without the enlarged held-out set)."""
    import tempfile

    from .engines.engine_config import EngineConfig

    specs = [s.model_copy(update={"limit": limit}) for s in embedded_specs(data_dir) if sets is None or s.name in sets]
    benchmarks = [load_benchmark(s, calibration) for s in specs]
    with tempfile.TemporaryDirectory() as tmp:
        metrics, records = evaluate_benchmarks(
            model_dir, benchmarks, records_path or Path(tmp) / "records.jsonl",
            engine=EngineConfig(max_concurrency=batch_size), max_new_tokens=max_new_tokens, device=device,
            lrm_dir=lrm_dir, data_dir=data_dir, progress=progress, name=name)
    metrics["examples"] = {b.name: [r["text"] for r in records if r["benchmark"] == b.name][:3] for b in benchmarks}
    return metrics
