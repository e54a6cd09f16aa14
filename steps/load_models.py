from typing import Annotated

from zenml import step

from rainmerge.config import ModelsSpec
from rainmerge.product.artifacts import LoadedModels
from rainmerge.product.pipeline_config import DiagnosticsConfig
from rainmerge.product.step_bodies import STEPS

from ._common import payload_dir


@step
def load_models(models: ModelsSpec, fingerprint: dict, diagnostics: DiagnosticsConfig, tracking_uri: str,
                code: str) -> Annotated[LoadedModels, "models"]:
    """Resolve the trio (revision -> commit), validate it before any heavy work; task-vector overlap."""
    return STEPS["load_models"](models, fingerprint, tracking_uri, diagnostics, payload_dir("models"))
