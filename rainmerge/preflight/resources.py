"""The plan's resource estimates: both Stages 1-2 paths (rainmerge/memory.py), the one chosen for the
memory budget, and what a pod needs for it."""

from __future__ import annotations

import math
from typing import Any

from ..arch import FEATURE_GROUP, ArchSpec
from ..config import MergeConfig, parse_bytes
from ..dtypes import DTYPE_BYTES, FLOAT_BYTES
from ..memory import (DEFAULT_GPU_BUDGET, GIB, GPU_USABLE, Pieces, act_bytes, choose_stages_path, chunk_bytes,
                      hidden_placement, k8s_sizes, layer_bases_bytes, memory_seen, merge_work_bytes,
                      sequential_path, solve_bytes, whole_path)
from ..method_catalog import needs_stages
from .calibration_rows import Workload
from .plan_report import PathReport, Resources
from .sources import ModelMeta

IN_FLIGHT_TENSORS = 5  # stage 3 host memory: tensors read ahead, being made, queued and being written


def _fwd_bytes(cfg: MergeConfig, device: str) -> tuple[str, int]:
    if cfg.forward_dtype != "auto":
        return cfg.forward_dtype, FLOAT_BYTES[cfg.forward_dtype]
    return ("bfloat16", 2) if device != "cpu" else ("float32", 4)


def _budget(cfg: MergeConfig) -> tuple[list[int] | None, int | None, str]:
    """GPU bytes per device and host bytes the choice is made for, and where they came from."""
    if cfg.gpu_memory:
        return [parse_bytes(x) for x in cfg.gpu_memory], None, "gpu_memory (config)"
    gpus, host = memory_seen(cfg.device)
    if gpus:
        return gpus, host, "free memory seen on this machine"
    return None, None, "none seen and gpu_memory unset: one 80 GB GPU assumed"


def _layer_params(arch: ArchSpec, metas: dict[str, ModelMeta]) -> tuple[int, int]:
    """Parameters of the LRM's largest decoder layer and of its input embedding."""
    per: dict[int, int] = {}
    embed = 0
    for name, (shape, _) in metas["reasoning"].tensors.items():
        if name.startswith("model.layers."):
            i = int(name.split(".")[2])
            per[i] = per.get(i, 0) + math.prod(shape)
        elif name == "model.embed_tokens.weight":
            embed = math.prod(shape)
    if not per:  # no headers read: from the shapes
        per[0] = sum(math.prod(arch.weight_shape(m)) for m in ("q", "k", "v", "o", "gate", "up", "down"))
    return max(per.values()), embed or arch.vocab_size * arch.hidden


def resources(cfg: MergeConfig, arch: ArchSpec | None, metas: dict[str, ModelMeta], layers: list[int],
              load: Workload) -> Resources:
    """Memory and disk of both Stages 1-2 paths (rainmerge/memory.py has the formulas), the path chosen
    for the budget, and what a pod needs to run it."""
    reasoning = metas["reasoning"].report
    on_cpu = cfg.device == "cpu"
    device = cfg.device if cfg.device != "auto" else "cuda (auto; cpu when none)"
    fdt, fb = _fwd_bytes(cfg, "cpu" if on_cpu else "cuda")
    rain = needs_stages(cfg.method) and arch is not None
    by_role = {r: m.report.download_bytes for r, m in metas.items()}
    dl = sum(by_role.values())
    notes: list[str] = []
    p = _pieces(cfg, arch, metas, layers, load, fb, rain, dl, notes)
    gpus, host_budget, source = _budget(cfg)
    paths, chosen, why = _paths(cfg, p, rain, gpus, host_budget)
    est = paths[chosen]
    if on_cpu:
        notes.append("device cpu: the forward passes run in host memory (counted in host RAM)")
    notes.append(f"activations for {load.reason_len} (stage 1) / {load.instr_len} (stage 2) tokens at {fdt}; "
                 "SDPA without T x T buffers assumed")
    if rain:
        notes.append(f"hidden states at a layer boundary (layer-sequential path): {p.hidden / GIB:.2f} GiB "
                     f"({load.reason_tokens} reasoning + {load.instr_tokens} instruction tokens x streams x hidden "
                     f"{arch.hidden})")
    per_device = (gpus or [DEFAULT_GPU_BUDGET])[0]  # the whole path spreads its layers over this many devices
    n_gpu = 0 if on_cpu else max(1, math.ceil(est.gpu_peak / (GPU_USABLE * per_device))) if chosen == "whole" else 1
    disk_tmp = p.features + p.bases
    return Resources(download_bytes=dl, download_by_role=by_role, disk_output_bytes=reasoning.weight_bytes,
                     disk_temp_bytes=disk_tmp + (est.disk - p.disk_base), disk_total_bytes=est.disk,
                     host_ram_bytes=est.host, gpu_bytes=est.gpu, gpu_peak_bytes=est.gpu_peak, forward_dtype=fdt,
                     device=device, notes=notes, stages_path=chosen, stages_path_reason=why,
                     paths={k: _report(v) for k, v in paths.items()}, gpu_budget_bytes=gpus or [],
                     gpu_budget_source=source, hidden_state_bytes=p.hidden, k8s=k8s_sizes(est, n_gpu))


def _pieces(cfg: MergeConfig, arch: ArchSpec | None, metas: dict[str, ModelMeta], layers: list[int], load: Workload,
            fb: int, rain: bool, download: int, notes: list[str]) -> Pieces:
    """The sizes the paths are made of, from the LRM's headers, the architecture and the calibration load."""
    reasoning = metas["reasoning"].report
    modules = list(cfg.modules)
    sb = 8 if cfg.stage1.solve_dtype == "float64" else 4  # bytes per basis entry
    feats = bases = per_layer_bases = 0
    if rain:
        assert arch is not None
        feats, bases, per_layer_bases = _stage1_host_bytes(cfg, arch, layers, load.rows, sb, notes)
    # the output is streamed (io.stream): a few tensors are in flight (read ahead, being made, queued and
    # being written), never a whole shard; the largest is usually the embedding
    sizes = sorted((math.prod(shape) * DTYPE_BYTES.get(dt, 4) for shape, dt in metas["reasoning"].tensors.values()),
                   reverse=True)
    wb = max(1, round(reasoning.weight_bytes / max(reasoning.params, 1)))
    return Pieces(weights=reasoning.params * fb, **_forward_bytes(cfg, arch, metas, load, fb, rain),
                  layer_bases=per_layer_bases, bases=bases, features=feats, merged_layers=len(layers),
                  merge_work=merge_work_bytes(arch, modules, wb, sb) if arch is not None else 0,
                  in_flight=sum(sizes[:IN_FLIGHT_TENSORS]), stage2=rain and cfg.stage2.enabled,
                  on_cpu=cfg.device == "cpu", disk_base=reasoning.weight_bytes + feats + bases + download)


def _stage1_host_bytes(cfg: MergeConfig, arch: ArchSpec, layers: list[int], rows: int, sb: int,
                       notes: list[str]) -> tuple[int, int, int]:
    """Stage 1 features and every layer's projector bases (host; the pipeline persists both as
    artifacts), and one layer's bases (on the device in the probe merge and Stage 3)."""
    modules = list(cfg.modules)
    groups = {FEATURE_GROUP[m] for m in modules}
    width = {"attn_in": arch.hidden, "o_in": arch.num_heads * arch.head_dim, "mlp_in": arch.hidden,
             "down_in": arch.intermediate}
    feats = len(layers) * rows * sum(width[g] for g in groups) * 4  # float32, on the host
    per_layer_bases = layer_bases_bytes(arch, rows, modules, cfg.stage1.o_proj == "per_head", sb)
    bases = len(layers) * per_layer_bases
    notes.append(f"features {feats / GIB:.2f} GiB (float32, host), projector bases {bases / GIB:.2f} GiB "
                 f"({cfg.stage1.solve_dtype}, host; one layer's {per_layer_bases / GIB:.2f} GiB at a time on "
                 "the device in the probe merge and stage 3)")
    return feats, bases, per_layer_bases


def _forward_bytes(cfg: MergeConfig, arch: ArchSpec | None, metas: dict[str, ModelMeta], load: Workload, fb: int,
                   rain: bool) -> dict[str, int]:
    """Device-side pieces of the forwards: activations, one layer, the embedding, Stage 1's solve,
    Stage 2's chunk, and the hidden states the layer-sequential path keeps at a layer boundary."""
    out = dict.fromkeys(("act_reason", "act_instr", "layer", "embed", "chunk", "solve", "hidden"), 0)
    if arch is None:
        return out
    out["act_reason"], out["act_instr"] = act_bytes(arch, fb, load.reason_len), act_bytes(arch, fb, load.instr_len)
    lp, ep = _layer_params(arch, metas)
    out["layer"], out["embed"] = lp * fb, ep * fb
    if rain:
        out["solve"] = solve_bytes(arch, load.rows)
        if cfg.stage2.enabled:
            out["chunk"] = chunk_bytes(arch, cfg.stage2.row_chunk, load.instr_len)
        streams_i = (2 if cfg.stage2.estimator == "two_pass" else 1) if cfg.stage2.enabled else 0
        out["hidden"] = (load.reason_tokens + streams_i * load.instr_tokens) * arch.hidden * fb
    return out


def _paths(cfg: MergeConfig, p: Pieces, rain: bool, gpus: list[int] | None, host_budget: int | None
           ) -> tuple[dict[str, Any], str, str]:
    """{path: estimate}, the chosen path and why: baselines run no forwards, so only `whole` exists."""
    on_cpu = cfg.device == "cpu"
    whole = whole_path(p)
    if not rain:
        return {"whole": whole}, "whole", "not RAIN: no forwards"
    gpu_free = None if on_cpu else (gpus or [DEFAULT_GPU_BUDGET])[0]
    placement = hidden_placement(p.hidden, 3 * p.layer, gpu_free, host_budget, on_cpu, cfg.hidden_states)
    chosen, why = choose_stages_path(cfg.stages_path, whole, gpus, host_budget, on_cpu)
    return {"whole": whole, "sequential": sequential_path(p, placement)}, chosen, why


def _report(e: Any) -> PathReport:
    return PathReport(gpu_bytes=e.gpu, gpu_peak_bytes=e.gpu_peak, host_ram_bytes=e.host, disk_total_bytes=e.disk,
                      hidden_states=e.hidden_states or None)
