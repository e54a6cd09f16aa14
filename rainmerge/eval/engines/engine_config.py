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
    # where an in-process engine puts the model (rainmerge.loading)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(default="auto", description="weights and "
                                                                      "compute dtype; auto: bfloat16 on a GPU, float32 on CPU")
    trust_remote_code: bool = Field(default=False, description="run the model folder's own code (only if you trust it)")
    device_map: Literal["auto", "balanced", "balanced_low_0", "sequential"] | None = Field(
        default=None, description="spread the layers over the GPUs (accelerate's device map, loaded straight onto "
        "them, nothing on the host); default: the whole model on one device. padded engine for several GPUs")
    gpu_memory: list[str] | None = Field(default=None, description="budget per GPU of the device map, one size per "
                                         "device (e.g. [70GiB, 70GiB]); implies device_map auto")
    # endpoint
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs the started server shards the model over; "
                                      "placeholder {tensor_parallel_size} in `command` (vLLM --tensor-parallel-size)")
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
        self._check_placement()
        return self

    def _check_placement(self) -> None:
        from ...config import parse_bytes

        for size in self.gpu_memory or []:
            parse_bytes(size)
        if self.gpu_memory is not None and not self.gpu_memory:
            raise ValueError("gpu_memory needs one size per device, e.g. [70GiB, 70GiB]")
        if self.kind == "endpoint" and (self.device_map or self.gpu_memory):
            raise ValueError("device_map/gpu_memory place an in-process model; the endpoint's server places its own "
                             "(tensor_parallel_size)")
        if self.kind != "endpoint" and self.tensor_parallel_size > 1:
            raise ValueError("tensor_parallel_size is the endpoint server's; in process spread layers with "
                             "device_map/gpu_memory (engine kind padded)")
        if self.kind == "inprocess" and len(self.gpu_memory or []) > 1:
            raise ValueError("continuous batching keeps its paged KV cache in one tensor on the model's first "
                             "device, so inprocess runs on one GPU: over several use kind padded (generate follows "
                             "the device map) or kind endpoint with tensor_parallel_size")
        tp = command_tensor_parallel(self.command or [])
        if tp is not None and tp != self.tensor_parallel_size:
            raise ValueError(f"the server command shards over {tp} GPUs but tensor_parallel_size is "
                             f"{self.tensor_parallel_size}: write {{tensor_parallel_size}} in the command")

    @property
    def spread(self) -> bool:
        return self.device_map is not None or self.gpu_memory is not None

    @property
    def gpus(self) -> int:
        """GPUs this engine's evaluation uses (the evaluation pods request this many)."""
        if self.kind == "endpoint":
            return self.tensor_parallel_size
        return max(1, len(self.gpu_memory or []))


TP_FLAGS = ("--tensor-parallel-size", "-tp", "--tp-size", "--tp")  # vLLM, vLLM short, SGLang


def command_tensor_parallel(command: list[str]) -> int | None:
    """The literal tensor-parallel size written in a server command (None: absent or a placeholder)."""
    for i, arg in enumerate(command):
        flag, _, value = arg.partition("=")
        if flag in TP_FLAGS:
            value = value or (command[i + 1] if i + 1 < len(command) else "")
            return int(value) if value.isdigit() else None
    return None


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
