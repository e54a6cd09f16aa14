"""Hugging Face Hub publishing: model card, the exact folder to push, one commit + one tag, retries.

The token comes from the environment or a ZenML secret and is only ever handed to HfApi.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from ..eval.report import markdown_table
from ..errors import ConfigError

log = logging.getLogger("rainmerge")


def model_card(config: dict[str, Any], inputs: dict[str, Any], metrics: list[dict[str, Any]], version: str | None,
               extra_tags: list[str] = ()) -> str:
    parents = [inputs[r]["path"] for r in ("base", "instruct", "reasoning")]
    meta = {"base_model": parents, "base_model_relation": "merge", "library_name": "transformers",
            "pipeline_tag": "text-generation",
            "tags": ["merge", "rainmerge", "rain-merging", config.get("method", "rain"), *extra_tags]}
    public_cfg = {k: v for k, v in config.items() if k not in ("output", "cache_dir")}
    def rev(r: str) -> str:
        return inputs[r].get("commit") or inputs[r].get("revision") or "local"

    rows = "\n".join(f"| {r} | `{inputs[r]['path']}` | `{rev(r)}` |" for r in ("base", "instruct", "reasoning"))
    return (f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n"
            f"# RAIN-Merging of `{parents[1]}` into `{parents[2]}`\n\n"
            f"Merged with [rainmerge](https://arxiv.org/abs/2602.22538) (method `{config.get('method')}`"
            f"{', registry version ' + version if version else ''}): "
            "θ = θ_LRM + λ · α ⊙ P⊥(θ_ITM − θ_base).\n\n"
            f"| role | model | revision |\n|---|---|---|\n{rows}\n\n"
            f"## Evaluation\n\n{markdown_table(metrics)}\n\n"
            f"## Configuration\n\n```yaml\n{yaml.safe_dump(public_cfg, sort_keys=True)}```\n\n"
            "`rainmerge_provenance.json` next to the weights records input digests, calibration digests and\n"
            "per-module projection statistics.\n")


def stage_folder(model_dir: Path, card: str, out: Path) -> Path:
    """Write exactly what would be uploaded: the merged files (hard-linked when possible) + README.md."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in sorted(model_dir.iterdir()):
        if f.is_file():
            try:
                os.link(f, out / f.name)
            except OSError:
                shutil.copy2(f, out / f.name)
    (out / "README.md").write_text(card)
    return out


def resolve_token(token_env: str, zenml_secret: str | None) -> str | None:
    tok = os.environ.get(token_env)
    if tok:
        return tok
    if zenml_secret:
        from zenml.client import Client

        return Client().get_secret(zenml_secret).secret_values.get("token")
    return None


def _transient(exc: Exception) -> bool:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) or (status is not None and status >= 500) \
        or status == 429


def push(folder: Path, repo_id: str, token: str, version: str, private: bool = True, max_retries: int = 3,
         api: Any = None) -> dict[str, str]:
    """Create the repo if needed, upload the folder as one commit, tag it `v<version>`."""
    if not token:
        raise ConfigError("Hub push needs a token (set the configured env var or ZenML secret)")
    from huggingface_hub import HfApi

    api = api or HfApi(token=token)
    for attempt in range(max_retries + 1):
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                     commit_message=f"rainmerge: registry version {version}")
            api.create_tag(repo_id, tag=f"v{version}", revision=info.oid, repo_type="model", exist_ok=True)
            return {"repo_id": repo_id, "commit": info.oid, "tag": f"v{version}"}
        except Exception as exc:
            if attempt == max_retries or not _transient(exc):
                raise
            wait = 2 ** attempt
            log.warning("Hub upload failed (%s); retry %d/%d in %ds", type(exc).__name__, attempt + 1,
                        max_retries, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")
