from typing import Annotated, Any

import mlflow
from zenml import step

from rainmerge import workflow
from rainmerge.tracking import flatten, step_run


@step
def load_models(view: dict, fingerprint: dict, tracking_uri: str, code: str) -> Annotated[dict[str, Any], "models"]:
    """Resolve the trio (revision -> commit) and validate it before any heavy work."""
    with step_run("load_models", tracking_uri):
        mlflow.log_params(flatten({"base": view["base"], "instruct": view["instruct"],
                                   "reasoning": view["reasoning"], "layers": view["layers"]}))
        info = workflow.load_models(view)
        mlflow.set_tags({f"input.{r}.commit": str(d["commit"]) for r, d in info["inputs"].items()})
        mlflow.log_dict(info, "models.json")
    return info
