"""Memory and disk of Stages 1-2 on either path (whole model / layer-sequential), and the choice between
them. Pure arithmetic on sizes: `rainmerge plan` fills `Pieces` from metadata, the merge re-decides
with the memory it sees at run time (`memory_seen`), both through `choose_stages_path`.

Per stage, GPU bytes (W = the LRM in the forward dtype, W_l = its largest decoder layer, E = its
embedding, act(t) = activations of one t-token forward, H_dev = hidden states when they wait on the device):

    whole       stage1_features  W + act(t_r)           stage1_solve  W + solve
                stage2_probe     W + B_l + merge        stage2_attn   W + act(t_i) + chunk
    sequential  embed            E + H_dev              stage1_features  W_l + act(t_r) + H_dev
                stage1_solve     W_l + solve + H_dev    stage2_probe     W_l + B_l + merge + H_dev
                stage2_attn      W_l + act(t_i) + chunk + H_dev
    both        stage3_merge     B_l + merge

Hidden states: (tokens_r + k tokens_i) x hidden x forward bytes, k = 2 for two_pass (the LRM's and the probe's
instruction streams), else 1. Host: the whole path keeps every merged layer's features until they are
solved; the sequential one a layer's at a time (plus the hidden states when they wait on the host).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1 << 30
DEFAULT_GPU_BUDGET = 80 * 10**9  # what a plan assumes when it sees no GPU and gpu_memory is not set
GPU_USABLE = 0.92  # share of a device's memory a path may plan to use (allocator slack, CUDA context)
DEVICE_SHARE = 0.6  # hidden states wait on the device while they take at most this share of what is left
HOST_SHARE = 0.5  # ... and on the host while at most this share of the host budget
PLACEMENTS = ("auto", "device", "host", "disk")


def parse_bytes(size: str | int) -> int:
    """'70GiB' / '80GB' / '512MB' / an int -> bytes (accelerate's parser, the one device_map's max_memory uses)."""
    from accelerate.utils import convert_file_size_to_int

    try:
        n = convert_file_size_to_int(size)
    except (ValueError, TypeError):
        raise ValueError(f"not a size: {size!r} (e.g. 70GiB, 80GB)") from None
    if n <= 0:
        raise ValueError(f"not a size: {size!r} (e.g. 70GiB, 80GB)")
    return n
HOST_BASE = 2 << 30  # interpreter, torch, transformers, tokenizer
K8S_MEMORY_HEADROOM = 1.25  # pod memory limit over the estimated host peak
K8S_VOLUME_HEADROOM = 1.15  # volume over download + output + artifacts (+ spilled hidden states)


def act_bytes(arch: Any, fb: int, t: int) -> int:
    """Activations of one t-token forward through a decoder layer (SDPA, no T x T buffer)."""
    q, kv = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    return t * (4 * arch.hidden + q + 2 * kv + 3 * arch.intermediate) * fb * 2


def chunk_bytes(arch: Any, row_chunk: int, t: int) -> int:
    """Stage 2's scoring of `row_chunk` query rows against t keys, float32, three live copies."""
    return min(row_chunk, max(t, 1)) * max(t, 1) * arch.num_heads * 4 * 3


def solve_bytes(arch: Any, rows: int) -> int:
    """One layer's Stage-1 factorization on the device (the widest feature group, float32 + float64 copies)."""
    widest = max(rows * w for w in (arch.hidden, arch.intermediate))
    return widest * (4 + 8 + 8) + rows * min(rows, arch.intermediate) * 8


def layer_bases_bytes(arch: Any, rows: int, modules: list[str], per_head_o: bool, sb: int) -> int:
    """One layer's projector bases V [width, rank] in the solve dtype."""
    from .linears import FEATURE_GROUP

    width = {"attn_in": arch.hidden, "o_in": arch.num_heads * arch.head_dim, "mlp_in": arch.hidden,
             "down_in": arch.intermediate}
    n = 0
    for g in {FEATURE_GROUP[m] for m in modules}:
        if g == "o_in" and per_head_o:
            n += arch.num_heads * arch.head_dim * min(rows, arch.head_dim) * sb
        else:
            n += width[g] * min(rows, width[g]) * sb
    return n


def merge_work_bytes(arch: Any, modules: list[str], wb: int, sb: int) -> int:
    """One merged tensor on the device: three inputs as stored, a working buffer and an upcast input in the
    solve dtype; float32 adds a float64 redo (fallback) at worst."""
    import math

    biggest = max((math.prod(arch.weight_shape(m)) for m in modules), default=0)
    return biggest * (4 * wb + 2 * sb + (16 if sb == 4 else 0))


@dataclass(frozen=True)
class Pieces:
    """The sizes both paths are made of (bytes)."""

    weights: int  # the LRM in the forward dtype
    layer: int  # its largest decoder layer in the forward dtype
    embed: int  # its input embedding in the forward dtype
    act_reason: int  # activations of the longest Stage-1 forward
    act_instr: int  # ... Stage-2 forward
    chunk: int  # Stage-2 scoring chunk
    solve: int  # one layer's Stage-1 factorization on the device
    layer_bases: int  # one layer's projector bases
    bases: int  # every merged layer's bases (host)
    features: int  # every merged layer's features (float32, host)
    merged_layers: int
    merge_work: int  # one merged tensor being made (Stage 3 and the probe merge)
    in_flight: int  # Stage 3's tensors in flight on the host
    hidden: int  # the hidden states of every stream at one layer boundary
    stage2: bool
    on_cpu: bool  # forwards run on the host
    disk_base: int  # download + output + pipeline artifacts


@dataclass(frozen=True)
class PathEstimate:
    gpu: dict[str, int]
    host: int
    disk: int
    hidden_states: str = ""  # sequential: device | host | disk

    @property
    def gpu_peak(self) -> int:
        return max(self.gpu.values(), default=0)


def whole_path(p: Pieces) -> PathEstimate:
    gpu = {"stage1_features": p.weights + p.act_reason, "stage1_solve": p.weights + p.solve}
    if p.stage2:
        gpu["stage2_probe_merge"] = p.weights + p.layer_bases + p.merge_work
        gpu["stage2_attention"] = p.weights + p.act_instr + p.chunk
    gpu["stage3_merge"] = p.layer_bases + p.merge_work
    fwd = p.weights + max(p.act_reason, p.act_instr) if p.on_cpu else 0
    host = HOST_BASE + max(p.features + fwd, p.bases + p.in_flight + p.merge_work + fwd)
    return PathEstimate({} if p.on_cpu else gpu, host, p.disk_base)


def hidden_placement(hidden: int, reserve: int, gpu_free: int | None, host_free: int | None, on_cpu: bool,
                     requested: str = "auto") -> str:
    """device | host | disk for `hidden` bytes of hidden states; `reserve`: device bytes the layer and its
    work need beside them; None: unknown (not limiting). On the CPU the device is the host."""
    if requested not in PLACEMENTS:
        raise ValueError(f"hidden_states must be one of {PLACEMENTS}, got {requested!r}")
    if requested != "auto":
        return "host" if requested == "device" and on_cpu else requested
    if not on_cpu and gpu_free is not None and hidden <= DEVICE_SHARE * max(gpu_free - reserve, 0):
        return "device"
    if host_free is None or hidden <= HOST_SHARE * host_free:
        return "host"
    return "disk"


def host_available_bytes() -> int:
    """Host memory this process may still use: MemAvailable, capped by the cgroup (pod) limit."""
    from pathlib import Path

    avail = 1 << 62
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for lim, cur in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                     ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            text = Path(lim).read_text().strip()
            if text != "max" and int(text) < 1 << 60:
                avail = min(avail, int(text) - int(Path(cur).read_text().strip()))
            break
        except (OSError, ValueError):
            continue
    return max(avail, 0)


def sequential_path(p: Pieces, placement: str) -> PathEstimate:
    h_dev = p.hidden if placement == "device" else 0
    h_host = p.hidden if placement == "host" else 0
    gpu = {"embed": p.embed + h_dev, "stage1_features": p.layer + p.act_reason + h_dev,
           "stage1_solve": p.layer + p.solve + h_dev}
    if p.stage2:
        gpu["stage2_probe_merge"] = p.layer + p.layer_bases + p.merge_work + h_dev
        gpu["stage2_attention"] = p.layer + p.act_instr + p.chunk + h_dev
    gpu["stage3_merge"] = p.layer_bases + p.merge_work
    fwd = p.layer + max(p.act_reason, p.act_instr) if p.on_cpu else 0
    layer_feats = p.features // max(p.merged_layers, 1)
    # the embedding is read once, as stored, through the host (at most the forward dtype's size)
    host = HOST_BASE + max(p.embed + h_host, layer_feats + p.bases + h_host + fwd,
                           p.bases + p.in_flight + p.merge_work)
    return PathEstimate({} if p.on_cpu else gpu, host, p.disk_base + (p.hidden if placement == "disk" else 0),
                        placement)


def choose_stages_path(requested: str, whole: PathEstimate | None, gpu_budgets: list[int] | None,
                       host_budget: int | None, on_cpu: bool) -> tuple[str, str]:
    """(whole | sequential, why). `gpu_budgets`: bytes per device (several: the whole path spreads its
    layers over them, so their sum counts, each at GPU_USABLE); `host_budget`: bytes, None when unknown."""
    if requested in ("whole", "sequential"):
        return requested, f"stages_path: {requested} (forced by the config)"
    assert whole is not None, "auto needs the whole path's estimate"
    if on_cpu:
        if host_budget is None or whole.host <= GPU_USABLE * host_budget:
            return "whole", "forwards on the host, and the whole model fits the host memory"
        return "sequential", (f"forwards on the host: the whole model needs {whole.host / 1e9:.1f} GB, the host "
                              f"has {host_budget / 1e9:.1f} GB")
    budgets = gpu_budgets or [DEFAULT_GPU_BUDGET]
    usable = int(GPU_USABLE * sum(budgets))
    devs = f"{len(budgets)} GPU{'s' if len(budgets) > 1 else ''} ({', '.join(f'{b / 1e9:.0f}' for b in budgets)} GB)"
    if whole.gpu_peak <= usable and (host_budget is None or whole.host <= host_budget):
        return "whole", f"the whole model's peak {whole.gpu_peak / 1e9:.1f} GB fits {devs}"
    if whole.gpu_peak > usable:
        return "sequential", f"the whole model's peak {whole.gpu_peak / 1e9:.1f} GB exceeds {devs} x {GPU_USABLE}"
    return "sequential", f"the whole path's host peak {whole.host / 1e9:.1f} GB exceeds the host's {host_budget / 1e9:.1f} GB"


def memory_seen(device: str) -> tuple[list[int] | None, int]:
    """Free bytes per visible GPU (None when none is visible or the device is the CPU) and the host's."""
    import torch

    gpus = None
    if device != "cpu" and torch.cuda.is_available():
        gpus = [int(torch.cuda.mem_get_info(i)[0]) for i in range(torch.cuda.device_count())]
    return gpus, host_available_bytes()


def gi(n: float) -> str:
    """A Kubernetes quantity: bytes rounded up to whole GiB, at least 1Gi."""
    return f"{max(1, -(-int(n) // GIB))}Gi"


def k8s_sizes(path: PathEstimate, gpus: int) -> dict[str, str | int]:
    """What a pod running this merge needs: its volume, memory request/limit and GPU count."""
    return {"volume_size": gi(path.disk * K8S_VOLUME_HEADROOM), "memory_request": gi(path.host),
            "memory_limit": gi(path.host * K8S_MEMORY_HEADROOM), "gpus": gpus,
            "gpu_memory_per_device": gi(path.gpu_peak / max(gpus, 1)) if gpus else "0Gi"}


def decide_stages_path(ctx: Any, reasoning: list[Any], instruction: list[Any],
                       stage1: Any, stage2: Any) -> tuple[str, str]:
    """whole | sequential for this run (ctx.stages_path auto: choose_stages_path on the whole path's
    estimate from the encoded calibration and the memory seen now, or ctx.gpu_memory)."""
    import math

    import torch

    from .linears import FEATURE_GROUP

    if ctx.stages_path != "auto":
        return choose_stages_path(ctx.stages_path, None, None, None, False)  # type: ignore[arg-type]
    arch, fb = ctx.arch, torch.finfo(ctx.forward_dtype).bits // 8
    src = ctx.reasoning
    params = sum(math.prod(src.shape(n)) for n in src.names())
    rows = sum(len(s.positions) for s in reasoning)
    t_r = max((len(s.input_ids) for s in reasoning), default=0)
    t_i = max((len(s.input_ids) for s in instruction), default=0)
    modules, sb = list(ctx.models.modules), 8 if stage1.solve_dtype == "float64" else 4
    lb = layer_bases_bytes(arch, rows, modules, stage1.o_proj == "per_head", sb)
    width = {"attn_in": arch.hidden, "o_in": arch.num_heads * arch.head_dim, "mlp_in": arch.hidden,
             "down_in": arch.intermediate}
    feats = len(ctx.layers) * rows * sum(width[g] for g in {FEATURE_GROUP[m] for m in modules}) * 4
    wb = max(1, round(src.tensor_bytes() / max(params, 1)))
    on_cpu = ctx.device == "cpu"
    p = Pieces(weights=params * fb, layer=0, embed=0, act_reason=act_bytes(arch, fb, t_r),
               act_instr=act_bytes(arch, fb, t_i), chunk=chunk_bytes(arch, stage2.row_chunk, t_i), solve=solve_bytes(arch, rows),
               layer_bases=lb, bases=lb * len(ctx.layers), features=feats, merged_layers=len(ctx.layers),
               merge_work=merge_work_bytes(arch, modules, wb, sb), in_flight=0, hidden=0,
               stage2=bool(instruction) and stage2.enabled, on_cpu=on_cpu, disk_base=0)
    gpus, host = memory_seen(ctx.device)
    if ctx.gpu_memory:
        gpus = [parse_bytes(x) for x in ctx.gpu_memory]
    return choose_stages_path("auto", whole_path(p), gpus, host if on_cpu else None, on_cpu)
