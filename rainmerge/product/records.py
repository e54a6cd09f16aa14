"""The registry's own record of each version, kept beside MLflow's state so the two can be compared:
the merged weights' digests (per file and overall), an append-only event history (registered, linked,
decided, blocked, pushed, push failed) and the alias positions rainmerge itself set.

Tags, not artifacts: a registered version's tags travel with the registry (file, sqlite or server) and
need no run or artifact store to be read back. History events are one tag each (`history.0001`, ...),
written once and never rewritten, so a re-applied gate adds a verdict instead of replacing one.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import json
import socket
from pathlib import Path
from typing import Any

# files of a merged folder that are not part of its weights' identity: the provenance record holds a
# creation time (two identical merges differ there) and README.md is written only for the Hub
NOT_WEIGHTS = ("rainmerge_provenance.json", "README.md")
CHALLENGER, CHAMPION = "challenger", "champion"
PROMOTED, REJECTED = "promoted", "rejected"
HISTORY = "history."
ALIAS_TAG = "rainmerge.alias."  # registered-model tag: where rainmerge last put this alias
WEIGHTS_SHA, WEIGHTS_FILES = "weights.sha256", "weights.files"


def _client(uri: str | None):
    import mlflow
    from mlflow import MlflowClient

    from .tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(uri))
    return MlflowClient()


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def who(default: str | None = None) -> str:
    """The person or process behind an event: the given name, else OS user@host."""
    if default:
        return default
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def overall(files: dict[str, str]) -> str:
    """One digest over the per-file digests (canonical JSON, sorted by name)."""
    return hashlib.sha256(json.dumps(dict(sorted(files.items())), sort_keys=True).encode()).hexdigest()


def weight_files(files: dict[str, str]) -> dict[str, str]:
    """The weights' share of a folder manifest ({relative path: sha256})."""
    return {k: v for k, v in sorted(files.items()) if Path(k).name not in NOT_WEIGHTS}


def hash_folder(folder: Path) -> dict[str, str]:
    from ..io.lazy import sha256_file

    return weight_files({str(f.relative_to(folder)): sha256_file(f) for f in sorted(folder.rglob("*"))
                         if f.is_file()})


def digest_tags(files: dict[str, str]) -> dict[str, str]:
    files = weight_files(files)
    return {WEIGHTS_SHA: overall(files), WEIGHTS_FILES: json.dumps(files, sort_keys=True)}


# sources an MLflow server holds for us (a remote registry's `runs:/<run>/merged_model`): fetched to re-hash
SERVED = ("runs:/", "mlflow-artifacts:/")


def local_folder(source: str | None) -> Path | None:
    """The folder a version's source names, when it is on this machine's filesystem."""
    if not source or source.startswith(SERVED):
        return None
    if source.startswith("file://"):
        return Path(source.removeprefix("file://"))
    return Path(source) if "://" not in source else None


def verify(source: str | None, tags: dict[str, str]) -> dict[str, Any]:
    """Re-hash the registered weights and compare them with the recorded digests (weights the tracking
    server holds are downloaded through it first: one read of the model, into a temporary folder).
    status: ok | changed | missing (folder gone) | unrecorded (registered before digests) | remote."""
    recorded = json.loads(tags.get(WEIGHTS_FILES) or "{}")
    out: dict[str, Any] = {"status": "ok", "recorded_sha256": tags.get(WEIGHTS_SHA), "changed": [], "missing": [],
                           "added": []}
    if not recorded:
        out.update(status="unrecorded", detail="no weights digest recorded (registered by an older rainmerge)")
        return out
    if source and source.startswith(SERVED):
        import tempfile

        import mlflow

        with tempfile.TemporaryDirectory(prefix="rainmerge-audit-") as tmp:
            try:
                folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp))
            except Exception as exc:  # noqa: BLE001 - the server holds no such artifacts: reported, not raised
                out.update(status="missing", detail=f"registered weights {source} cannot be fetched "
                           f"({type(exc).__name__})", missing=sorted(recorded))
                return out
            return _compare(folder, recorded, out)
    folder = local_folder(source)
    if folder is None:
        out.update(status="remote", detail=f"{source} is not a local folder; not re-hashed here")
        return out
    if not folder.is_dir():
        out.update(status="missing", detail=f"registered folder {folder} is gone", missing=sorted(recorded))
        return out
    return _compare(folder, recorded, out)


def _compare(folder: Path, recorded: dict[str, str], out: dict[str, Any]) -> dict[str, Any]:
    actual = hash_folder(folder)
    out["actual_sha256"] = overall(actual)
    out["changed"] = sorted(k for k in recorded if k in actual and actual[k] != recorded[k])
    out["missing"] = sorted(k for k in recorded if k not in actual)
    out["added"] = sorted(k for k in actual if k not in recorded)
    if out["changed"] or out["missing"] or out["added"]:
        parts = [f"{w}: {', '.join(out[w])}" for w in ("changed", "missing", "added") if out[w]]
        out.update(status="changed", detail=f"weights differ from the recorded sha256 ({'; '.join(parts)})")
    return out


def history(tags: dict[str, str]) -> list[dict[str, Any]]:
    """The version's events, oldest first."""
    events = []
    for k in sorted(k for k in tags if k.startswith(HISTORY)):
        try:
            events.append({"seq": int(k.removeprefix(HISTORY))} | json.loads(tags[k]))
        except ValueError:
            events.append({"seq": k.removeprefix(HISTORY), "event": "unreadable", "raw": tags[k][:200]})
    return events


def append(client: Any, name: str, version: str, event: dict[str, Any]) -> dict[str, Any]:
    """Add one event to the version's history under the next free number (never an existing one)."""
    tags = dict(client.get_model_version(name, version).tags)
    seq = 1 + max((int(k.removeprefix(HISTORY)) for k in tags if k.startswith(HISTORY)
                   and k.removeprefix(HISTORY).isdigit()), default=0)
    event = {"time": now(), "who": who()} | {k: v for k, v in event.items() if v is not None}
    client.set_model_version_tag(name, version, f"{HISTORY}{seq:04d}", json.dumps(event, sort_keys=True))
    return event | {"seq": seq}


def set_alias(client: Any, name: str, alias: str, version: str) -> None:
    """Move an alias and record where rainmerge put it (audit compares the two)."""
    client.set_registered_model_alias(name, alias, str(version))
    client.set_registered_model_tag(name, f"{ALIAS_TAG}{alias}", str(version))


def recorded_aliases(model_tags: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix(ALIAS_TAG): v for k, v in model_tags.items() if k.startswith(ALIAS_TAG)}
