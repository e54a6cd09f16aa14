from typing import Annotated, Any

from zenml import step

from rainmerge import stage_steps


@step
def load_models(view: dict, fingerprint: dict, tracking_uri: str, code: str) -> Annotated[dict[str, Any], "models"]:
    """Resolve the trio (revision -> commit) and validate it before any heavy work."""
    return stage_steps.load_models(view, tracking_uri)
