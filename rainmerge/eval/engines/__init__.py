"""Generation engines for evaluation: one interface (`base.py`), three implementations."""

from .base import (Completion, Engine, Request, SamplingParams, build_engine, finish_reason, read_records,
                   run_requests, sampling_requests)
from .engine_config import EngineConfig, SamplingConfig

__all__ = ["Completion", "Engine", "EngineConfig", "Request", "SamplingConfig", "SamplingParams", "build_engine",
           "finish_reason", "read_records", "run_requests", "sampling_requests"]
