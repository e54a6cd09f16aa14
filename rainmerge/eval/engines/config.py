"""Engine and sampling settings (pydantic): the `evaluation.engine` and `evaluation.sampling` sections."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ...config import _Strict


class EngineConfig(_Strict):
    """How completions are generated. `inprocess` (default): transformers continuous batching in this
    process, KV cache sized from the model and the budget. `endpoint`: an OpenAI-compatible
    `/v1/completions` server (vLLM, SGLang, `transformers serve`), given as `url` or started from
    `command`. `padded`: the old left-padded `model.generate` (reference for equality checks)."""

    kind: Literal["inprocess", "endpoint", "padded"] = Field(default="inprocess", description="which engine generates")
    max_concurrency: int = Field(default=64, ge=1, description="requests in flight at once (batch rows, HTTP requests)")
    # continuous batching cache
    kv_cache_gib: float | None = Field(default=None, gt=0, description="cap on the KV cache; default: max_concurrency "
                                       "sequences of prompt + budget tokens")
    page_size: int | None = Field(default=None, ge=4, description="tokens per KV page; default 256 (32 for short budgets)")
    max_batch_tokens: int | None = Field(default=None, ge=16, description="tokens per forward (prefill chunk); default "
                                         "max(2048, max_concurrency)")
    # endpoint
    url: str | None = Field(default=None, description="base URL of a running server, e.g. http://10.0.0.5:8000")
    command: list[str] | None = Field(default=None, description="server command started with the evaluated model; "
                                      "placeholders {model} {host} {port} {served_name}")
    served_model_name: str | None = Field(default=None, description="the `model` field sent; default: the model folder")
    startup_timeout_s: float = Field(default=900.0, gt=0, description="wait this long for a started server's readiness")
    request_timeout_s: float = Field(default=3600.0, gt=0, description="per-request HTTP timeout")
    max_retries: int = Field(default=4, ge=0, description="retries of a transient failure (connection, 429, 5xx)")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="server-specific request fields, e.g. vLLM "
                                       "{skip_special_tokens: false, add_special_tokens: false}")
    api_key_env: str | None = Field(default=None, description="env var holding a bearer token for the endpoint")

    @model_validator(mode="after")
    def _endpoint_source(self) -> "EngineConfig":
        if self.kind == "endpoint" and not (self.url or self.command):
            raise ValueError("engine kind 'endpoint' needs `url` (a running server) or `command` (to start one)")
        if self.url and self.command:
            raise ValueError("give the endpoint either `url` or `command`, not both")
        return self


class SamplingConfig(_Strict):
    """Decoding as reasoning evaluators use it. temperature 0 is greedy (one sample is then enough)."""

    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="0 = greedy; R1 guidance 0.6")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="nucleus mass; R1 guidance 0.95")
    samples: int = Field(default=1, ge=1, description="samples per prompt (pass@1 averaged over them)")
    seed: int = Field(default=0, description="seed of the sampling run (recorded with the results)")

    @model_validator(mode="after")
    def _greedy_one_sample(self) -> "SamplingConfig":
        if self.temperature == 0.0 and self.samples > 1:
            raise ValueError("greedy decoding (temperature 0) gives identical samples: set samples: 1 or temperature > 0")
        return self
