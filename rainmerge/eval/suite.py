"""Evaluate any model folder: instruction following (IFEval checkers), think format, reasoning, L_think."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..calibration import ReasoningRecord, Template, encode_reasoning, load_instruction
from .generate import generate
from .ifeval import aggregate, score_response
from .think import check_answer, parse, think_kl


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


def held_out(items: list[dict[str, Any]], calibration: Path | None) -> list[dict[str, Any]]:
    """Drop evaluation prompts that appear in the instruction calibration set (by id or prompt text)."""
    if calibration is None or not Path(calibration).is_file():
        return items
    recs = load_instruction(Path(calibration))
    ids, prompts = {str(r.id) for r in recs}, {r.prompt for r in recs}
    return [x for x in items if str(x["key"]) not in ids and x["prompt"] not in prompts]


def load_model(path: str | Path, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
    return model, tok


def render(tok, prompt: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def evaluate_model(model_dir: str | Path, data_dir: str | Path, *, lrm_dir: str | Path | None = None,
                   calibration: str | Path | None = None, device: str = "cpu", batch_size: int = 32,
                   limit: int | None = None, max_new_tokens: int = 160, progress: bool = True,
                   name: str | None = None) -> dict[str, Any]:
    data = Path(data_dir)
    model, tok = load_model(model_dir, device)
    name = name or Path(model_dir).name
    probe = render(tok, "x")
    prefilled = probe.rstrip().endswith("<think>")
    instr = held_out(_jsonl(data / "eval_instructions.jsonl"), Path(calibration) if calibration else None)
    probs = _jsonl(data / "eval_problems.jsonl")
    if limit:
        instr, probs = instr[:limit], probs[:limit]

    outs_i = generate(model, tok, [render(tok, x["prompt"]) for x in instr], max_new_tokens, batch_size,
                      progress, f"eval {name}: instructions")
    outs_p = generate(model, tok, [render(tok, x["prompt"]) for x in probs], max_new_tokens, batch_size,
                      progress, f"eval {name}: problems")
    parsed_i = [parse(o, prefilled) for o in outs_i]
    parsed_p = [parse(o, prefilled) for o in outs_p]
    if_results = [score_response(str(x["key"]), x["prompt"], x["instruction_id_list"], x["kwargs"], p.answer)
                  for x, p in zip(instr, parsed_i)]
    correct = [check_answer(p.answer, x["answer"]) for x, p in zip(probs, parsed_p)]
    allp = parsed_i + parsed_p
    n = max(len(allp), 1)
    metrics: dict[str, Any] = {
        "model": name,
        **aggregate(if_results),
        "reasoning_acc": sum(correct) / max(len(correct), 1),
        "think_well_formed": sum(p.well_formed for p in allp) / n,
        "think_present": sum(p.has_think for p in allp) / n,
        "think_close_missing": sum(p.close_missing for p in allp) / n,
        "n_instructions": len(instr), "n_problems": len(probs),
    }
    if lrm_dir is not None and (data / "eval_reasoning_heldout.json").is_file():
        lrm, ltok = load_model(lrm_dir, device)
        held = json.loads((data / "eval_reasoning_heldout.json").read_text())
        recs = [ReasoningRecord.model_validate(r) for r in held]
        samples, _ = encode_reasoning(recs, Template(ltok), "window", 1, 10**6)
        metrics["l_think"] = think_kl(model, lrm, samples, device)
    metrics["examples"] = {"instruction": outs_i[:3], "problem": outs_p[:3]}
    return metrics
