"""The engine interface: requests in, completions out (as each finishes), and a resumable runner."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from tqdm.auto import tqdm

from .engine_config import EngineConfig, SamplingConfig
from .types import FINISH_REASONS, Completion, Request, SamplingParams, finish_reason

log = logging.getLogger(__name__)

__all__ = ["FINISH_REASONS", "Completion", "Engine", "Request", "SamplingParams", "build_engine", "finish_reason",
           "read_records", "run_requests", "sampling_requests"]


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


def build_engine(cfg: EngineConfig, model_dir: str | os.PathLike, device: str = "cpu", *,
                 model: Any = None, tokenizer: Any = None, kv_tokens: int | None = None) -> Engine:
    """The configured engine for one model folder (an already loaded model/tokenizer may be passed in).
    kv_tokens: the longest sequence (prompt + budget) expected, for the in-process fit check before loading."""
    if cfg.kind == "padded":
        from .padded import PaddedEngine

        return PaddedEngine(cfg, str(model_dir), device, model=model, tokenizer=tokenizer, kv_tokens=kv_tokens)
    if cfg.kind == "inprocess":
        from .inprocess import ContinuousEngine

        return ContinuousEngine(cfg, str(model_dir), device, model=model, tokenizer=tokenizer, kv_tokens=kv_tokens)
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
