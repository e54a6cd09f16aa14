from typing import Annotated

from zenml import step

from rainmerge import stage_steps
from rainmerge.artifacts import DirRef

from ._common import payload_dir


@step
def compute_projectors(view: dict, features: DirRef, tracking_uri: str, code: str) -> Annotated[DirRef, "projectors"]:
    """Stage 1: one SVD per feature group (paper Eq. 4), shared by every module reading that input."""
    return stage_steps.compute_projectors(view, features, payload_dir("projectors"), tracking_uri)
