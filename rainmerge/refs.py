"""Where an input comes from: a model (local folder or Hub id and revision) or a calibration file (local
path or pinned URL). The readers (io.lazy, calibration) take these without the whole merge config."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    """Every config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelRef(Strict):
    """A model given as a local directory or a Hub id (with an optional revision)."""

    path: str = Field(description="local model folder or Hub id (owner/name)")
    revision: str | None = Field(default=None, description="Hub branch, tag or commit; resolved to a commit")
    trust_remote_code: bool = Field(default=False, description="run the model repo's own code (only if you trust it)")


class CalibrationRef(Strict):
    """A calibration file: a local path, or a pinned URL whose SHA-256 is verified after download."""

    path: str | None = Field(default=None, description="local calibration file")
    url: str | None = Field(default=None, description="pinned download URL (needs sha256)")
    sha256: str | None = Field(default=None, description="expected SHA-256 of the file (64 hex digits)")
    max_samples: int | None = Field(default=None, ge=1, description="use only the first N records")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", v):
            raise ValueError("sha256 must be 64 hex digits")
        return v.lower() if v else v

    @model_validator(mode="after")
    def _source(self) -> "CalibrationRef":
        if not self.path and not self.url:
            raise ValueError("give a local 'path' or a 'url' (with 'sha256')")
        if self.url and not self.sha256:
            raise ValueError("a calibration 'url' needs its pinned 'sha256'")
        return self
