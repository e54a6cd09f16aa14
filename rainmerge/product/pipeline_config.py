"""Pipeline-level settings on top of the merge config: evaluation, promotion gates, Hub, tracking."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ..config import MergeConfig, _Strict, load_config
from ..eval.benchmarks import BenchmarkSpec
from ..eval.engines.engine_config import EngineConfig, SamplingConfig


class EvaluationConfig(_Strict):
    """What is evaluated (pinned benchmarks, or the toy's embedded sets), under which budgets and
    decoding, and where the per-sample records live (a killed evaluation resumes from them)."""

    benchmarks: list[BenchmarkSpec] = Field(default_factory=list, description="pinned evaluation sets; empty: "
                                            "the embedded eval_*.jsonl in `data`")
    data: str | None = Field(default=None, description="folder with eval_*.jsonl; default: next to the calibration")
    limit: int | None = Field(default=None, ge=1, description="first N prompts of each set (smoke runs)")
    device: Literal["cpu", "cuda", "auto"] = Field(default="auto", description="where evaluation generates")
    batch_size: int = Field(default=32, ge=1, description="prompts generated at once")
    max_new_tokens: int = Field(default=160, ge=8, description="generation budget per sample (a benchmark's own "
                                "max_new_tokens overrides it)")
    records_dir: str = Field(default="runs/eval-records", description="per-sample records (JSONL) by content key; "
                             "a killed evaluation resumes here")
    reuse_lrm: bool = Field(default=True, description="reuse the LRM's evaluation from the MLflow store when its "
                            "weights, these settings and the data digests are unchanged")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="how completions are generated")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="decoding: temperature, top-p, "
                                     "samples per prompt, seed")

    @field_validator("benchmarks")
    @classmethod
    def _unique(cls, v: list[BenchmarkSpec]) -> list[BenchmarkSpec]:
        names = [b.name for b in v]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark names must be distinct: {names}")
        return v


class PromotionGates(_Strict):
    """A merged model becomes `champion` only if every gate passes. The gates compare it with the LRM
    evaluated under the same settings on the same prompts, through paired confidence intervals
    (rainmerge/product/gates.py has the rules, the exact arithmetic and the tie rule)."""

    metric: str = Field(default="if_inst_strict", description="the instruction-following metric the gain gate "
                        "and the champion compare")
    min_gain_over_lrm: float = Field(default=0.0, ge=-1, le=1, description="the gain's lower confidence bound "
                                     "(merged - LRM, paired by prompt) must lie above this")
    max_reasoning_drop: float = Field(default=0.02, ge=0, le=1, description="reasoning_acc change's lower "
                                      "bound must not fall below minus this")
    max_truncation_increase: float = Field(default=0.02, ge=0, le=1, description="truncation rate increase's "
                                           "upper bound must stay within this")
    max_malformed_increase: float = Field(default=0.02, ge=0, le=1, description="malformed-think rate "
                                          "increase's upper bound must stay within this")
    floors: dict[str, float] = Field(default_factory=dict, description="optional absolute minimums of the merged "
                                     "model's metrics, e.g. {think_well_formed: 0.9}")
    confidence: float = Field(default=0.95, gt=0.5, lt=1, description="two-sided confidence level of every "
                              "interval (the lower bound is one-sided at (1 + level) / 2)")
    bootstrap_resamples: int = Field(default=2000, ge=200, description="paired bootstrap resamples")
    seed: int = Field(default=0, ge=0, description="seed of the bootstrap, so a decision is reproducible")
    require_beats_champion: bool = Field(default=True, description="promote only if no worse than the champion "
                                         "(a tie passes)")

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        from ..eval.scoring import PAIRED_METRICS

        gain = [m for m in PAIRED_METRICS if m.startswith("if_")]
        if v not in gain:
            raise ValueError(f"unknown promotion metric {v!r}; one of {', '.join(gain)}")
        return v

    @field_validator("floors")
    @classmethod
    def _floors(cls, v: dict[str, float]) -> dict[str, float]:
        from ..eval.scoring import KNOWN_METRICS

        bad = sorted(set(v) - set(KNOWN_METRICS))
        if bad:
            raise ValueError(f"unknown metric(s) in floors: {bad}; known: {', '.join(KNOWN_METRICS)}")
        return v


class HubConfig(_Strict):
    enabled: bool = Field(default=False, description="publish promoted versions to the Hub")
    repo_id: str | None = Field(default=None, description="Hub repo to publish a promoted version to")
    private: bool = Field(default=True, description="create the Hub repo private")
    dry_run: bool = Field(default=True, description="write the folder that would be pushed, push nothing")
    token_env: str = Field(default="HF_TOKEN", description="env var holding the Hub token")
    zenml_secret: str | None = Field(default=None, description="ZenML secret holding key 'token'")
    max_retries: int = Field(default=3, ge=0, description="retries of a failed upload")
    extra_tags: list[str] = Field(default_factory=list, description="extra Hub card tags")


# a model name both registries accept, checked at config load (MLflow refuses '/' and ':' only at
# registration, after the merge and the evaluation); the method suffix of a baseline stays within it
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class TrackingConfig(_Strict):
    tracking_uri: str | None = Field(default=None, description="default: $MLFLOW_TRACKING_URI or ./.mlflow sqlite")
    registered_model: str = Field(default="rainmerge", description="MLflow registered model name "
                                  "(letters, digits, '.', '_', '-'; at most 100)")
    zenml_model: str = Field(default="rainmerge", description="ZenML model name (same characters)")

    @field_validator("registered_model", "zenml_model")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _MODEL_NAME.fullmatch(v):
            raise ValueError(f"'{v}' is not a valid model name: use letters, digits, '.', '_' and '-' (no '/', "
                             "':' or spaces), starting with a letter or digit, at most 100 characters")
        return v


class SweepConfig(_Strict):
    """Strength chosen by the gates: merge at each strength (sharing Stage 1/2), evaluate each, and
    promote the best candidate that passes (ties broken by IF, then L_think)."""

    strengths: list[float] = Field(default_factory=list, description="empty: only `strength`")
    baselines: list[str] = Field(default_factory=list,
                                 description="methods also merged at each strength, for the trade-off plot")

    @field_validator("strengths")
    @classmethod
    def _distinct(cls, v: list[float]) -> list[float]:
        if not all(math.isfinite(x) for x in v):
            raise ValueError(f"strengths must be finite numbers, got {v}")
        if len(set(v)) != len(v):
            raise ValueError("strengths must be distinct")
        return v

    @field_validator("baselines")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from ..method_catalog import METHOD_NAMES, needs_stages

        bad = [m for m in v if m not in METHOD_NAMES or needs_stages(m)]
        if bad:
            raise ValueError(f"baselines must be baseline methods, not {bad}")
        return v


class DiagnosticsConfig(_Strict):
    """The load step's look at the trio: task-vector subspace overlap per module (paper's orthogonality)."""

    overlap: bool = Field(default=True, description="compare the principal subspaces of tau_ITM and tau_LRM")
    rank: int = Field(default=16, ge=1, description="principal directions compared per module")
    warn_ratio: float = Field(default=5.0, gt=0, description="warn when the median overlap exceeds the random "
                              "baseline by this factor")


class PipelineConfig(MergeConfig):
    work_dir: str | None = Field(default=None, description="Kubeflow: shared folder (PVC) for large step outputs")

    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    promotion: PromotionGates = Field(default_factory=PromotionGates)
    hub: HubConfig = Field(default_factory=HubConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)

    def eval_data_dir(self) -> str:
        from ..eval.suite import default_data_dir

        return default_data_dir(self, self.evaluation.data)

    def held_out_file(self) -> str | None:
        from ..eval.suite import held_out_file

        return held_out_file(self)

    def merge_config(self, **update: Any) -> MergeConfig:
        """The merge settings alone (what the merge step and its provenance record), e.g. strength=0.5."""
        return MergeConfig.model_validate(self.model_dump(include=set(MergeConfig.model_fields)) | update)

    def strengths(self) -> list[float]:
        return list(self.sweep.strengths) or [self.strength]


def load_pipeline_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    cfg = load_config(path, overrides, cls=PipelineConfig)
    assert isinstance(cfg, PipelineConfig)
    return cfg
