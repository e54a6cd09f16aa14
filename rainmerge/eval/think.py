"""Thinking-format metrics and L_think (KL to the LRM at the think-tag positions)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F


STATUSES = ("ok", "truncated", "malformed")


@dataclass
class Parsed:
    well_formed: bool  # exactly one <think>...</think> block and a non-empty answer after it
    has_think: bool
    close_missing: bool  # opened (or pre-filled) but never closed
    answer: str  # text after the (last) </think>; the whole text when no tag at all
    status: str = "ok"  # "truncated": hit the budget (whatever the tags); "malformed": finished, not well-formed


def parse(completion: str, prefilled_open: bool, finish_reason: str = "stop", open_tag: str = "<think>",
          close_tag: str = "</think>") -> Parsed:
    """Split a completion into think block and answer. `prefilled_open`: the chat template already
    ended the prompt with the opening tag, so the completion starts inside the block. A completion cut
    by the budget is "truncated", never "malformed": running out of tokens is not a format error."""
    if finish_reason not in ("stop", "length"):
        raise ValueError(f"finish_reason must be 'stop' or 'length', got {finish_reason!r}")
    text = (open_tag + "\n" if prefilled_open else "") + completion
    n_open, n_close = text.count(open_tag), text.count(close_tag)
    has = n_open > 0 or n_close > 0
    if n_close:
        answer = text.rsplit(close_tag, 1)[1]
    else:
        answer = "" if n_open else text
    answer = answer.strip()
    ok = n_open == 1 and n_close == 1 and text.index(open_tag) < text.index(close_tag) and bool(answer)
    status = "truncated" if finish_reason == "length" else "ok" if ok else "malformed"
    return Parsed(ok, has, n_open > 0 and n_close == 0, answer, status)


_NUM = re.compile(r"-?\d+")


def extract_number(answer: str) -> int | None:
    m = re.search(r"answer is\s*(-?\d+)", answer, flags=re.I)
    if m:
        return int(m.group(1))
    nums = _NUM.findall(answer)
    return int(nums[-1]) if nums else None


def check_answer(answer: str, gold: int | float | str) -> bool:
    """Integer golds (toy problems): exact match of the stated number. Anything else (real math
    benchmarks): the maintained math-verify parser/verifier (LaTeX, fractions, boxed answers)."""
    if isinstance(gold, int):
        return extract_number(answer) == gold
    from math_verify import parse as mv_parse
    from math_verify import verify as mv_verify

    gold_text = str(gold)
    if "$" not in gold_text and "\\boxed" not in gold_text:
        gold_text = f"${gold_text}$"
    return bool(mv_verify(mv_parse(gold_text), mv_parse(answer)))


@torch.no_grad()
def think_kl(model, lrm, samples, device="cpu") -> float:
    """Mean KL(LRM || model) of next-token distributions at the protected positions of held-out samples."""
    total, n = 0.0, 0
    for s in samples:
        ids = torch.tensor([s.input_ids], device=device)
        pos = torch.tensor(s.positions, device=device)
        p = F.log_softmax(lrm(input_ids=ids).logits[0, pos].float(), -1)
        q = F.log_softmax(model(input_ids=ids).logits[0, pos].float(), -1)
        total += float(F.kl_div(q, p, log_target=True, reduction="sum"))
        n += len(s.positions)
    return total / max(n, 1)
