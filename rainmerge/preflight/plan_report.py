"""The plan as data (pydantic, JSON-serialisable) and as the text `rainmerge plan` prints."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


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
    tokens: int | None = None  # all kept samples' tokens (exact only): the hidden states' size
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


class PathReport(BaseModel):
    """Stages 1-3 on one path (rainmerge/memory.py has the formulas)."""

    gpu_bytes: dict[str, int]
    gpu_peak_bytes: int
    host_ram_bytes: int
    disk_total_bytes: int
    hidden_states: str | None = None  # sequential: where the hidden states wait (device | host | disk)


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
    # the chosen Stages 1-2 path; the fields above are its figures, `paths` has both
    stages_path: str = "whole"
    stages_path_reason: str = ""
    paths: dict[str, PathReport] = {}
    gpu_budget_bytes: list[int] = []
    gpu_budget_source: str = ""
    hidden_state_bytes: int = 0
    k8s: dict[str, Any] = Field(default_factory=dict, description="what a pod needs: volume size, memory "
                                "request/limit, GPUs (for k8s/ and the ZenML run config)")


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
# the text `rainmerge plan` prints


def _gb(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} B"


def format_plan(rep: PlanReport) -> str:
    """Human-readable plan (what `rainmerge plan` prints): the verdict and inputs, then one section per
    part of the report that has content, separated by blank lines."""
    unread = [role for role, r in rep.inputs.items() if not r.tensors]
    lines = [f"rainmerge plan - method {rep.method}: {'OK' if rep.ok else 'WOULD FAIL'}", "", "inputs:"]
    lines += _inputs(rep, unread)
    sections = [_architecture(rep), _module_shapes(rep), _tokenizer(rep), _calibration(rep), _rows_vs_width(rep),
                _resources(rep.resources, unread), _lineage(rep.lineage), _items("notes", rep.notes),
                _items("warnings", rep.warnings), _problems(rep.problems), _fetched(rep.hub_files_fetched)]
    for section in sections:
        if section:
            lines += [""] + section
    return "\n".join(lines)


def _inputs(rep: PlanReport, unread: list[str]) -> list[str]:
    out = []
    for role, r in rep.inputs.items():
        where = r.commit and f"commit {r.commit}" or r.resolved_dir or ""
        if role in unread:  # nothing is known about it: say so once, no placeholders
            out.append(f"  {role:9s} {r.path} [{r.source}] metadata not read (see PROBLEMS)")
            continue
        tie = {True: "tied", False: "untied", None: "?"}[r.tie_word_embeddings]
        out.append(f"  {role:9s} {r.path} [{r.source}] {where}".rstrip())
        out.append(f"            {r.model_type} {','.join(r.architectures)}; {r.tensors} tensors, {r.params / 1e9:.3f} B "
                   f"params, {_gb(r.weight_bytes)} ({', '.join(sorted(r.dtypes))}); embed {r.embed_shape}, "
                   f"lm_head {r.lm_head_shape or 'none'} ({tie}); download {_gb(r.download_bytes)}")
    return out


def _architecture(rep: PlanReport) -> list[str]:
    if not rep.arch:
        return []
    a, lay = rep.arch, rep.layers
    span = f"{lay[0]}..{lay[-1]}" if lay and lay == list(range(lay[0], lay[-1] + 1)) else str(lay)
    return [f"architecture: {a['model_type']} layers={a['num_layers']} hidden={a['hidden']} heads={a['num_heads']} "
            f"kv={a['num_kv_heads']} head_dim={a['head_dim']} intermediate={a['intermediate']} "
            f"vocab={a['vocab_size']} qkv_bias={a['qkv_bias']} qk_norm={a['qk_norm']}",
            f"merge: {len(lay)} layers ({span}) x modules {','.join(rep.modules)} = {len(lay) * len(rep.modules)} tensors"]


def _module_shapes(rep: PlanReport) -> list[str]:
    if not rep.module_shapes:
        return []
    out = [f"  {'module':6s} {'tensor':42s} {'expected':>14s}  " + "  ".join(f"{r:>9s}" for r in rep.inputs)]
    for m in rep.module_shapes:
        out.append(f"  {m.module:6s} {m.tensor:42s} {str(tuple(m.expected)):>14s}  "
                   + "  ".join(f"{m.status.get(r, '-'):>9s}" for r in rep.inputs))
    return out


def _tokenizer(rep: PlanReport) -> list[str]:
    if not (rep.think_tokens or rep.template):
        return []
    out = ["think tokens (LRM tokenizer):"]
    for t in rep.think_tokens:
        kind = "added" if t.added else "in vocab" if t.in_base_vocab else "absent"
        sp = "" if t.special is None else (" special" if t.special else " non-special")
        out.append(f"  {t.tag!r:12s} id {t.id} ({kind}{sp}); encodes to {t.ids[:6]}"
                   f"{'' if t.within_embedding in (None, True) else '  OUTSIDE EMBEDDING'}")
    tp = rep.template
    if tp:
        out.append(f"  template: {'present' if tp.has_template else 'MISSING'}; pre-fill {tp.prefill}; "
                   f"generation prompt ends {tp.rendered_tail!r}")
        if tp.bos_token:
            out.append(f"  BOS {tp.bos_token!r}: in template {tp.bos_in_template}, "
                       f"{tp.bos_count_when_encoded} at the start when encoded without special tokens")
    return out


def _calibration(rep: PlanReport) -> list[str]:
    if not rep.calibration:
        return []
    out = ["calibration:"]
    for c in rep.calibration:
        kept = f"{c.kept}/{c.records} kept" if c.exact else f"~{c.records} records"
        skipped = f", skipped {c.skipped}" if c.skipped else ""
        pos = f", {c.positions_per_sample:g} positions/sample = {c.rows} rows" if c.rows is not None else ""
        longest = f", longest {c.max_tokens} tokens" if c.max_tokens else ""
        out.append(f"  {c.role}: [{c.source}] {kept}{skipped}{pos}{longest}"
                   f"{'' if c.exact else ' (' + (c.note or 'estimated') + ')'}")
    return out


def _rows_vs_width(rep: PlanReport) -> list[str]:
    if not rep.rows_vs_width:
        return []
    out = ["protected rows vs input width (per layer; removing k of width dims keeps ~sqrt(1-k/width)):",
           f"  {'input':8s} {'modules':14s} {'width':>6s} {'rows':>6s} {'removed':>8s} {'cap':>6s} {'kept~':>6s}  note"]
    for r in rep.rows_vs_width:
        w = f"{r.width}" + (f"x{r.bases_per_layer}" if r.bases_per_layer > 1 else "")
        note = "rank cap binds: identity not exact" if r.cap_binds else "exact null space"
        out.append(f"  {r.group:8s} {','.join(r.modules):14s} {w:>6s} {r.rows:>6d} {r.removed:>8d} {r.cap:>6d} "
                   f"{r.kept_norm:>6.3f}  {note}{'' if r.exact_rows else ' (rows estimated)'}")
    return out


def _resources(s: Resources | None, unread: list[str]) -> list[str]:
    if s is None:
        return []
    if unread:
        return [f"resources: not estimated until the metadata of {', '.join(unread)} can be read (see PROBLEMS)"]
    out = [f"resources (estimates; device {s.device}, forward {s.forward_dtype}):",
           f"  download   {_gb(s.download_bytes)}  (" + ", ".join(f"{r} {_gb(b)}" for r, b in
                                                         s.download_by_role.items()) + ")",
           f"  disk       {_gb(s.disk_total_bytes)} = output {_gb(s.disk_output_bytes)} + download + pipeline "
           f"artifacts {_gb(s.disk_temp_bytes)} (features + bases; `rainmerge merge` keeps them in RAM)",
           f"  host RAM   {_gb(s.host_ram_bytes)}"]
    out += [f"  GPU {k:17s} {_gb(v)}" for k, v in s.gpu_bytes.items()]
    if s.gpu_bytes:
        out.append(f"  GPU peak   {_gb(s.gpu_peak_bytes)}")
    out += _stages_paths(s)
    if s.k8s:
        out.append("  pod (k8s/ and the ZenML run config): " + ", ".join(f"{k} {v}" for k, v in s.k8s.items()))
    out += [f"  - {n}" for n in s.notes]
    return out


def _stages_paths(s: Resources) -> list[str]:
    """Both Stages 1-2 paths side by side, and which one was chosen for the budget."""
    if not s.paths:
        return []
    out = [f"  stages 1-2 path: {s.stages_path.upper()} - {s.stages_path_reason} (budget: {s.gpu_budget_source})",
           f"    {'path':11s} {'GPU peak':>10s} {'host RAM':>10s} {'disk':>10s}  hidden states  per stage (GPU)"]
    for name, pr in s.paths.items():
        stages = ", ".join(f"{k} {_gb(v)}" for k, v in pr.gpu_bytes.items())
        out.append(f"    {name:11s} {_gb(pr.gpu_peak_bytes):>10s} {_gb(pr.host_ram_bytes):>10s} "
                   f"{_gb(pr.disk_total_bytes):>10s}  {pr.hidden_states or '-':13s}  {stages or 'host only'}")
    return out


def _lineage(lin: Lineage | None) -> list[str]:
    if not lin:
        return []
    out = ["lineage:"]
    for role, e in lin.inputs.items():
        hashes = ", ".join(f"{k}={v[:16]}" for k, v in e["weights_sha256"].items() if v)
        ident = e["commit"] and f"commit {e['commit']}" or hashes or "not pinned (metadata not read)"
        out.append(f"  {role:9s} {e['name'] or e['path']}: {ident}")
    if lin.lrm_declared_base:
        out.append(f"  LRM declared base: {', '.join(lin.lrm_declared_base)} ({lin.lrm_declared_from})")
    return out


def _items(title: str, items: list[str]) -> list[str]:
    return [f"{title}:"] + [f"  - {w}" for w in items] if items else []


def _problems(problems: list[Problem]) -> list[str]:
    if not problems:
        return []
    return ["PROBLEMS (a merge would fail):"] + [
        f"  - [{p.code}]{' ' + p.role + ':' if p.role else ''} {p.message}" for p in problems]


def _fetched(files: list[str]) -> list[str]:
    return ["fetched (metadata only): " + ", ".join(files)] if files else []
