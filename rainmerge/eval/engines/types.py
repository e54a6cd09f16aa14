"""The records engines exchange: sampling settings, a request, a completion (no engine code here, so
every engine can import them without importing the factory in base.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

FINISH_REASONS = ("stop", "length")


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Request:
    id: str  # stable prompt id, e.g. "ifeval/1043"
    prompt: str  # rendered chat text (template applied, generation prompt added)
    sample: int = 0  # 0..n_samples-1
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=256))

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.sample)


@dataclass
class Completion:
    id: str
    sample: int
    text: str  # decoded new tokens, special tokens kept (think tags visible), EOS stripped
    prompt_tokens: int
    output_tokens: int  # generated tokens, EOS included when generated
    finish_reason: str  # "stop" (EOS/stop) or "length" (hit max_new_tokens)

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.sample)


def finish_reason(tokens: Sequence[int], eos_ids: set[int], max_new_tokens: int) -> str:
    """'stop' when the last token is an end token, 'length' when the budget ran out before one."""
    if tokens and tokens[-1] in eos_ids:
        return "stop"
    return "length" if len(tokens) >= max_new_tokens else "stop"
