"""`rainmerge plan`'s evaluation section: tokens and time the configured evaluation would take, per
engine. Every time here is an ESTIMATE from stated throughput assumptions (ASSUMED_TOKENS_PER_S), not a
measurement: replace them with `benchmarks/gpu_eval_engine.py` figures for your hardware."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from ..overrides import set_dotted
from ..eval.engines.engine_config import EngineConfig, SamplingConfig

# Aggregate decode throughput (output tokens/s) of one 7.6B-parameter model in bf16 on one H100, or on a
# many-core CPU host; scaled by 7.6e9 / params (decode is bound by reading the weights). inprocess and
# endpoint at >= 64 sequences in flight; padded as slot throughput at batch 16 (finished and padded rows
# still cost their slot), from issue 21's figure of ~1.8 h per model at 16 x 4,096 (37 ms per step).
ASSUMED_TOKENS_PER_S = {("inprocess", "cuda"): 2400.0, ("endpoint", "cuda"): 5000.0, ("padded", "cuda"): 430.0,
                        ("inprocess", "cpu"): 12.0, ("endpoint", "cpu"): 12.0, ("padded", "cpu"): 3.0}
REFERENCE_PARAMS = 7.6e9
MAX_SPEEDUP = 6.0  # small models stop being weight-bound: per-step overheads dominate
# engines that free a slot when a sequence ends run on the mean length, not the budget
MEAN_OUTPUT_TOKENS = {"reasoning": 3500, "if": 1500}  # R1-distill-7B-class traces (MATH ~3.2k); assumption
# nominal prompt counts of well-known sets, used when the rows cannot be counted locally
NOMINAL_PROMPTS = {"ifeval": 541, "ifbench": 300, "math500": 500, "math_500": 500, "aime24": 30, "aime25": 30,
                   "aime": 60, "gpqa": 198, "gpqa_diamond": 198}


class EvalWorkload(BaseModel):
    name: str
    kind: str  # "if" | "reasoning"
    prompts: int
    max_new_tokens: int
    prompts_source: str  # "counted" | "nominal" | "limit"


class EngineEstimate(BaseModel):
    engine: str
    device: str
    tokens_per_s: float
    hours_per_model: float
    hours_total: float


class EvaluationEstimate(BaseModel):
    workloads: list[EvalWorkload]
    samples: int
    models: int  # the LRM and each merged candidate
    budget_tokens_per_model: int  # every sample runs to its budget (upper bound)
    expected_tokens_per_model: int  # samples end at the assumed mean length
    configured_engine: str
    device: str
    engines: list[EngineEstimate]
    notes: list[str] = []


def _count_rows(path: Path) -> int | None:
    if path.is_file() and path.suffix == ".jsonl":
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return None


def workloads_from_section(ev: dict[str, Any], base: Path, calibration_dir: Path | None = None) -> tuple[list[EvalWorkload], list[str]]:
    """Benchmarks of an `evaluation:` section (or the toy layout's eval_*.jsonl files) with prompt counts."""
    default_budget = int(ev.get("max_new_tokens") or 160)
    out, notes = [], []
    for b in ev.get("benchmarks") or []:
        n, src = None, "counted"
        for key in ("local", "path"):
            if b.get(key) and n is None:
                p = Path(b[key]) if Path(b[key]).is_absolute() else base / b[key]
                n = _count_rows(p)
        if n is None:
            n, src = NOMINAL_PROMPTS.get(b["name"]), "nominal"
        if b.get("limit"):
            n, src = min(n, b["limit"]) if n else b["limit"], "limit"
        if n is None:
            notes.append(f"benchmark {b['name']}: prompt count unknown offline, left out of the estimate")
            continue
        out.append(EvalWorkload(name=b["name"], kind=b.get("kind", "reasoning"), prompts=n, prompts_source=src,
                                max_new_tokens=int(b.get("max_new_tokens") or default_budget)))
    if not out and not ev.get("benchmarks"):
        data = Path(ev["data"]) if ev.get("data") else calibration_dir
        data = data if data is None or data.is_absolute() else base / data
        for name, kind in (("eval_instructions", "if"), ("eval_problems", "reasoning")):
            n = _count_rows(data / f"{name}.jsonl") if data else None
            if n:
                n = min(n, ev["limit"]) if ev.get("limit") else n
                out.append(EvalWorkload(name=name, kind=kind, prompts=n, max_new_tokens=default_budget,
                                        prompts_source="counted"))
    return out, notes


def estimate_evaluation(workloads: list[EvalWorkload], *, params: int, engine: EngineConfig,
                        sampling: SamplingConfig, device: str, models: int = 2) -> EvaluationEstimate:
    """Tokens (budget-bound and expected) and hours per model for each engine on `device`."""
    dev = "cuda" if device in ("cuda", "auto") else "cpu"
    s = sampling.samples
    budget = sum(w.prompts * s * w.max_new_tokens for w in workloads)
    expected = sum(w.prompts * s * min(w.max_new_tokens, MEAN_OUTPUT_TOKENS.get(w.kind, 2000)) for w in workloads)
    scale = min(REFERENCE_PARAMS / max(params, 1), MAX_SPEEDUP)
    rows = []
    for kind in ("inprocess", "endpoint", "padded"):
        tps = ASSUMED_TOKENS_PER_S[(kind, dev)] * scale
        if kind == "padded":
            # a batch runs until its longest row ends: with long thinkers, nearly always the budget
            batch = engine.max_concurrency if engine.kind == "padded" else 16
            slots = sum(math.ceil(w.prompts * s / batch) * batch * w.max_new_tokens for w in workloads)
            hours = slots / tps / 3600
        else:
            hours = expected / tps / 3600
        rows.append(EngineEstimate(engine=kind, device=dev, tokens_per_s=round(tps, 1), hours_per_model=hours,
                                   hours_total=hours * models))
    notes = [f"ESTIMATES: assumed throughput of a {REFERENCE_PARAMS / 1e9:.1f}B model scaled by parameters "
             f"({params / 1e9:.2f}B here, speed-up capped at {MAX_SPEEDUP:g}x); expected tokens assume mean outputs of {MEAN_OUTPUT_TOKENS} tokens "
             "(capped by each budget); padded pays every budgeted slot of a batch"]
    if models > 1:
        notes.append(f"{models} models: the LRM and the merged model (an LRM evaluation reused from cache costs 0)")
    return EvaluationEstimate(workloads=workloads, samples=s, models=models, budget_tokens_per_model=budget,
                              expected_tokens_per_model=expected, configured_engine=engine.kind, device=dev,
                              engines=rows, notes=notes)


def evaluation_section(path: str | Path, overrides: dict[str, Any] | None) -> tuple[dict, dict] | None:
    """(the YAML tree, its `evaluation:` section) with the `evaluation.*` --set overrides applied; None for a
    merge-only config. `rainmerge plan`'s estimate and placement both read the section through it."""
    tree = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    for key, value in (overrides or {}).items():
        if key.startswith("evaluation.") and value is not None:
            set_dotted(tree, key, value)
    ev = tree.get("evaluation")
    return (tree, ev) if isinstance(ev, dict) else None


def validated(path: str | Path, what: str, model: type[BaseModel], section: dict | None) -> Any:
    """`model` from a section of the config, or a one-line ConfigError naming the file and the key."""
    try:
        return model.model_validate(section or {})
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ConfigError(f"{path}: {what}: {e['msg']} at {'.'.join(map(str, e['loc'])) or 'top level'}") from None


def estimate_from_config(path: str | Path, overrides: dict[str, Any] | None, params: int) -> EvaluationEstimate | None:
    """The estimate for a YAML config's `evaluation:` section (None for a merge-only config)."""
    got = evaluation_section(path, overrides)
    if got is None or not params:
        return None
    tree, ev = got
    engine = validated(path, "evaluation.engine", EngineConfig, ev.get("engine"))
    sampling = validated(path, "evaluation.sampling", SamplingConfig, ev.get("sampling"))
    cal = (tree.get("reasoning_calibration") or {}).get("path") if isinstance(tree.get("reasoning_calibration"),
                                                                              dict) else None
    workloads, notes = workloads_from_section(ev, Path(path).parent, Path(cal).parent if cal else None)
    est = estimate_evaluation(workloads, params=params, engine=engine, sampling=sampling,
                              device=str(ev.get("device", "auto")))
    est.notes = notes + est.notes
    return est


def _dur(hours: float) -> str:
    return f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min" if hours >= 1 / 60 else "< 1 min"


def format_evaluation(est: EvaluationEstimate) -> str:
    L = ["", f"evaluation (ESTIMATES; {est.samples} sample(s) per prompt, {est.models} models, "
         f"configured engine {est.configured_engine}):"]
    for w in est.workloads:
        L.append(f"  {w.name:18s} {w.kind:9s} {w.prompts:6d} prompts ({w.prompts_source}) x budget {w.max_new_tokens}")
    L.append(f"  tokens per model: {est.budget_tokens_per_model:,} if every sample hits its budget, "
             f"~{est.expected_tokens_per_model:,} expected")
    for e in est.engines:
        mark = " <- configured" if e.engine == est.configured_engine else ""
        L.append(f"  {e.engine:9s} on {e.device}: ~{e.tokens_per_s:,.0f} tok/s assumed -> ~{_dur(e.hours_per_model)} "
                 f"per model, ~{_dur(e.hours_total)} in all{mark}")
    L.extend(f"  - {n}" for n in est.notes)
    return "\n".join(L)
