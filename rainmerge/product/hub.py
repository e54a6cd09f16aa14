"""Hugging Face Hub publishing: model card, the exact folder to push, one commit + one tag, retries.

The token comes from the environment or a ZenML secret and is only ever handed to HfApi.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from ..eval.comparison import markdown_table
from ..errors import ConfigError

log = logging.getLogger("rainmerge")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# an absolute path inside a longer string (not the "//" of a URL, not "a/b" Hub ids)
_SEP = r"\s'\"`,;()|<>\[\]{}"
_ABS_IN_TEXT = re.compile(rf"(?:file://|(?<![\w:/.~<-]))/[^{_SEP}/]+/[^{_SEP}]+(?: [^{_SEP}/]+/[^{_SEP}]+)*")
# (a space followed by a word holding another "/" continues the path: "/srv/my models/lrm" is one path)
PROVENANCE_NAME = "rainmerge_provenance.json"


def is_hub_id(path: str) -> bool:
    return bool(_HUB_ID.match(path)) and not os.path.isabs(path) and not Path(path).exists()


def _digest(d: dict[str, Any]) -> str:
    if d.get("weights_sha256"):
        return hashlib.sha256(json.dumps(d["weights_sha256"], sort_keys=True).encode()).hexdigest()
    return str(d.get("config_sha256") or "unknown")


def public_name(d: dict[str, Any]) -> str:
    """How a parent is named in public: its Hub id as is, a local folder as `local:<name> (sha256 <prefix>)`."""
    path = str(d.get("path"))
    if is_hub_id(path):
        return path
    return f"local:{Path(d.get('resolved_dir') or path).name} (sha256 {_digest(d)[:12]})"


def _local(p: str) -> str:
    p = p.removeprefix("file://").rstrip("/")
    return f"local:{Path(p).name or p}"


def _mapping(inputs: dict[str, Any]) -> dict[str, str]:
    """This machine's paths of the inputs -> their public names (longest first when substituted)."""
    out: dict[str, str] = {}
    for d in inputs.values():
        pub = public_name(d)
        commit = d.get("commit")
        for key in (d.get("path"), d.get("resolved_dir")):
            if key and (os.path.isabs(str(key)) or str(key).startswith(".") or Path(str(key)).exists()):
                out[str(key)] = pub if not is_hub_id(str(d.get("path"))) else f"{pub}@{commit or 'local'}"
    return out


def redact(obj: Any, mapping: dict[str, str] | None = None) -> Any:
    """A copy of obj with every absolute path of this machine replaced: known inputs by their public
    name, anything else by `local:<basename>`. Hub ids, URLs and relative names are kept."""
    mapping = mapping or {}
    if isinstance(obj, dict):
        return {k: redact(v, mapping) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, mapping) for v in obj]
    if not isinstance(obj, str):
        return obj
    if obj in mapping:
        return mapping[obj]
    if "\n" not in obj and (os.path.isabs(obj) or obj.startswith("file://")):
        return _local(obj)  # a whole value that is a path (spaces included): its name only
    s = obj
    for k in sorted(mapping, key=len, reverse=True):
        if os.path.isabs(k):
            s = s.replace(k, mapping[k])
    return _ABS_IN_TEXT.sub(lambda m: _local(m.group(0)), s)


_EVAL_METRICS = (("if_inst_strict", "IFEval-type instruction-level strict accuracy"),
                 ("if_prompt_strict", "IFEval-type prompt-level strict accuracy"),
                 ("think_well_formed", "well-formed <think> blocks"), ("reasoning_acc", "reasoning accuracy"))


def model_card(config: dict[str, Any], inputs: dict[str, Any], metrics: list[dict[str, Any]], version: str | None,
               extra_tags: list[str] = (), repo_id: str | None = None) -> str:
    """The Hub's own card classes: validated metadata (`base_model` = the Hub parents, relation `merge`)
    and the merged model's evaluation in model-index form, so it renders as results on the model page.
    Parents are named by Hub id (+ commit) or as `local:<folder> (sha256 ...)`, never by this machine's paths."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    roles = ("base", "instruct", "reasoning")
    names = {r: public_name(inputs[r]) for r in roles}
    hub_parents = [names[r] for r in roles if is_hub_id(str(inputs[r].get("path")))]
    merged = metrics[-1] if metrics else {}
    results = [EvalResult(task_type="text-generation", dataset_type="rainmerge/held-out",
                          dataset_name="rainmerge held-out evaluation (IFEval-type prompts, reasoning problems)",
                          metric_type=key, metric_name=label, metric_value=round(float(merged[key]), 4))
               for key, label in _EVAL_METRICS if isinstance(merged.get(key), (int, float))]
    data = ModelCardData(base_model=hub_parents or None, base_model_relation="merge" if hub_parents else None,
                         library_name="transformers", pipeline_tag="text-generation",
                         tags=["merge", "rainmerge", "rain-merging", config.get("method", "rain"), *extra_tags],
                         model_name=repo_id or f"rainmerge-{config.get('method', 'rain')}",
                         eval_results=results or None)
    mapping = _mapping(inputs)
    public_cfg = redact({k: v for k, v in config.items() if k not in ("output", "cache_dir")}, mapping)

    def rev(r: str) -> str:
        return inputs[r].get("commit") or inputs[r].get("revision") or "local"

    rows = "\n".join(f"| {r} | `{names[r]}` | `{rev(r)}` |" for r in roles)
    body = (f"# RAIN-Merging of `{names['instruct']}` into `{names['reasoning']}`\n\n"
            f"Merged with [rainmerge](https://arxiv.org/abs/2602.22538) (method `{config.get('method')}`"
            f"{', registry version ' + version if version else ''}): "
            "θ = θ_LRM + λ · α ⊙ P⊥(θ_ITM − θ_base).\n\n"
            f"| role | model | revision |\n|---|---|---|\n{rows}\n\n"
            f"## Evaluation\n\n{markdown_table(metrics)}\n\n"
            f"## Configuration\n\n```yaml\n{yaml.safe_dump(public_cfg, sort_keys=True)}```\n\n"
            f"`{PROVENANCE_NAME}` next to the weights records input digests, calibration digests and\n"
            "per-module projection statistics (local paths redacted).\n")
    header = str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n"))
    return redact(header.rstrip("\n") + "\n\n" + body, mapping)


def stage_folder(model_dir: Path, card: str, out: Path, inputs: dict[str, Any] | None = None) -> Path:
    """Write exactly what would be uploaded: the merged files (hard-linked when possible) + README.md, with a
    redacted copy of the provenance. The registered folder itself is never modified (README and provenance
    are written as new files, never through a hard link)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in sorted(model_dir.iterdir()):
        if f.is_file() and f.name not in ("README.md", PROVENANCE_NAME):
            try:
                os.link(f, out / f.name)
            except OSError:
                shutil.copy2(f, out / f.name)
    prov = model_dir / PROVENANCE_NAME
    if prov.is_file():
        data = redact(json.loads(prov.read_text()), _mapping(inputs or {}))
        (out / PROVENANCE_NAME).write_text(json.dumps(data, indent=2, sort_keys=True))
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


def _status(exc: Exception) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def _transient(exc: Exception) -> bool:
    """Worth retrying: a server error, 408/429, or a network failure. An HTTP answer such as 401/403/404
    is final (the Hub's HTTP errors are OSErrors too, so the status decides first), and offline mode
    will not change between tries."""
    from huggingface_hub.errors import OfflineModeIsEnabled

    status = _status(exc)
    if status is not None:
        return status >= 500 or status in (408, 429)
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) and not isinstance(exc, OfflineModeIsEnabled)


def _short(exc: Exception) -> str:
    """One line about a failed push, with no URL query, header or token in it."""
    status = _status(exc)
    what = {401: "401 Unauthorized: the token is missing, invalid or expired",
            403: "403 Forbidden: the token may not write to this repo"}.get(status or 0)
    first = (str(exc).splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}" + (f" ({what})" if what else f" (HTTP {status})" if status else f": {first}")


def check_same_weights(ref: Any, version_tags: dict[str, str]) -> None:
    """The folder to publish holds the registered version's weights (its recorded overall digest)."""
    from . import records

    want = version_tags.get(records.WEIGHTS_SHA)
    if want and records.overall(records.weight_files(ref.files)) != want:
        raise ConfigError(f"the folder {ref.uri} does not hold the registered weights (sha256 {want[:16]}…); "
                          "not publishing")


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
            log.warning("Hub upload failed (%s); retry %d/%d in %ds", _short(exc), attempt + 1, max_retries, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def push_recorded(folder: Path, repo_id: str, token: str | None, name: str, version: str, private: bool,
                  max_retries: int, uri: str | None = None, api: Any = None) -> dict[str, str]:
    """`push`, with the outcome appended to the registered version's history and mirrored in hub.* tags:
    a failed push leaves `hub.status = push_failed` and its reason, then fails in one line."""
    from ..errors import RainMergeError
    from . import records
    from .registry import _client

    c = _client(uri)
    try:
        res = push(folder, repo_id, token or "", version, private, max_retries, api=api)
    except Exception as exc:
        why = _short(exc) if not isinstance(exc, ConfigError) else str(exc)
        records.append(c, name, version, {"event": "push_failed", "repo_id": repo_id, "why": why})
        for k, v in {"hub.status": "push_failed", "hub.repo_id": repo_id, "hub.error": why}.items():
            c.set_model_version_tag(name, version, k, v)
        _describe(name, version, uri)
        raise RainMergeError(f"Hub push of {name} v{version} to {repo_id} failed: {why}; recorded on the "
                             "version (hub.status push_failed); fix it and re-run (nothing was published)") from None
    records.append(c, name, version, {"event": "pushed", "repo_id": repo_id, "commit": res["commit"],
                                      "tag": res["tag"]})
    for k, v in {"hub.status": "pushed", "hub.repo_id": repo_id, "hub.commit": res["commit"],
                 "hub.tag": res["tag"]}.items():
        c.set_model_version_tag(name, version, k, v)
    if "hub.error" in c.get_model_version(name, version).tags:  # an earlier failure, now superseded
        c.delete_model_version_tag(name, version, "hub.error")
    _describe(name, version, uri)
    return res


def _describe(name: str, version: str, uri: str | None) -> None:
    from .describe import refresh_description

    try:
        refresh_description(name, version, uri)
    except Exception as exc:  # noqa: BLE001 - the tags and history already hold the outcome
        log.warning("version description not refreshed: %s", type(exc).__name__)
