"""One validated config drives the YAML files, the CLI and the Python API."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .linears import ALL_MODULES, Module
from .errors import ConfigError
from .memory import parse_bytes
from .method_catalog import MethodName, needs_stages
from .overrides import set_dotted
from .refs import CalibrationRef, ModelRef, Strict as _Strict  # noqa: F401  (ModelRef: re-exported)

Method = MethodName  # one list: rainmerge.method_catalog.CATALOG


class ProjectionConfig(_Strict):
    """Stage 1: the reasoning-aware null-space projection (paper Eq. 4-5).

    Protected subspace rule per feature group (recorded as rule: exact|energy|capped): the whole
    numerical row space of the protected features when its rank fits under the cap
    floor(max_rank_fraction * width) (exact: (W_merged - W_LRM) x = 0); otherwise, if energy_when_capped < 1,
    the leading directions holding that share of the feature energy when they fit (energy); otherwise the
    cap's leading directions (capped). The default stays at the cap: it protected reasoning and the think
    format best on the toy (docs/deviations.md, row 3).
    Rows = samples x positions per sample (tags: 2, window: 2(radius+1)); rows <= cap guarantees exact.
    """

    positions: Literal["tags", "window"] = Field(default="window", description="protected positions: the two tags only, or windows around them")
    radius: int = Field(default=5, ge=0, description="window: <think>..+r and </think>-r..</think>")
    ridge: float = Field(default=1e-10, ge=0, description="per-direction ridge: lambda_i = ridge * s_i^2, so each "
                         "protected direction is removed to within ridge/(1+ridge) whatever its scale")
    energy: float = Field(default=1.0, gt=0, le=1, description="share of feature energy whose directions are removed")
    max_rank_fraction: float = Field(default=0.9, gt=0, le=1, description="cap on removed rank / input width")
    energy_when_capped: float = Field(default=1.0, gt=0, le=1,
                                      description="energy share removed when the exact projector would exceed "
                                                  "the rank cap; 1.0 (default): remove the cap's leading directions "
                                                  "(most protection); 0.99 keeps more of the delta, protects less")
    o_proj: Literal["full", "per_head"] = Field(
        default="full", description="full: project o_proj over its whole input width after per-head scaling "
                                    "(identity exact); per_head: one projector per head block (width head_dim)")
    rank_rtol: float = Field(default=1e-12, ge=0, description="singular values below rtol*max are numerical zero")
    min_kept_norm: float = Field(default=0.05, ge=0, le=1,
                                 description="the one-line summary becomes a warning when a module keeps less")
    solve_dtype: Literal["float64", "float32"] = Field(
        default="float32", description="dtype the bases are stored and applied in (the SVD is always float64); "
        "float32 redoes in float64 any module whose residual misses the exactness tolerance")
    rounding: Literal["compensated", "nearest"] = Field(
        default="compensated", description="the cast of merged weights to a bfloat16/float16 checkpoint: compensated "
        "(GPTQ-style, each column's rounding error pushed into the columns not rounded yet so (W_m - W_LRM) x stays "
        "small at the protected features; rainmerge/rounding.py) or nearest (the plain cast)")
    factorization: Literal["auto", "svd", "gram"] = Field(
        default="auto", description="how the float64 row space of the features is found: svd, or gram (eigh of "
        "the small Gram matrix + QR, GEMM-bound; the left-out share is measured and svd redoes a miss); "
        "auto: gram on CUDA and for large factors on the CPU, svd for small ones")
    max_seq_len: int = Field(default=8192, ge=8, description="longer calibration records are skipped")
    max_skip_fraction: float = Field(default=0.2, ge=0, le=1, description="fail when more records than this share are skipped")

    def basis_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of projection.bases_from_features (after feats, num_heads, head_dim)."""
        return dict(ridge=self.ridge, energy=self.energy, max_rank_fraction=self.max_rank_fraction,
                    rank_rtol=self.rank_rtol, energy_when_capped=self.energy_when_capped, dtype=self.solve_dtype,
                    o_proj=self.o_proj, factorization=self.factorization)


class CoefficientConfig(_Strict):
    """Stage 2: instruction-attention guided coefficients (paper Eq. 11, 14, 15).

    normalize: paper = alpha = clip(g/H, lo, hi) literally ('none' is accepted as its old name);
    mean (default) = g/H divided by its mean over heads before clipping (raw attention averages are
    O(1/T), so the literal ratio clips almost every head to lo). The estimator (paper | two_pass) is
    a separate choice. on_degenerate: what a non-finite or non-positive mean gain does -- uniform
    (alpha = 1, a recorded warning; the Stage-1-only merge) or fail (an error).
    """

    enabled: bool = Field(default=True, description="false: uniform alpha (the Stage-1-only ablation)")
    estimator: Literal["paper", "two_pass"] = Field(default="paper", description="g and H at the probe merge (paper) or by finite differences (the reference)")
    rho: float = Field(default=0.5, ge=0, description="weight of leakage against alignment (Eq. 11)")
    lo: float = Field(default=0.0, description="alpha lower clip")
    hi: float = Field(default=1.5, description="alpha upper clip")
    normalize: Literal["mean", "layer_mean", "paper"] = Field(
        default="mean", description="mean: g/H divided by its mean over all heads before clipping; layer_mean: by "
        "each layer's mean; paper: the literal clip(g/H)")
    on_degenerate: Literal["uniform", "fail"] = Field(default="uniform", description="no usable attention signal: uniform alpha (recorded) or stop")
    h_lambda: float = Field(default=1.0, ge=0, description="two_pass curvature constant")
    h_mu: float = Field(default=1.0, ge=0, description="two_pass curvature weight of leakage")
    span_region: Literal["response", "output"] = Field(default="response", description="where response spans are searched: the answer, or reasoning + answer")
    max_seq_len: int = Field(default=8192, ge=8, description="longer calibration records are skipped")
    max_skip_fraction: float = Field(default=0.2, ge=0, le=1, description="fail when more records than this share are skipped")
    row_chunk: int = Field(default=256, ge=1, description="query rows scored at once (bounds memory)")

    @field_validator("normalize", mode="before")
    @classmethod
    def _normalize_alias(cls, v: Any) -> Any:
        return "paper" if v == "none" else v

    @model_validator(mode="after")
    def _box(self) -> "CoefficientConfig":
        if self.lo > self.hi:
            raise ValueError(f"lo ({self.lo}) must not exceed hi ({self.hi})")
        return self

    def solver_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of coefficients.solve_stage2 (after a1, u1, a0=, u0=)."""
        return dict(estimator=self.estimator, rho=self.rho, h_lambda=self.h_lambda, h_mu=self.h_mu, lo=self.lo,
                    hi=self.hi, normalize=self.normalize, on_degenerate=self.on_degenerate)


class MergeConfig(_Strict):
    """Everything one merge needs. Hub ids and revisions are resolved and recorded in provenance."""

    base: ModelRef
    instruct: ModelRef
    reasoning: ModelRef
    reasoning_calibration: CalibrationRef | None = None
    instruction_calibration: CalibrationRef | None = None
    output: str | None = Field(default=None, description="merged model folder (the merge CLI; pipelines write "
                               "to their artifact store)")
    overwrite: bool = False
    method: Method = Field(default="rain", description="merge method (rainmerge.methods.METHODS)")
    strength: float = Field(default=1.0, allow_inf_nan=False,
                            description="global lambda in theta = theta_LRM + lambda*alpha*P(tau)")
    density: float = Field(default=0.5, gt=0, le=1, description="TIES/DARE keep ratio")
    layers: list[int] | None = Field(default=None, description="decoder layers to merge; default all")
    modules: list[Module] = Field(default_factory=lambda: list(ALL_MODULES))
    seed: int = Field(default=42, description="DARE's random seed")
    device: Literal["cpu", "cuda", "auto"] = Field(default="auto", description="where forwards and projections run")
    forward_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="dtype of the LRM's forwards (auto: bf16 on GPU, fp32 on CPU)")
    stages_path: Literal["auto", "whole", "sequential"] = Field(
        default="auto", description="Stages 1-2 on the whole model (one forward per sample) or layer by layer "
        "(one decoder layer in memory; rainmerge/sequential.py); auto: whole when its estimate fits the GPU "
        "memory seen (or gpu_memory), else sequential. `rainmerge plan` shows both and the choice")
    hidden_states: Literal["auto", "device", "host", "disk"] = Field(
        default="auto", description="layer-sequential path: where the calibration set's hidden states wait "
        "between layers; auto: the device, else the host, else spill_dir, whichever fits")
    spill_dir: str | None = Field(default=None, description="folder for spilled hidden states (default: the "
                                  "system temp folder)")
    gpu_memory: list[str] | None = Field(
        default=None, description="GPU memory per device the merge may use, e.g. [70GiB, 70GiB]: the budget the "
        "path choice and the plan use, and the whole-model path's device_map max_memory (its layers spread "
        "over these devices); default: what torch sees free")
    think_open: str = Field(default="<think>", description="the LRM's think-open tag")
    think_close: str = Field(default="</think>", description="the LRM's think-close tag")
    append_think_prefix: bool = Field(default=False, description="for old templates without the <think> prefill")
    max_shard_size: str = Field(default="5GB", description="safetensors shard size of the output")
    hash_inputs: bool = Field(default=True, description="sha256 every input weight file for lineage")
    cache_dir: str | None = Field(default=None, description="where downloaded calibration files are kept")
    stage1: ProjectionConfig = Field(default_factory=ProjectionConfig)
    stage2: CoefficientConfig = Field(default_factory=CoefficientConfig)

    @field_validator("gpu_memory")
    @classmethod
    def _gpu_memory(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("gpu_memory needs one size per device, e.g. [70GiB]")
            for x in v:
                parse_bytes(x)
        return v

    @field_validator("modules")
    @classmethod
    def _modules(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("modules must name at least one of " + ", ".join(ALL_MODULES))
        if len(set(v)) != len(v):
            raise ValueError("modules has duplicates")
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v or min(v) < 0 or len(set(v)) != len(v):
                raise ValueError("layers must be distinct, non-negative and non-empty")
            v = sorted(v)
        return v

    def models_spec(self) -> ModelsSpec:
        return ModelsSpec(base=self.base, instruct=self.instruct, reasoning=self.reasoning, layers=self.layers,
                          modules=self.modules, hash_inputs=self.hash_inputs)

    def runtime(self) -> Runtime:
        return Runtime(device=self.device, forward_dtype=self.forward_dtype, stages_path=self.stages_path,
                       hidden_states=self.hidden_states, spill_dir=self.spill_dir, gpu_memory=self.gpu_memory)

    def calibration_spec(self) -> CalibrationSpec:
        assert self.reasoning_calibration is not None, "only RAIN builds calibration sets"
        s1, s2 = self.stage1, self.stage2
        return CalibrationSpec(
            reasoning_calibration=self.reasoning_calibration, instruction_calibration=self.instruction_calibration,
            think_open=self.think_open, think_close=self.think_close,
            append_think_prefix=self.append_think_prefix, cache_dir=self.cache_dir, positions=s1.positions,
            radius=s1.radius, reasoning_max_seq_len=s1.max_seq_len, reasoning_max_skip_fraction=s1.max_skip_fraction,
            with_instruction=s2.enabled, span_region=s2.span_region, instruction_max_seq_len=s2.max_seq_len,
            instruction_max_skip_fraction=s2.max_skip_fraction)

    @model_validator(mode="after")
    def _calibration_for_rain(self) -> "MergeConfig":
        if needs_stages(self.method) and self.reasoning_calibration is None:
            raise ValueError(f"method {self.method!r} needs reasoning_calibration (Stage 1)")
        if needs_stages(self.method) and self.stage2.enabled and self.instruction_calibration is None:
            raise ValueError(f"method {self.method!r} needs instruction_calibration (Stage 2), or set stage2.enabled: false")
        return self


class ModelsSpec(_Strict):
    """What `open_models` reads: the trio and which of its tensors are merged."""

    base: ModelRef
    instruct: ModelRef
    reasoning: ModelRef
    layers: list[int] | None = None
    modules: list[Module] = Field(default_factory=lambda: list(ALL_MODULES))
    hash_inputs: bool = True


class Runtime(_Strict):
    """Where the forward passes run."""

    device: Literal["cpu", "cuda", "auto"] = "auto"
    forward_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    stages_path: Literal["auto", "whole", "sequential"] = "auto"
    hidden_states: Literal["auto", "device", "host", "disk"] = "auto"
    spill_dir: str | None = None
    gpu_memory: list[str] | None = None


class CalibrationSpec(_Strict):
    """What building the calibration sets reads: the files, the template's think tags and how the
    protected positions (Stage 1) and spans (Stage 2) are located."""

    reasoning_calibration: CalibrationRef
    instruction_calibration: CalibrationRef | None
    think_open: str
    think_close: str
    append_think_prefix: bool
    cache_dir: str | None
    positions: Literal["tags", "window"]
    radius: int
    reasoning_max_seq_len: int
    reasoning_max_skip_fraction: float
    with_instruction: bool
    span_region: Literal["response", "output"]
    instruction_max_seq_len: int
    instruction_max_skip_fraction: float


def _relative_to(tree: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Model and calibration paths in a YAML file are relative to that file when they exist there
    (anything else, e.g. a Hub id like Qwen/Qwen2.5-7B, is left as written)."""
    for role in ("base", "instruct", "reasoning", "reasoning_calibration", "instruction_calibration"):
        node = tree.get(role)
        if isinstance(node, str):
            node = tree[role] = {"path": node}
        if isinstance(node, dict) and isinstance(node.get("path"), str) and not Path(node["path"]).is_absolute():
            candidate = (folder / node["path"]).resolve()
            if candidate.exists():
                node["path"] = str(candidate)
    ev = tree.get("evaluation")
    for node in (ev.get("benchmarks") or []) if isinstance(ev, dict) else []:
        for key in ("path", "local"):  # local copies of benchmark sets, e.g. ../assets/toy/data/...
            if isinstance(node, dict) and isinstance(node.get(key), str) and not Path(node[key]).is_absolute():
                candidate = (folder / node[key]).resolve()
                if candidate.exists():
                    node[key] = str(candidate)
    return tree


# Sections of a pipeline YAML that belong to the product layer (rainmerge.product.pipeline_config); the merge
# library reads the same file and leaves them to it, so one YAML drives `merge` and `run`.
PIPELINE_SECTIONS = ("evaluation", "promotion", "hub", "tracking", "work_dir", "sweep", "diagnostics")


# the name before MergeConfig (it configures every method, not only RAIN); kept so Python callers keep working
RainConfig = MergeConfig


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                cls: type[MergeConfig] | None = None) -> MergeConfig:
    """Read YAML (optional), apply dotted-key overrides (the CLI flags), validate once as `cls`
    (default MergeConfig, which ignores the pipeline sections)."""
    tree: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {p} is not UTF-8 text (bad byte at offset {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise ConfigError(f"config file {p}: YAML syntax error{where}: {what}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        tree = _relative_to(loaded, p.parent)
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(tree, key, value)
    for role in ("base", "instruct", "reasoning"):
        if isinstance(tree.get(role), str):
            tree[role] = {"path": tree[role]}
    for role in ("reasoning_calibration", "instruction_calibration"):
        if isinstance(tree.get(role), str):
            tree[role] = {"path": tree[role]}
    if cls is None:
        cls = MergeConfig
        tree = {k: v for k, v in tree.items() if k not in PIPELINE_SECTIONS}
    try:
        return cls.model_validate(tree)
    except ValidationError as exc:
        items = [f"{'.'.join(str(x) for x in e['loc']) or '<root>'}: {' '.join(str(e['msg']).split())}"
                 for e in exc.errors()]
        where = f" ({path})" if path is not None else ""
        raise ConfigError(f"invalid configuration{where}: " + "; ".join(items)) from None
