"""Pre-flight plan: every check that metadata allows, before a single weight byte is fetched.

`build_plan(cfg)` reads only config.json, the safetensors index and shard headers (local: the first
8 + N bytes of each file; Hub: `HfApi.get_safetensors_metadata`, which reads headers by HTTP range),
file sizes and the commit sha (`HfApi.model_info(files_metadata=True)`), and small files fetched with
`hf_hub_download` (config, tokenizer, generation config, chat template). It returns a `PlanReport`
(pydantic, JSON-serialisable): architecture and the shape of every merged tensor against `ArchSpec`,
embeddings (vocab rows, tied or not), the LRM's think tokens and template pre-fill, calibration rows
against each projected module's input width, resource estimates, lineage, and the problems that would
make a merge fail. `run_plan(cfg)` prints it and returns 0, or 2 when a merge would fail.

No zenml / mlflow / kfp imports; never trust_remote_code; nothing is unpickled.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import BaseModel, Field

from .projection import capacity
from .arch import FEATURE_GROUP, ArchSpec, arch_from_config
from .config import CalibrationRef, ModelRef, RainConfig
from .errors import CorruptInputError, RainMergeError
from .io.lazy import read_header

# what ModelSource downloads for a Hub id (rainmerge.io.lazy._HUB_PATTERNS), i.e. what a merge fetches
FETCH_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken")
# small files the plan itself may fetch from the Hub (never weights)
SMALL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
               "vocab.json", "merges.txt", "tokenizer.model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")
_SMALL_LIMIT = 64 << 20  # refuse to "metadata-fetch" anything larger

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_FWD_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Published distillation sources (DeepSeek-R1 model card, "DeepSeek-R1-Distill Models" table).
KNOWN_LINEAGE = {
    "deepseek-ai/deepseek-r1-distill-qwen-1.5b": "Qwen/Qwen2.5-Math-1.5B",
    "deepseek-ai/deepseek-r1-distill-qwen-7b": "Qwen/Qwen2.5-Math-7B",
    "deepseek-ai/deepseek-r1-distill-qwen-14b": "Qwen/Qwen2.5-14B",
    "deepseek-ai/deepseek-r1-distill-qwen-32b": "Qwen/Qwen2.5-32B",
    "deepseek-ai/deepseek-r1-distill-llama-8b": "meta-llama/Llama-3.1-8B",
    "deepseek-ai/deepseek-r1-distill-llama-70b": "meta-llama/Llama-3.3-70B-Instruct",
}
# the authors' calibration files (rain-method.md, configs/*.yaml): sha256 -> record count
KNOWN_CALIBRATION = {
    "bebb4cb5216f474fad2994128a4e70ca5ca0eeb89ee6b528db93a135b2b694e5": 150,
    "b52460a93f499d32c753feb8150f829b7251ac299b20df0521232b4ddd32fb14": 365,
}
AUTHORS_REASONING_COUNT = 150
AUTHORS_INSTRUCTION_COUNT = 365
PROBE_PROMPT = "What is 2 + 3?"


# ---------------------------------------------------------------------------------------------------
# the report


class Problem(BaseModel):
    code: str
    message: str
    role: str | None = None


class WeightFile(BaseModel):
    name: str
    size: int | None = None
    sha256: str | None = None
    sha256_source: Literal["local", "hub-lfs", "not-computed"] | None = None
    cached: bool | None = None


class InputReport(BaseModel):
    role: str
    path: str
    source: Literal["local", "hub", "hub-cache", "unresolved"]
    revision: str | None = None
    commit: str | None = None
    resolved_dir: str | None = None
    name: str | None = None  # Hub id, or the name a local folder declares (_name_or_path / card)
    model_type: str | None = None
    architectures: list[str] = []
    config_sha256: str | None = None
    weight_files: list[WeightFile] = []
    tensors: int = 0
    params: int = 0
    weight_bytes: int = 0
    dtypes: dict[str, int] = {}
    tie_word_embeddings: bool | None = None
    embed_shape: list[int] | None = None
    lm_head_shape: list[int] | None = None
    declared_base: list[str] = []
    download_bytes: int = 0


class ModuleShape(BaseModel):
    module: str
    tensor: str  # name pattern
    expected: list[int]
    checked: int  # tensors checked per role
    status: dict[str, str]  # role -> "ok" | "N bad"
    dtypes: dict[str, str] = {}


class ThinkToken(BaseModel):
    tag: str
    ids: list[int]
    single_token: bool
    id: int | None = None
    added: bool = False
    special: bool | None = None
    in_base_vocab: bool = False
    within_embedding: bool | None = None


class TemplateReport(BaseModel):
    has_template: bool
    rendered_tail: str | None = None
    prefill: Literal["template", "appended", "missing", "unknown"] = "unknown"
    bos_token: str | None = None
    bos_in_template: bool | None = None
    bos_count_when_encoded: int | None = None
    think_open_token_at: int | None = None


class CalibrationReport(BaseModel):
    role: str
    source: Literal["local", "cache", "url-not-fetched", "missing"]
    location: str | None = None
    sha256: str | None = None
    records: int | None = None
    kept: int | None = None
    skipped: dict[str, int] = {}
    exact: bool = False
    positions_per_sample: float | None = None
    rows: int | None = None
    max_tokens: int | None = None
    note: str | None = None


class RowsWidth(BaseModel):
    group: str
    modules: list[str]
    width: int
    bases_per_layer: int
    rows: int
    removed: int
    cap: int
    kept_norm: float
    cap_binds: bool
    exact_rows: bool


class Resources(BaseModel):
    download_bytes: int
    download_by_role: dict[str, int]
    disk_output_bytes: int
    disk_temp_bytes: int
    disk_total_bytes: int
    host_ram_bytes: int
    gpu_bytes: dict[str, int]
    gpu_peak_bytes: int
    forward_dtype: str
    device: str
    notes: list[str] = []


class Lineage(BaseModel):
    inputs: dict[str, dict[str, Any]]
    lrm_declared_base: list[str] = []
    lrm_declared_from: str | None = None
    configured_base: str | None = None
    caveat: str | None = None


class PlanReport(BaseModel):
    ok: bool
    method: str
    problems: list[Problem] = []
    warnings: list[str] = []
    notes: list[str] = []
    arch: dict[str, Any] | None = None
    layers: list[int] = []
    modules: list[str] = []
    inputs: dict[str, InputReport] = {}
    module_shapes: list[ModuleShape] = []
    think_tokens: list[ThinkToken] = []
    template: TemplateReport | None = None
    calibration: list[CalibrationReport] = []
    rows_vs_width: list[RowsWidth] = []
    resources: Resources | None = None
    lineage: Lineage | None = None
    hub_files_fetched: list[str] = Field(default_factory=list, description="repo:filename of every small file fetched")

    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(indent=indent)


# ---------------------------------------------------------------------------------------------------
# safetensors headers


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) for repeated plans in one process."""
    from .io.lazy import sha256_file

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)
    return _DIGESTS[key]


# ---------------------------------------------------------------------------------------------------
# reading one input's metadata


class _Meta:
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


def _read_local(meta: _Meta, root: Path, problems: list[Problem], hash_weights: bool) -> None:
    r = meta.report
    r.resolved_dir = str(root)
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        problems.append(Problem(code="missing_file", role=meta.role, message=f"{root} has no config.json"))
    else:
        try:
            meta.config = json.loads(cfg_path.read_text())
            r.config_sha256 = file_digest(cfg_path)
        except json.JSONDecodeError as exc:
            problems.append(Problem(code="bad_config", role=meta.role, message=f"config.json is not valid JSON "
                                    f"({exc.msg} at line {exc.lineno}, column {exc.colno})"))
        except OSError as exc:
            problems.append(Problem(code="bad_config", role=meta.role, message=f"config.json: {exc}"))
    meta.small_dir = root
    index = root / "model.safetensors.index.json"
    files: list[Path]
    if index.is_file():
        try:
            wm = json.loads(index.read_text())["weight_map"]
            files = sorted({root / v for v in wm.values()})
            outside = sorted({v for v in wm.values() if not (root / v).resolve().is_relative_to(root.resolve())})
            if outside:  # never read a file the index names outside the model folder
                problems.append(Problem(code="corrupt_index", role=meta.role, message=f"weight index {index.name} "
                                        f"points outside the model folder: {', '.join(outside)}"))
                files = [f for f in files if f.resolve().is_relative_to(root.resolve())]
        except json.JSONDecodeError as exc:
            problems.append(Problem(code="corrupt_index", role=meta.role, message=f"weight index {index.name} is not "
                                    f"valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"))
            files = sorted(root.glob("*.safetensors"))
        except (OSError, KeyError, AttributeError, TypeError) as exc:
            problems.append(Problem(code="corrupt_index", role=meta.role, message=f"weight index {index.name}: {exc}"))
            files = sorted(root.glob("*.safetensors"))
    else:
        files = sorted(root.glob("*.safetensors"))
    if not files:
        pick = list(root.glob("*.bin")) + list(root.glob("*.pt"))
        hint = " (only pickle weights found; convert them to safetensors first)" if pick else ""
        problems.append(Problem(code="no_weights", role=meta.role, message=f"no safetensors weights in {root}{hint}"))
    for f in files:
        wf = WeightFile(name=f.name, cached=True)
        r.weight_files.append(wf)
        if not f.is_file():
            problems.append(Problem(code="missing_file", role=meta.role,
                                    message=f"{f.name} is listed in the index but missing"))
            continue
        wf.size = f.stat().st_size
        try:  # the same header check as every read of a merge (io.lazy)
            tensors = {n: (shape, dt) for n, (dt, shape, _, _) in read_header(f, meta.role).items()}
        except CorruptInputError as exc:
            problems.append(Problem(code="corrupt_header", role=meta.role,
                                    message=str(exc).removeprefix(f"{meta.role}: ")))
            continue
        _add_tensors(meta, tensors, f.name, problems)
        if hash_weights:
            wf.sha256, wf.sha256_source = file_digest(f), "local"
        else:
            wf.sha256_source = "not-computed"
    readme = root / "README.md"
    meta.card_base = _card_base_models(readme) if readme.is_file() else []


def _add_tensors(meta: _Meta, tensors: dict[str, tuple[tuple[int, ...], str]], fname: str,
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


def _read_hub(meta: _Meta, api: Any, problems: list[Problem], fetched: list[str], workdir: Path,
              want_tokenizer: bool) -> None:
    from huggingface_hub import try_to_load_from_cache

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
    rev = r.commit or meta.ref.revision
    folder = workdir / meta.role
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
            from .io.lazy import sha256_file

            r.config_sha256 = sha256_file(cfg_path)
        except json.JSONDecodeError as exc:
            problems.append(Problem(code="bad_config", role=meta.role, message=f"config.json: {exc}"))
    try:
        st = api.get_safetensors_metadata(repo, revision=rev)
    except Exception as exc:
        code = "corrupt_header" if "pars" in type(exc).__name__.lower() or "header" in str(exc).lower() else "no_weights"
        problems.append(Problem(code=code, role=meta.role, message=f"safetensors metadata of '{repo}': {exc}"))
        st = None
    if st is not None:
        for fname in sorted(st.files_metadata):
            fm = st.files_metadata[fname]
            _add_tensors(meta, {n: (tuple(t.shape), t.dtype) for n, t in fm.tensors.items()}, fname, problems)
        for fname in sorted(set(st.weight_map.values()) | set(st.files_metadata)):
            sib = siblings.get(fname)
            r.weight_files.append(WeightFile(name=fname, size=getattr(sib, "size", None), sha256=_lfs_sha(sib),
                                             sha256_source="hub-lfs" if _lfs_sha(sib) else None))
    # what a merge would download: ModelSource's patterns, minus what the HF cache already holds
    total = 0
    for fname, sib in siblings.items():
        if not any(fnmatch.fnmatch(fname, p) for p in FETCH_PATTERNS):
            continue
        cached = _cached(try_to_load_from_cache, repo, fname, rev)
        for wf in r.weight_files:
            if wf.name == fname:
                wf.cached = cached
        if not cached:
            total += int(getattr(sib, "size", None) or 0)
    r.download_bytes = total


def _cached(fn: Any, repo: str, fname: str, rev: str | None) -> bool:
    try:
        return isinstance(fn(repo, fname, revision=rev), str)
    except Exception:
        return False


def _read_offline_cache(meta: _Meta, problems: list[Problem], hash_weights: bool) -> None:
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


def _inspect(role: str, ref: ModelRef, api: Any, problems: list[Problem], fetched: list[str], workdir: Path,
             hash_weights: bool, want_tokenizer: bool) -> _Meta:
    meta = _Meta(role, ref)
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
    else:
        problems.append(Problem(code="missing_model", role=role,
                                message=f"'{ref.path}' is neither a model directory nor a Hub id (owner/name)"))
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
    return meta


# ---------------------------------------------------------------------------------------------------
# checks


_CMP_FIELDS = ("num_layers", "hidden", "num_heads", "num_kv_heads", "head_dim", "intermediate")


def _arch_checks(metas: dict[str, _Meta], problems: list[Problem], warnings: list[str]) -> dict[str, ArchSpec]:
    specs: dict[str, ArchSpec] = {}
    for role, m in metas.items():
        if m.config is None:
            continue
        try:
            specs[role] = arch_from_config(m.config, role)
        except RainMergeError as exc:
            problems.append(Problem(code="arch_unsupported", role=role, message=str(exc)))
    ref = specs.get("reasoning")
    if ref is None:
        return specs
    for role, s in specs.items():
        if role == "reasoning":
            continue
        if s.model_type != ref.model_type:
            problems.append(Problem(code="arch_mismatch", role=role, message=(
                f"architecture family differs: reasoning is '{ref.model_type}', {role} is '{s.model_type}'")))
            continue
        for f in _CMP_FIELDS:
            a, b = getattr(ref, f), getattr(s, f)
            if a != b:
                problems.append(Problem(code="arch_mismatch", role=role, message=(
                    f"{f} differs: reasoning={a}, {role}={b}; these models cannot be merged")))
        if s.vocab_size != ref.vocab_size:
            warnings.append(f"vocab size differs (reasoning={ref.vocab_size}, {role}={s.vocab_size}); "
                            "embeddings and lm_head are never merged, so the LRM's are kept")
    return specs


def _shape_checks(arch: ArchSpec, layers: list[int], modules: list[str], metas: dict[str, _Meta],
                  problems: list[Problem]) -> list[ModuleShape]:
    rows = []
    for mod in modules:
        want = arch.weight_shape(mod)
        status, dtypes = {}, {}
        for role, m in metas.items():
            if not m.tensors:
                status[role] = "unread"
                continue
            bad, seen = [], set()
            for layer in layers:
                name = arch.weight_name(layer, mod)
                got = m.tensors.get(name)
                if got is None:
                    bad.append(f"{role}: merged tensor {name} is missing")
                    continue
                seen.add(got[1])
                if tuple(got[0]) != want:
                    bad.append(f"{role}: {name} has shape {tuple(got[0])}, expected {want}")
                elif not got[1].startswith(("F", "BF")):
                    bad.append(f"{role}: {name} has non-float dtype {got[1]}")
            status[role] = "ok" if not bad else f"{len(bad)} bad"
            dtypes[role] = ",".join(sorted(seen))
            for msg in bad[:5]:
                code = "missing_tensor" if "missing" in msg else "shape_mismatch" if "shape" in msg else "dtype"
                problems.append(Problem(code=code, role=role, message=msg))
            if len(bad) > 5:
                problems.append(Problem(code="shape_mismatch", role=role,
                                        message=f"{role}: ... and {len(bad) - 5} more bad '{mod}' tensors"))
        rows.append(ModuleShape(module=mod, tensor=arch.weight_name(0, mod).replace(".0.", ".{L}.", 1),
                                expected=list(want), checked=len(layers), status=status, dtypes=dtypes))
    return rows


def _load_tokenizer(folder: Path | None) -> tuple[Any, str | None]:
    if folder is None:
        return None, "no tokenizer files"
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any((folder / f).is_file() for f in names):
        return None, f"no tokenizer files ({', '.join(names)})"
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False), None
    except Exception as exc:
        return None, f"cannot load the tokenizer: {exc}"


def _think_tokens(tok: Any, tags: list[str], embed_rows: int | None) -> list[ThinkToken]:
    out = []
    added = {v.content: (k, v) for k, v in getattr(tok, "added_tokens_decoder", {}).items()}
    vocab = tok.get_vocab()
    for tag in tags:
        ids = list(tok.encode(tag, add_special_tokens=False))
        t = ThinkToken(tag=tag, ids=ids, single_token=len(ids) == 1)
        if tag in added:
            t.id, t.added, t.special = added[tag][0], True, bool(added[tag][1].special)
        elif tag in vocab:
            t.id, t.in_base_vocab = vocab[tag], True
        elif len(ids) == 1:
            t.id = ids[0]
        if t.id is not None and embed_rows is not None:
            t.within_embedding = t.id < embed_rows
        out.append(t)
    return out


def _template_check(tok: Any, cfg: RainConfig) -> TemplateReport:
    if not getattr(tok, "chat_template", None):
        return TemplateReport(has_template=False, prefill="missing")
    rep = TemplateReport(has_template=True, bos_token=getattr(tok, "bos_token", None))
    text = tok.apply_chat_template([{"role": "user", "content": PROBE_PROMPT}], tokenize=False,
                                   add_generation_prompt=True)
    rep.rendered_tail = text[-48:]
    p0 = text.find(PROBE_PROMPT)
    t0 = text.rfind(cfg.think_open)
    if t0 >= 0 and p0 >= 0 and t0 >= p0 + len(PROBE_PROMPT):
        rep.prefill = "template"
    else:
        rep.prefill = "appended" if cfg.append_think_prefix else "missing"
        if cfg.append_think_prefix:
            t0 = len(text)
            text = text + cfg.think_open + "\n"
    if rep.bos_token:
        rep.bos_in_template = text.startswith(rep.bos_token)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offs = list(enc["input_ids"]), list(enc["offset_mapping"])
    if rep.bos_token:
        bos_id = tok.convert_tokens_to_ids(rep.bos_token)
        rep.bos_count_when_encoded = sum(1 for i in ids[:2] if i == bos_id)
    if rep.prefill in ("template", "appended"):
        rep.think_open_token_at = next((i for i, (a, b) in enumerate(offs) if a == t0 and b - a == len(cfg.think_open)),
                                       None)
    return rep


def _calibration(cfg: RainConfig, which: str, ref: CalibrationRef, tpl: Any, problems: list[Problem]
                 ) -> tuple[CalibrationReport, list[Any]]:
    """Resolve without downloading; encode exactly when the file is local and the template works."""
    from .calibration import (encode_instruction, encode_reasoning, load_instruction, load_reasoning)
    from .io.lazy import sha256_file

    role = f"{which}_calibration"
    rep = CalibrationReport(role=role, source="missing")
    path: Path | None = None
    if ref.path and Path(ref.path).expanduser().is_file():
        path, rep.source = Path(ref.path).expanduser().resolve(), "local"
    elif ref.url and ref.sha256:
        cache = Path(cfg.cache_dir or Path.home() / ".cache" / "rainmerge" / "calibration").expanduser()
        hit = cache / ref.sha256 / Path(ref.url).name
        if hit.is_file():
            path, rep.source = hit, "cache"
        else:
            rep.source, rep.location, rep.sha256 = "url-not-fetched", ref.url, ref.sha256
    if rep.source == "missing":
        problems.append(Problem(code="calibration_missing", role=role,
                                message=f"calibration file not found: {ref.path} (and no url)"))
        return rep, []
    if path is not None:
        rep.location = str(path)
        rep.sha256 = sha256_file(path)
        if ref.sha256 and rep.sha256 != ref.sha256:
            problems.append(Problem(code="calibration_sha_mismatch", role=role,
                                    message=f"sha256 of {path} is {rep.sha256}, expected {ref.sha256}"))
            return rep, []
    known = KNOWN_CALIBRATION.get(rep.sha256 or "")
    default_n = AUTHORS_REASONING_COUNT if which == "reasoning" else AUTHORS_INSTRUCTION_COUNT
    if path is None or tpl is None:
        n = known or default_n
        rep.records = min(n, ref.max_samples) if ref.max_samples else n
        rep.note = ("estimated: file not fetched" if path is None else "estimated: no usable LRM template") + (
            "" if known else f" (assumed the authors' {default_n} records)")
        if which == "reasoning":
            s1 = cfg.stage1
            rep.positions_per_sample = 2 if s1.positions == "tags" else 2 * (s1.radius + 1)
            rep.kept = rep.records
            rep.rows = int(rep.kept * rep.positions_per_sample)
        return rep, []
    try:
        if which == "reasoning":
            recs = load_reasoning(path, ref.max_samples)
            s1 = cfg.stage1
            samples, er = encode_reasoning(recs, tpl, s1.positions, s1.radius, s1.max_seq_len)
            rep.rows = sum(len(s.positions) for s in samples)
            rep.positions_per_sample = rep.rows / len(samples) if samples else 0.0
            skip = s1.max_skip_fraction
        else:
            recs = load_instruction(path, ref.max_samples)
            samples, er = encode_instruction(recs, tpl, cfg.stage2.span_region, cfg.stage2.max_seq_len)
            skip = cfg.stage2.max_skip_fraction
    except RainMergeError as exc:
        problems.append(Problem(code="calibration_invalid", role=role, message=str(exc)))
        return rep, []
    rep.records, rep.kept, rep.skipped, rep.exact = er.total, er.kept, dict(er.skipped), True
    rep.max_tokens = max((len(s.input_ids) for s in samples), default=0)
    try:
        er.check(f"{which} calibration {path.name}", skip)
    except RainMergeError as exc:
        problems.append(Problem(code="calibration_too_few", role=role, message=str(exc)))
    return rep, samples


def _rows_vs_width(arch: ArchSpec, modules: list[str], rows: int, exact: bool, cfg: RainConfig,
                   warnings: list[str]) -> list[RowsWidth]:
    """Per projected input: removing k of `width` directions from a random delta keeps ~sqrt(1 - k/width)."""
    s1 = cfg.stage1
    out = []
    groups: dict[str, list[str]] = {}
    for m in modules:
        groups.setdefault(FEATURE_GROUP[m], []).append(m)
    # the widths and caps are the projection's own (o_proj: full input unless stage1.o_proj is per_head)
    cap_of = capacity(arch, rows, s1.max_rank_fraction, s1.o_proj, tuple(modules))
    per_head = s1.o_proj == "per_head"
    for g in ("attn_in", "o_in", "mlp_in", "down_in"):
        if g not in groups:
            continue
        width, cap = cap_of[g]["width"], cap_of[g]["cap"]
        per_layer = arch.num_heads if g == "o_in" and per_head else 1
        rank = min(rows, width)  # features of distinct positions are (numerically) full rank in practice
        removed = min(rank, cap)
        binds = rank > cap
        rw = RowsWidth(group=g, modules=groups[g], width=width, bases_per_layer=per_layer, rows=rows,
                       removed=removed, cap=cap, kept_norm=round(math.sqrt(max(0.0, 1 - removed / width)), 3),
                       cap_binds=binds, exact_rows=exact)
        out.append(rw)
        if binds:
            what = f"{g} ({'/'.join(groups[g])}, width {width}{' per head' if per_layer > 1 else ''})"
            warnings.append(f"rank cap binds: identity not exact for {what}: {rows} protected rows >= cap {cap} "
                            f"(= {s1.max_rank_fraction} x width); only {removed} directions are removed, "
                            f"kept norm ~{rw.kept_norm}")
    if s1.energy < 1.0:
        warnings.append(f"stage1.energy={s1.energy} < 1: fewer directions are removed than estimated here, "
                        "and the identity at protected positions is not exact")
    return out


def _fwd_bytes(cfg: RainConfig, device: str) -> tuple[str, int]:
    if cfg.forward_dtype != "auto":
        return cfg.forward_dtype, _FWD_BYTES[cfg.forward_dtype]
    return ("bfloat16", 2) if device != "cpu" else ("float32", 4)


def _resources(cfg: RainConfig, arch: ArchSpec | None, metas: dict[str, _Meta], rows: int, layers: list[int],
               modules: list[str], t_reason: int, t_instr: int) -> Resources:
    lrm = metas["reasoning"].report
    device = cfg.device if cfg.device != "auto" else "cuda (auto; cpu when none)"
    fdt, fb = _fwd_bytes(cfg, "cpu" if cfg.device == "cpu" else "cuda")
    by_role = {r: m.report.download_bytes for r, m in metas.items()}
    notes = []
    gpu: dict[str, int] = {}
    host = 2 << 30  # interpreter, torch, transformers, tokenizer
    feats = bases = disk_tmp = 0
    out_bytes = lrm.weight_bytes
    if arch is not None and cfg.method == "rain":
        groups = {FEATURE_GROUP[m] for m in modules}
        width = {"attn_in": arch.hidden, "o_in": arch.num_heads * arch.head_dim, "mlp_in": arch.hidden,
                 "down_in": arch.intermediate}
        sb = 8 if cfg.stage1.solve_dtype == "float64" else 4
        feats = len(layers) * rows * sum(width[g] for g in groups) * 4  # float32, on the host
        per_layer_bases = 0
        for g in groups:
            if g == "o_in":
                per_layer_bases += arch.num_heads * arch.head_dim * min(rows, arch.head_dim) * sb
            else:
                per_layer_bases += width[g] * min(rows, width[g]) * sb
        bases = len(layers) * per_layer_bases  # V [width, rank] in the solve dtype, every layer
        disk_tmp = feats + bases  # the pipeline persists features and projector bases as artifacts
        notes.append(f"features {feats / 2**30:.2f} GiB (float32, host), projector bases {bases / 2**30:.2f} GiB "
                     f"({cfg.stage1.solve_dtype}; all layers are moved to the device in stages 2 and 3)")
    biggest = 0
    if arch is not None:
        biggest = max((math.prod(arch.weight_shape(m)) for m in modules), default=0)
    weights_fwd = lrm.params * fb
    if arch is not None:
        q, kv = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
        per_tok = (4 * arch.hidden + q + 2 * kv + 3 * arch.intermediate) * fb * 2

        def act(t: int) -> int:
            return t * per_tok
    else:
        def act(t: int) -> int:
            return 0
    shard = min(_parse_size(cfg.max_shard_size), lrm.weight_bytes)
    merge_work = 4 * biggest * 8 + 6 * biggest * 4  # fp64 projection buffers + prefetched fp32 triples
    if cfg.method == "rain" and arch is not None:
        widest = max((rows * w for w in (arch.hidden, arch.intermediate)), default=0)
        gpu["stage1_features"] = weights_fwd + act(t_reason)
        gpu["stage1_solve"] = weights_fwd + widest * (4 + 8 + 8) + rows * min(rows, arch.intermediate) * 8
        if cfg.stage2.enabled:
            chunk = min(cfg.stage2.row_chunk, max(t_instr, 1)) * max(t_instr, 1) * arch.num_heads * 4 * 3
            gpu["stage2_attention"] = weights_fwd + bases + act(t_instr) + chunk + 3 * biggest * 4
        gpu["stage3_merge"] = bases + merge_work
    else:
        gpu["stage3_merge"] = merge_work
    host_forward = weights_fwd + act(max(t_reason, t_instr)) if cfg.device == "cpu" else 0
    host += max(feats + host_forward, bases + shard + merge_work + host_forward)
    if cfg.device == "cpu":
        notes.append("device cpu: the forward passes run in host memory (counted in host RAM)")
        gpu = {}
    notes.append(f"activations for {t_reason} (stage 1) / {t_instr} (stage 2) tokens at {fdt}; "
                 "SDPA without T x T buffers assumed")
    dl = sum(by_role.values())
    return Resources(download_bytes=dl, download_by_role=by_role, disk_output_bytes=out_bytes,
                     disk_temp_bytes=disk_tmp, disk_total_bytes=out_bytes + disk_tmp + dl, host_ram_bytes=host,
                     gpu_bytes=gpu, gpu_peak_bytes=max(gpu.values(), default=0), forward_dtype=fdt,
                     device=device, notes=notes)


def _parse_size(s: str | int) -> int:
    if isinstance(s, int):
        return s
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", str(s), re.I)
    if not m:
        return 5 * 10**9
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
            "GIB": 2**30, "TIB": 2**40}.get(unit, 1)
    return int(float(m.group(1)) * mult)


def _norm(name: str | None) -> str:
    return (name or "").strip().lower().rstrip("/")


def _lineage(metas: dict[str, _Meta], warnings: list[str], notes: list[str]) -> Lineage:
    inputs = {}
    for role, m in metas.items():
        r = m.report
        entry: dict[str, Any] = {"source": r.source, "path": r.path, "name": r.name, "revision": r.revision,
                                 "commit": r.commit, "config_sha256": r.config_sha256,
                                 "weights_sha256": {w.name: w.sha256 for w in r.weight_files}}
        inputs[role] = entry
    lrm, base = metas["reasoning"].report, metas["base"].report
    declared, source = list(lrm.declared_base), "model card base_model" if lrm.declared_base else None
    if not declared:
        known = KNOWN_LINEAGE.get(_norm(lrm.name)) or KNOWN_LINEAGE.get(_norm(lrm.path))
        if known:
            declared, source = [known], "published distillation source (DeepSeek-R1 model card)"
    lin = Lineage(inputs=inputs, lrm_declared_base=declared, lrm_declared_from=source, configured_base=base.name)
    if declared:
        if not base.name:
            notes.append(f"lineage: the LRM declares base {declared} ({source}); the configured base is a local "
                         "folder that names no origin, so it cannot be compared")
        elif _norm(base.name) not in {_norm(d) for d in declared}:
            lin.caveat = (f"lineage: the LRM descends from {', '.join(declared)} ({source}), not from the configured "
                          f"base {base.name}; tau_I = ITM - base is applied to a model that shares only a common "
                          "ancestor with that base")
            warnings.append(lin.caveat)
    return lin


# ---------------------------------------------------------------------------------------------------
# entry points


def build_plan(cfg: RainConfig, api: Any = None, *, hash_weights: bool | None = None,
               check_output: bool = True) -> PlanReport:
    """Everything a merge would check, from metadata only (see the module doc). Pure data out.

    api: an `HfApi`-like object (model_info, get_safetensors_metadata, hf_hub_download) for Hub ids;
    default `HfApi()` (or, with HF_HUB_OFFLINE=1, the local HF cache). hash_weights: sha256 of local
    weight files for lineage (default cfg.hash_inputs; memoised per process). Local folders cost a header
    read per shard, a tokenizer load and, for rain, encoding the calibration files."""
    problems: list[Problem] = []
    warnings: list[str] = []
    notes: list[str] = []
    fetched: list[str] = []
    hash_weights = cfg.hash_inputs if hash_weights is None else hash_weights
    rep = PlanReport(ok=False, method=cfg.method, modules=list(cfg.modules))
    with tempfile.TemporaryDirectory(prefix="rainmerge-plan-") as tmp:
        metas = {role: _inspect(role, getattr(cfg, role), api, problems, fetched, Path(tmp), hash_weights,
                                want_tokenizer=role == "reasoning")
                 for role in ("base", "instruct", "reasoning")}
        rep.inputs = {r: m.report for r, m in metas.items()}
        specs = _arch_checks(metas, problems, warnings)
        arch = specs.get("reasoning")
        layers: list[int] = []
        if arch is not None:
            rep.arch = arch.dims() | {"model_type": arch.model_type, "tie_word_embeddings": arch.tie_word_embeddings,
                                      "qkv_bias": arch.qkv_bias, "qk_norm": arch.qk_norm}
            layers = cfg.layers if cfg.layers is not None else list(range(arch.num_layers))
            if layers and max(layers) >= arch.num_layers:
                problems.append(Problem(code="layers_out_of_range", message=(
                    f"layers: {max(layers)} is out of range; the model has {arch.num_layers} layers")))
                layers = [l for l in layers if l < arch.num_layers]
            if not any(p.code == "arch_mismatch" for p in problems):
                rep.module_shapes = _shape_checks(arch, layers, list(cfg.modules), metas, problems)
        rep.layers = layers
        ties = {r: m.report.tie_word_embeddings for r, m in metas.items()}
        if len({t for t in ties.values() if t is not None}) > 1:
            notes.append("embeddings: " + ", ".join(f"{r} {'tied' if t else 'untied'}" for r, t in ties.items())
                         + " (allowed: embeddings and lm_head are copied from the LRM, never merged)")
        # tokenizer, think tokens, template
        lrm = metas["reasoning"]
        tok, why = _load_tokenizer(lrm.small_dir) if lrm.config is not None else (None, "LRM unreadable")
        need_tags = cfg.method == "rain"
        tpl = None
        rows_embed = (lrm.report.embed_shape or [None])[0]
        if tok is None:
            if need_tags and lrm.config is not None:
                problems.append(Problem(code="tokenizer", role="reasoning",
                                        message=f"reasoning model {cfg.reasoning.path}: {why}"))
        else:
            if rows_embed is not None and len(tok) > rows_embed:
                extra = tok.convert_ids_to_tokens(list(range(rows_embed, min(len(tok), rows_embed + 5))))
                notes.append(f"the LRM tokenizer has {len(tok)} tokens but the LRM embeds {rows_embed} rows: "
                                f"ids >= {rows_embed} ({extra}) would fail in a forward pass")
            rep.think_tokens = _think_tokens(tok, [cfg.think_open, cfg.think_close], rows_embed)
            try:
                rep.template = _template_check(tok, cfg)
            except Exception as exc:
                rep.template = TemplateReport(has_template=True, prefill="unknown")
                if need_tags:
                    problems.append(Problem(code="template_error", role="reasoning",
                                            message=f"the chat template does not render: {exc}"))
            if need_tags:
                for t in rep.think_tokens:
                    if not t.single_token:
                        problems.append(Problem(code="think_token_missing", role="reasoning", message=(
                            f"'{t.tag}' is not a single token in the LRM tokenizer (encodes to {t.ids[:8]})")))
                    elif t.within_embedding is False:
                        problems.append(Problem(code="think_token_missing", role="reasoning", message=(
                            f"'{t.tag}' has id {t.id}, outside the LRM's {rows_embed} embedding rows")))
                if not rep.template.has_template:
                    problems.append(Problem(code="no_chat_template", role="reasoning",
                                            message="the LRM tokenizer has no chat template"))
                elif rep.template.prefill == "missing":
                    problems.append(Problem(code="template_no_prefill", role="reasoning", message=(
                        f"template without pre-fill: the generation prompt does not end with '{cfg.think_open}' "
                        "(old R1 snapshot or a non-R1 template); use a template that pre-fills it, "
                        "or set append_think_prefix: true")))
                tags_ok = all(t.single_token and t.within_embedding is not False for t in rep.think_tokens)
                if tags_ok and rep.template.prefill in ("template", "appended"):
                    from .calibration import Template

                    tpl = Template(tok, cfg.think_open, cfg.think_close, cfg.append_think_prefix)
        # calibration, rows vs width
        t_reason, t_instr = cfg.stage1.max_seq_len, cfg.stage2.max_seq_len
        rows, exact = 0, False
        if cfg.method == "rain":
            if cfg.reasoning_calibration is not None:
                c, rs = _calibration(cfg, "reasoning", cfg.reasoning_calibration, tpl, problems)
                rep.calibration.append(c)
                rows, exact = c.rows or 0, c.exact
                t_reason = c.max_tokens or t_reason
            if cfg.stage2.enabled and cfg.instruction_calibration is not None:
                c, _ = _calibration(cfg, "instruction", cfg.instruction_calibration, tpl, problems)
                rep.calibration.append(c)
                t_instr = c.max_tokens or t_instr
            if arch is not None:
                rep.rows_vs_width = _rows_vs_width(arch, list(cfg.modules), rows, exact, cfg, warnings)
        # output
        if check_output:
            from .io.writer import check_output_path

            try:
                check_output_path(Path(cfg.output).expanduser().resolve(), cfg.overwrite)
            except RainMergeError as exc:
                problems.append(Problem(code="output", message=str(exc)))
        rep.resources = _resources(cfg, arch, metas, rows, layers, list(cfg.modules), t_reason, t_instr)
        rep.lineage = _lineage(metas, warnings, notes)
    rep.problems, rep.warnings, rep.notes, rep.hub_files_fetched = problems, warnings, notes, fetched
    rep.ok = not problems
    return rep


def _gb(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} B"


def format_plan(rep: PlanReport) -> str:
    """Human-readable plan (what `rainmerge plan` prints)."""
    L: list[str] = []
    L.append(f"rainmerge plan - method {rep.method}: {'OK' if rep.ok else 'WOULD FAIL'}")
    L.append("")
    L.append("inputs:")
    for role, r in rep.inputs.items():
        where = r.commit and f"commit {r.commit}" or r.resolved_dir or ""
        tie = {True: "tied", False: "untied", None: "?"}[r.tie_word_embeddings]
        L.append(f"  {role:9s} {r.path} [{r.source}] {where}")
        L.append(f"            {r.model_type} {','.join(r.architectures)}; {r.tensors} tensors, {r.params / 1e9:.3f} B "
                 f"params, {_gb(r.weight_bytes)} ({', '.join(sorted(r.dtypes))}); embed {r.embed_shape}, "
                 f"lm_head {r.lm_head_shape or 'none'} ({tie}); download {_gb(r.download_bytes)}")
    if rep.arch:
        a = rep.arch
        L.append("")
        L.append(f"architecture: {a['model_type']} layers={a['num_layers']} hidden={a['hidden']} heads={a['num_heads']} "
                 f"kv={a['num_kv_heads']} head_dim={a['head_dim']} intermediate={a['intermediate']} "
                 f"vocab={a['vocab_size']} qkv_bias={a['qkv_bias']} qk_norm={a['qk_norm']}")
        lay = rep.layers
        span = f"{lay[0]}..{lay[-1]}" if lay and lay == list(range(lay[0], lay[-1] + 1)) else str(lay)
        L.append(f"merge: {len(lay)} layers ({span}) x modules {','.join(rep.modules)} = {len(lay) * len(rep.modules)} tensors")
    if rep.module_shapes:
        L.append("")
        L.append(f"  {'module':6s} {'tensor':42s} {'expected':>14s}  " + "  ".join(f"{r:>9s}" for r in rep.inputs))
        for m in rep.module_shapes:
            L.append(f"  {m.module:6s} {m.tensor:42s} {str(tuple(m.expected)):>14s}  "
                     + "  ".join(f"{m.status.get(r, '-'):>9s}" for r in rep.inputs))
    if rep.think_tokens or rep.template:
        L.append("")
        L.append("think tokens (LRM tokenizer):")
        for t in rep.think_tokens:
            kind = "added" if t.added else "in vocab" if t.in_base_vocab else "absent"
            sp = "" if t.special is None else (" special" if t.special else " non-special")
            L.append(f"  {t.tag!r:12s} id {t.id} ({kind}{sp}); encodes to {t.ids[:6]}"
                     f"{'' if t.within_embedding in (None, True) else '  OUTSIDE EMBEDDING'}")
        if rep.template:
            tp = rep.template
            L.append(f"  template: {'present' if tp.has_template else 'MISSING'}; pre-fill {tp.prefill}; "
                     f"generation prompt ends {tp.rendered_tail!r}")
            if tp.bos_token:
                L.append(f"  BOS {tp.bos_token!r}: in template {tp.bos_in_template}, "
                         f"{tp.bos_count_when_encoded} at the start when encoded without special tokens")
    if rep.calibration:
        L.append("")
        L.append("calibration:")
        for c in rep.calibration:
            kept = f"{c.kept}/{c.records} kept" if c.exact else f"~{c.records} records"
            skipped = f", skipped {c.skipped}" if c.skipped else ""
            pos = f", {c.positions_per_sample:g} positions/sample = {c.rows} rows" if c.rows is not None else ""
            longest = f", longest {c.max_tokens} tokens" if c.max_tokens else ""
            L.append(f"  {c.role}: [{c.source}] {kept}{skipped}{pos}{longest}"
                     f"{'' if c.exact else ' (' + (c.note or 'estimated') + ')'}")
    if rep.rows_vs_width:
        L.append("")
        L.append("protected rows vs input width (per layer; removing k of width dims keeps ~sqrt(1-k/width)):")
        L.append(f"  {'input':8s} {'modules':14s} {'width':>6s} {'rows':>6s} {'removed':>8s} {'cap':>6s} "
                 f"{'kept~':>6s}  note")
        for r in rep.rows_vs_width:
            w = f"{r.width}" + (f"x{r.bases_per_layer}" if r.bases_per_layer > 1 else "")
            note = "rank cap binds: identity not exact" if r.cap_binds else "exact null space"
            L.append(f"  {r.group:8s} {','.join(r.modules):14s} {w:>6s} {r.rows:>6d} {r.removed:>8d} {r.cap:>6d} "
                     f"{r.kept_norm:>6.3f}  {note}{'' if r.exact_rows else ' (rows estimated)'}")
    if rep.resources:
        s = rep.resources
        L.append("")
        L.append(f"resources (estimates; device {s.device}, forward {s.forward_dtype}):")
        L.append(f"  download   {_gb(s.download_bytes)}  (" + ", ".join(f"{r} {_gb(b)}" for r, b in
                                                             s.download_by_role.items()) + ")")
        L.append(f"  disk       {_gb(s.disk_total_bytes)} = output {_gb(s.disk_output_bytes)} + download + pipeline "
                 f"artifacts {_gb(s.disk_temp_bytes)} (features + bases; `rainmerge merge` keeps them in RAM)")
        L.append(f"  host RAM   {_gb(s.host_ram_bytes)}")
        for k, v in s.gpu_bytes.items():
            L.append(f"  GPU {k:17s} {_gb(v)}")
        if s.gpu_bytes:
            L.append(f"  GPU peak   {_gb(s.gpu_peak_bytes)}")
        for n in s.notes:
            L.append(f"  - {n}")
    if rep.lineage:
        L.append("")
        L.append("lineage:")
        for role, e in rep.lineage.inputs.items():
            ident = e["commit"] or ", ".join(f"{k}={(v or 'None')[:16]}" for k, v in e["weights_sha256"].items())
            L.append(f"  {role:9s} {e['name'] or e['path']}: {ident}")
        if rep.lineage.lrm_declared_base:
            L.append(f"  LRM declared base: {', '.join(rep.lineage.lrm_declared_base)} ({rep.lineage.lrm_declared_from})")
    for title, items in (("notes", rep.notes), ("warnings", rep.warnings)):
        if items:
            L.append("")
            L.append(f"{title}:")
            L.extend(f"  - {w}" for w in items)
    if rep.problems:
        L.append("")
        L.append("PROBLEMS (a merge would fail):")
        L.extend(f"  - [{p.code}]{' ' + p.role + ':' if p.role else ''} {p.message}" for p in rep.problems)
    if rep.hub_files_fetched:
        L.append("")
        L.append("fetched (metadata only): " + ", ".join(rep.hub_files_fetched))
    return "\n".join(L)


def run_plan(cfg: RainConfig, *, api: Any = None, out: TextIO | None = None) -> int:
    """`rainmerge plan --config FILE`: print the plan to `out` (sys.stdout, looked up at call time);
    return 0 when a merge can proceed, 2 when it would fail (the reasons are printed under PROBLEMS)."""
    rep = build_plan(cfg, api)
    print(format_plan(rep), file=out if out is not None else sys.stdout)
    return 0 if rep.ok else 2


__all__ = ["PlanReport", "build_plan", "format_plan", "run_plan"]
