"""Pipeline-level settings on top of the merge config: evaluation, promotion gates, Hub, tracking."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from .config import RainConfig, _Strict


class EvaluationConfig(_Strict):
    data: str | None = Field(default=None, description="folder with eval_*.jsonl; default: next to the calibration")
    limit: int | None = Field(default=None, ge=1)
    device: Literal["cpu", "cuda", "auto"] = "auto"
    batch_size: int = Field(default=32, ge=1)
    max_new_tokens: int = Field(default=160, ge=8)


class PromotionGates(_Strict):
    """A merged model becomes `champion` only if every gate passes."""

    metric: str = "if_inst_strict"
    min_gain_over_lrm: float = Field(default=0.0, description="metric >= LRM metric + this")
    min_think_well_formed: float = Field(default=0.99, ge=0, le=1)
    max_reasoning_drop: float = Field(default=0.02, ge=0, le=1, description="reasoning_acc >= LRM - this")
    require_beats_champion: bool = True


class HubConfig(_Strict):
    enabled: bool = False
    repo_id: str | None = None
    private: bool = True
    dry_run: bool = True
    token_env: str = "HF_TOKEN"
    zenml_secret: str | None = Field(default=None, description="ZenML secret holding key 'token'")
    max_retries: int = Field(default=3, ge=0)
    extra_tags: list[str] = []


class TrackingConfig(_Strict):
    tracking_uri: str | None = Field(default=None, description="default: $MLFLOW_TRACKING_URI or ./.mlflow sqlite")
    registered_model: str = "rainmerge"
    zenml_model: str = "rainmerge"


class PipelineConfig(RainConfig):
    work_dir: str | None = Field(default=None, description="Kubeflow: shared folder (PVC) for large step outputs")

    def eval_data_dir(self) -> str:
        """evaluation.data, else the folder of the reasoning calibration file (the toy layout)."""
        if self.evaluation.data:
            return self.evaluation.data
        cal = self.reasoning_calibration
        return str(Path(cal.path).parent) if cal is not None and cal.path else "."

    def held_out_file(self) -> str | None:
        """The instruction calibration file whose prompts evaluation must hold out."""
        return self.instruction_calibration.path if self.instruction_calibration else None
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    promotion: PromotionGates = Field(default_factory=PromotionGates)
    hub: HubConfig = Field(default_factory=HubConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
