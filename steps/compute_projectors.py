from typing import Annotated

from zenml import step

from rainmerge.config import ProjectionConfig, Runtime
from rainmerge.product.artifacts import DirRef, LoadedModels
from rainmerge.product.step_bodies import STEPS

from ._common import payload_dir


@step
def compute_projectors(models: LoadedModels, features: DirRef, stage1: ProjectionConfig, runtime: Runtime,
                       tracking_uri: str, code: str) -> Annotated[DirRef, "projectors"]:
    """Stage 1: one factorisation per feature group (paper Eq. 4), shared by every module reading it."""
    return STEPS["compute_projectors"](models, features, stage1, runtime, payload_dir("projectors"), tracking_uri)
