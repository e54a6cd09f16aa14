"""The engine interface: requests in, completions out (as each finishes), and a resumable runner."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from .config import EngineConfig, SamplingConfig

log = logging.getLogger(__name__)

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


class Engine(Protocol):
    name: str

    def generate(self, requests: Sequence[Request]) -> Iterator[Completion]: ...

    def close(self) -> None: ...


def sampling_requests(items: Sequence[tuple[str, str]], sampling: SamplingConfig, max_new_tokens: int) -> list[Request]:
    """(id, rendered prompt) pairs times `sampling.samples`, each sample with its own recorded seed."""
    out = []
    for s in range(sampling.samples):
        params = SamplingParams(max_new_tokens, sampling.temperature, sampling.top_p,
                                None if sampling.temperature == 0 else sampling.seed + s)
        out += [Request(i, p, s, params) for i, p in items]
    return out


def finish_reason(tokens: Sequence[int], eos_ids: set[int], max_new_tokens: int) -> str:
    """'stop' when the last token is an end token, 'length' when the budget ran out before one."""
    if tokens and tokens[-1] in eos_ids:
        return "stop"
    return "length" if len(tokens) >= max_new_tokens else "stop"


def build_engine(cfg: EngineConfig, model_dir: str | os.PathLike, device: str = "cpu", *,
                 model: Any = None, tokenizer: Any = None) -> Engine:
    """The configured engine for one model folder (an already loaded model/tokenizer may be passed in)."""
    if cfg.kind == "padded":
        from .padded import PaddedEngine

        return PaddedEngine(cfg, str(model_dir), device, model=model, tokenizer=tokenizer)
    if cfg.kind == "inprocess":
        from .inprocess import ContinuousEngine

        return ContinuousEngine(cfg, str(model_dir), device, model=model, tokenizer=tokenizer)
    from .endpoint import EndpointEngine

    return EndpointEngine(cfg, str(model_dir))


def read_records(path: Path) -> dict[tuple[str, int], Completion]:
    """Completions already written; a last line cut by a kill is ignored (and rewritten on resume)."""
    done: dict[tuple[str, int], Completion] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            c = Completion(**json.loads(line))
        except (json.JSONDecodeError, TypeError):
            log.warning("ignoring a partial record line in %s", path)
            continue
        done[c.key] = c
    return done


def _rewrite_clean(path: Path, done: dict[tuple[str, int], Completion]) -> None:
    """Drop a torn last line so appends start on a fresh line (atomic replace)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for c in done.values():
            f.write(json.dumps(asdict(c), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def run_requests(engine: Engine, requests: Sequence[Request], records_path: str | os.PathLike,
                 progress_desc: str = "generating", progress: bool = True) -> list[Completion]:
    """Generate every request not already in `records_path` (one JSON line per completion, flushed as
    it arrives, so a killed run resumes at the next unfinished sample); completions in request order."""
    keys = [r.key for r in requests]
    if len(set(keys)) != len(keys):
        raise ValueError("requests must have unique (id, sample) pairs")
    path = Path(records_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wanted = set(keys)
    recorded = read_records(path)
    if path.is_file():
        _rewrite_clean(path, recorded)
    done = {k: c for k, c in recorded.items() if k in wanted}
    todo = [r for r in requests if r.key not in done]
    if done:
        log.info("%s: resuming, %d of %d samples already recorded in %s", progress_desc, len(done), len(keys), path)
    bar = tqdm(total=len(keys), initial=len(done), desc=progress_desc, unit="sample", disable=not progress,
               smoothing=0.05)
    toks = 0
    with path.open("a", encoding="utf-8") as f, bar:
        for c in engine.generate(todo) if todo else ():
            f.write(json.dumps(asdict(c), ensure_ascii=False) + "\n")
            f.flush()
            done[c.key] = c
            toks += c.output_tokens
            bar.update(1)
            bar.set_postfix(tok_s=f"{toks / max(bar.format_dict['elapsed'], 1e-9):.0f}", refresh=False)
    missing = [k for k in keys if k not in done]
    if missing:
        raise RuntimeError(f"{engine.name} returned no completion for {len(missing)} request(s), e.g. {missing[:3]}")
    return [done[k] for k in keys]
