from typing import Annotated, Any

from zenml import step

from rainmerge.config import ModelsSpec
from rainmerge.product.steps import STEPS


@step
def load_models(models: ModelsSpec, fingerprint: dict, tracking_uri: str,
                code: str) -> Annotated[dict[str, Any], "models"]:
    """Resolve the trio (revision -> commit) and validate it before any heavy work."""
    return STEPS["load_models"](models, fingerprint, tracking_uri)
