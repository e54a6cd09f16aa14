"""The plan's lineage check: what each input is pinned to, and whether the LRM descends from the
configured base (tau_I = ITM - base only transfers instruction tuning onto a model of that base)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .plan_report import Lineage

if TYPE_CHECKING:
    from .sources import ModelMeta

# Published distillation sources (DeepSeek-R1 model card, "DeepSeek-R1-Distill Models" table).
KNOWN_LINEAGE = {
    "deepseek-ai/deepseek-r1-distill-qwen-1.5b": "Qwen/Qwen2.5-Math-1.5B",
    "deepseek-ai/deepseek-r1-distill-qwen-7b": "Qwen/Qwen2.5-Math-7B",
    "deepseek-ai/deepseek-r1-distill-qwen-14b": "Qwen/Qwen2.5-14B",
    "deepseek-ai/deepseek-r1-distill-qwen-32b": "Qwen/Qwen2.5-32B",
    "deepseek-ai/deepseek-r1-distill-llama-8b": "meta-llama/Llama-3.1-8B",
    "deepseek-ai/deepseek-r1-distill-llama-70b": "meta-llama/Llama-3.3-70B-Instruct",
}


def _norm(name: str | None) -> str:
    return (name or "").strip().lower().rstrip("/")


def lineage(metas: Mapping[str, ModelMeta], warnings: list[str], notes: list[str]) -> Lineage:
    """Each input's identity (commit, config and weight digests) and the LRM's declared base (its model
    card, else the published distillation source) against the configured base and ITM."""
    inputs = {}
    for role, m in metas.items():
        r = m.report
        entry: dict[str, Any] = {"source": r.source, "path": r.path, "name": r.name, "revision": r.revision,
                                 "commit": r.commit, "config_sha256": r.config_sha256,
                                 "weights_sha256": {w.name: w.sha256 for w in r.weight_files}}
        inputs[role] = entry
    reasoning, base = metas["reasoning"].report, metas["base"].report
    declared, source = list(reasoning.declared_base), "model card base_model" if reasoning.declared_base else None
    if not declared:
        known = KNOWN_LINEAGE.get(_norm(reasoning.name)) or KNOWN_LINEAGE.get(_norm(reasoning.path))
        if known:
            declared, source = [known], "published distillation source (DeepSeek-R1 model card)"
    lin = Lineage(inputs=inputs, lrm_declared_base=declared, lrm_declared_from=source, configured_base=base.name)
    if declared:
        if not base.name:
            notes.append(f"lineage: the LRM declares base {declared} ({source}); the configured base is a local "
                         "folder that names no origin, so it cannot be compared")
        elif _norm(metas["instruct"].report.name) in {_norm(d) for d in declared}:
            lin.caveat = (f"lineage: the LRM descends from the configured ITM {metas['instruct'].report.name} "
                          f"({source}), not from a base: tau_I = ITM - {base.name} is applied a second time to a "
                          "model that already carries it (the merge re-applies instruction tuning, it does not "
                          "transfer it)")
            warnings.append(lin.caveat)
        elif _norm(base.name) not in {_norm(d) for d in declared}:
            lin.caveat = (f"lineage: the LRM descends from {', '.join(declared)} ({source}), not from the configured "
                          f"base {base.name}; tau_I = ITM - base is applied to a model that shares only a common "
                          "ancestor with that base")
            warnings.append(lin.caveat)
    return lin
