"""Metadata of one model, local or on the Hub: config, index, shard headers, sizes, commit and the
small tokenizer/template files; never a weight byte."""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any


from ..config import ModelRef
from ..errors import CorruptInputError
from ..io.lazy import DTYPE_BYTES
from .checks import shard_tensors
from .plan_report import InputReport, Problem, WeightFile

# what ModelSource downloads for a Hub id (rainmerge.io.lazy._HUB_PATTERNS), i.e. what a merge fetches
FETCH_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken")
# small files the plan itself may fetch from the Hub (never weights)
SMALL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
               "vocab.json", "merges.txt", "tokenizer.model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_SMALL_LIMIT = 64 << 20  # refuse to "metadata-fetch" anything larger


def file_digest(path: Path) -> str:
    """sha256 of a file, memoised per (inode, size, mtime) for repeated plans in one process."""
    from ..io.lazy import sha256_files

    return sha256_files([path])[0]


# ---------------------------------------------------------------------------------------------------
# reading one input's metadata


class ModelMeta:
    """What the plan learned about one model, whatever the source."""

    def __init__(self, role: str, ref: ModelRef):
        self.role, self.ref = role, ref
        self.report = InputReport(role=role, path=ref.path, source="unresolved", revision=ref.revision)
        self.config: dict[str, Any] | None = None
        self.tensors: dict[str, tuple[tuple[int, ...], str]] = {}
        self.small_dir: Path | None = None  # folder with config + tokenizer files
        self.card_base: list[str] = []


def _is_hub_id(s: str) -> bool:
    return not s.startswith((".", "/", "~")) and s.count("/") == 1 and not Path(s).expanduser().exists()


def _card_base_models(readme: Path) -> list[str]:
    """`base_model` from a model card's YAML front matter (str or list)."""
    try:
        text = readme.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return []
    import yaml

    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError:
        return []
    bm = meta.get("base_model") if isinstance(meta, dict) else None
    return [bm] if isinstance(bm, str) else [str(x) for x in bm] if isinstance(bm, list) else []


def _read_local(meta: ModelMeta, root: Path, problems: list[Problem], hash_weights: bool) -> None:
    """A model folder: config.json, the weight files (index or glob) and each shard's header, the card."""
    meta.report.resolved_dir = str(root)
    _read_local_config(meta, root, problems)
    meta.small_dir = root
    for f in _local_weight_files(meta.role, root, problems):
        _read_local_shard(meta, f, problems, hash_weights)
    readme = root / "README.md"
    meta.card_base = _card_base_models(readme) if readme.is_file() else []


def _read_local_config(meta: ModelMeta, root: Path, problems: list[Problem]) -> None:
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        problems.append(Problem(code="missing_file", role=meta.role, message=f"{root} has no config.json"))
        return
    try:
        meta.config = json.loads(cfg_path.read_text())
        meta.report.config_sha256 = file_digest(cfg_path)
    except json.JSONDecodeError as exc:
        problems.append(Problem(code="bad_config", role=meta.role, message=f"config.json is not valid JSON "
                                f"({exc.msg} at line {exc.lineno}, column {exc.colno})"))
    except OSError as exc:
        problems.append(Problem(code="bad_config", role=meta.role, message=f"config.json: {exc}"))


def _local_weight_files(role: str, root: Path, problems: list[Problem]) -> list[Path]:
    """The safetensors files: the index's (inside the folder only), else every *.safetensors."""
    index = root / "model.safetensors.index.json"
    files = _index_files(role, root, index, problems) if index.is_file() else sorted(root.glob("*.safetensors"))
    if not files:
        pick = list(root.glob("*.bin")) + list(root.glob("*.pt"))
        hint = " (only pickle weights found; convert them to safetensors first)" if pick else ""
        problems.append(Problem(code="no_weights", role=role, message=f"no safetensors weights in {root}{hint}"))
    return files


def _index_files(role: str, root: Path, index: Path, problems: list[Problem]) -> list[Path]:
    try:
        wm = json.loads(index.read_text())["weight_map"]
        files = sorted({root / v for v in wm.values()})
        outside = sorted({v for v in wm.values() if not (root / v).resolve().is_relative_to(root.resolve())})
        if outside:  # never read a file the index names outside the model folder
            problems.append(Problem(code="corrupt_index", role=role, message=f"weight index {index.name} "
                                    f"points outside the model folder: {', '.join(outside)}"))
            files = [f for f in files if f.resolve().is_relative_to(root.resolve())]
        return files
    except json.JSONDecodeError as exc:
        problems.append(Problem(code="corrupt_index", role=role, message=f"weight index {index.name} is not "
                                f"valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"))
    except (OSError, KeyError, AttributeError, TypeError) as exc:
        problems.append(Problem(code="corrupt_index", role=role, message=f"weight index {index.name}: {exc}"))
    return sorted(root.glob("*.safetensors"))


def _read_local_shard(meta: ModelMeta, f: Path, problems: list[Problem], hash_weights: bool) -> None:
    wf = WeightFile(name=f.name, cached=True)
    meta.report.weight_files.append(wf)
    if not f.is_file():
        problems.append(Problem(code="missing_file", role=meta.role,
                                message=f"{f.name} is listed in the index but missing"))
        return
    wf.size = f.stat().st_size
    try:  # the header check the merge start runs again on the opened models
        tensors = shard_tensors(f, meta.role)
    except CorruptInputError as exc:
        problems.append(Problem(code="corrupt_header", role=meta.role,
                                message=str(exc).removeprefix(f"{meta.role}: ")))
        return
    _add_tensors(meta, tensors, f.name, problems)
    if hash_weights:
        wf.sha256, wf.sha256_source = file_digest(f), "local"
    else:
        wf.sha256_source = "not-computed"


def _add_tensors(meta: ModelMeta, tensors: dict[str, tuple[tuple[int, ...], str]], fname: str,
                 problems: list[Problem]) -> None:
    for name, v in tensors.items():
        if name in meta.tensors:
            problems.append(Problem(code="duplicate_tensor", role=meta.role,
                                    message=f"tensor {name} appears in two weight files ({fname})"))
        meta.tensors[name] = v


def _lfs_sha(sib: Any) -> str | None:
    lfs = getattr(sib, "lfs", None)
    if lfs is None:
        return None
    if isinstance(lfs, dict):
        return lfs.get("sha256")
    return getattr(lfs, "sha256", None)


def _read_hub(meta: ModelMeta, api: Any, problems: list[Problem], fetched: list[str], workdir: Path,
              want_tokenizer: bool) -> None:
    """A Hub id: the commit and file list (model_info), the small files into `workdir`, the shard headers
    (get_safetensors_metadata, HTTP range reads), and what a merge would download; never a weight byte."""
    r, repo = meta.report, meta.ref.path
    r.source, r.name = "hub", repo
    try:
        info = api.model_info(repo, revision=meta.ref.revision, files_metadata=True)
    except Exception as exc:  # the hub raises many types: offline, gated, missing revision
        problems.append(Problem(code="hub_error", role=meta.role,
                                message=f"cannot read '{repo}@{meta.ref.revision or 'main'}': {exc}"))
        return
    r.commit = getattr(info, "sha", None)
    siblings = {s.rfilename: s for s in (getattr(info, "siblings", None) or [])}
    card = getattr(info, "card_data", None)
    bm = card.get("base_model") if isinstance(card, dict) else getattr(card, "base_model", None)
    meta.card_base = [bm] if isinstance(bm, str) else list(bm or [])
    rev = r.commit or meta.ref.revision  # everything after model_info at the resolved commit
    _fetch_small_files(meta, api, siblings, rev, workdir / meta.role, want_tokenizer, problems, fetched)
    _read_hub_headers(meta, api, siblings, rev, problems)
    r.download_bytes = _download_bytes(meta, siblings, rev)


def _fetch_small_files(meta: ModelMeta, api: Any, siblings: dict[str, Any], rev: str | None, folder: Path,
                       want_tokenizer: bool, problems: list[Problem], fetched: list[str]) -> None:
    """config.json (and, for the LRM, the tokenizer and template files) into `folder`; reads the config."""
    repo = meta.ref.path
    folder.mkdir(parents=True, exist_ok=True)
    meta.small_dir = folder
    wanted = ["config.json"] + ([f for f in SMALL_FILES if f != "config.json"] if want_tokenizer else [])
    for fname in wanted:
        if siblings and fname not in siblings:
            continue
        size = getattr(siblings.get(fname), "size", None)
        if fname.endswith(_WEIGHT_SUFFIXES) or (size or 0) > _SMALL_LIMIT:
            continue
        try:
            local = api.hf_hub_download(repo, fname, revision=rev)
        except Exception as exc:
            if fname == "config.json":
                problems.append(Problem(code="hub_error", role=meta.role, message=f"cannot fetch config.json: {exc}"))
            continue
        fetched.append(f"{repo}:{fname}")
        shutil.copyfile(local, folder / fname)
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        try:
            meta.config = json.loads(cfg_path.read_text())
            from ..io.lazy import sha256_file

            meta.report.config_sha256 = sha256_file(cfg_path)
        except json.JSONDecodeError as exc:
            problems.append(Problem(code="bad_config", role=meta.role, message=f"config.json: {exc}"))


def _read_hub_headers(meta: ModelMeta, api: Any, siblings: dict[str, Any], rev: str | None,
                      problems: list[Problem]) -> None:
    repo = meta.ref.path
    try:
        st = api.get_safetensors_metadata(repo, revision=rev)
    except Exception as exc:
        code = "corrupt_header" if "pars" in type(exc).__name__.lower() or "header" in str(exc).lower() else "no_weights"
        problems.append(Problem(code=code, role=meta.role, message=f"safetensors metadata of '{repo}': {exc}"))
        return
    for fname in sorted(st.files_metadata):
        fm = st.files_metadata[fname]
        _add_tensors(meta, {n: (tuple(t.shape), t.dtype) for n, t in fm.tensors.items()}, fname, problems)
    for fname in sorted(set(st.weight_map.values()) | set(st.files_metadata)):
        sib = siblings.get(fname)
        meta.report.weight_files.append(WeightFile(name=fname, size=getattr(sib, "size", None), sha256=_lfs_sha(sib),
                                                   sha256_source="hub-lfs" if _lfs_sha(sib) else None))


def _download_bytes(meta: ModelMeta, siblings: dict[str, Any], rev: str | None) -> int:
    """What a merge would download: ModelSource's patterns, minus what the HF cache already holds (and
    marks each weight file cached or not)."""
    from huggingface_hub import try_to_load_from_cache

    total = 0
    for fname, sib in siblings.items():
        if not any(fnmatch.fnmatch(fname, p) for p in FETCH_PATTERNS):
            continue
        cached = _cached(try_to_load_from_cache, meta.ref.path, fname, rev)
        for wf in meta.report.weight_files:
            if wf.name == fname:
                wf.cached = cached
        if not cached:
            total += int(getattr(sib, "size", None) or 0)
    return total


def _cached(fn: Any, repo: str, fname: str, rev: str | None) -> bool:
    try:
        return isinstance(fn(repo, fname, revision=rev), str)
    except Exception:
        return False


def _read_offline_cache(meta: ModelMeta, problems: list[Problem], hash_weights: bool) -> None:
    """HF_HUB_OFFLINE=1 and no api given: use the local HF cache snapshot if there is one."""
    from huggingface_hub import try_to_load_from_cache

    repo = meta.ref.path
    hit = try_to_load_from_cache(repo, "config.json", revision=meta.ref.revision)
    if not isinstance(hit, str):
        problems.append(Problem(code="hub_error", role=meta.role,
                                message=f"'{repo}@{meta.ref.revision or 'main'}' is not in the local HF cache "
                                        "and HF_HUB_OFFLINE=1"))
        meta.report.source = "unresolved"
        return
    root = Path(hit).parent
    _read_local(meta, root, problems, hash_weights)
    meta.report.source, meta.report.commit, meta.report.name = "hub-cache", root.name, repo


def read_metadata(role: str, ref: ModelRef, api: Any, problems: list[Problem], fetched: list[str], workdir: Path,
                  hash_weights: bool, want_tokenizer: bool) -> ModelMeta:
    """One input's metadata, from a local folder, the Hub (`api`) or, offline, the local HF cache;
    what cannot be read is a problem, never an exception."""
    meta = ModelMeta(role, ref)
    if ref.trust_remote_code:
        problems.append(Problem(code="trust_remote_code", role=role,
                                message="trust_remote_code is set; rainmerge plans and merges without remote code"))
    local = Path(ref.path).expanduser()
    if local.is_dir():
        meta.report.source = "local"
        _read_local(meta, local.resolve(), problems, hash_weights)
    elif _is_hub_id(ref.path):
        if api is None and os.environ.get("HF_HUB_OFFLINE") == "1":
            _read_offline_cache(meta, problems, hash_weights)
        else:
            if api is None:
                from huggingface_hub import HfApi

                api = HfApi()
            _read_hub(meta, api, problems, fetched, workdir, want_tokenizer)
        # the Hub id names the origin even when its metadata could not be read (offline, not cached)
        meta.report.name = meta.report.name or ref.path
    else:
        problems.append(Problem(code="missing_model", role=role,
                                message=f"'{ref.path}' is neither a model directory nor a Hub id (owner/name)"))
    _summarise(meta)
    return meta


def _summarise(meta: ModelMeta) -> None:
    """The report's summary of what was read: family, embeddings, declared origin, parameter counts."""
    c = meta.config or {}
    r = meta.report
    r.model_type = c.get("model_type")
    r.architectures = list(c.get("architectures") or [])
    r.tie_word_embeddings = bool(c.get("tie_word_embeddings", False)) if meta.config else None
    if r.source == "local" and not r.name:
        r.name = c.get("_name_or_path") or None
        if r.name and Path(r.name).is_absolute():
            r.name = None  # a training machine's path says nothing about lineage
    r.declared_base = list(dict.fromkeys(meta.card_base))
    for name, (shape, dtype) in meta.tensors.items():
        n = math.prod(shape)
        r.params += n
        r.weight_bytes += n * DTYPE_BYTES[dtype]
        r.dtypes[dtype] = r.dtypes.get(dtype, 0) + n
    r.tensors = len(meta.tensors)
    emb = meta.tensors.get("model.embed_tokens.weight")
    head = meta.tensors.get("lm_head.weight")
    r.embed_shape = list(emb[0]) if emb else None
    r.lm_head_shape = list(head[0]) if head else None

