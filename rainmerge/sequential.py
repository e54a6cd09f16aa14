"""Stages 1 and 2 layer by layer: one decoder layer in memory at a time (the sequential pipeline of
llm-compressor / AutoAWQ / GPTQ), so a 70B trio fits one GPU.

Layer l's inputs depend only on layers < l. Per layer, in order:

1. the LRM's layer l is read from its safetensors shards (nothing else of the model is loaded);
2. Stage 1: the reasoning samples' hidden states go through it, pre-hooks keep the inputs of its linears
   at the protected positions (as features.collect_features does), and its projectors are solved;
3. Stage 2 (``two_pass`` only): the instruction samples' LRM stream goes through it, scored;
4. Stage 2: the layer is probe-merged in place (alpha = 1, as stages.apply_probe_merge) and the instruction
   samples' *merged* stream goes through it, scored by attention.py's statistic.

So Stage 1 carries the unmodified LRM's hidden states and Stage 2 the probe merge's: two streams (three
with two_pass). Layers after the last merged one are never run: neither stage reads their output.

Each layer runs inside the model's own forward (a skeleton of the model on the meta device whose other
layers pass their input through), so rotary embeddings, causal / sliding-window masks and the attention
interface are exactly what the whole model builds: results equal the whole-model path (stages.py) to
float32 rounding (tests/test_sequential.py).

Hidden states (one [1, T, hidden] tensor per sample and stream) stay on the device, on the host or in
safetensors files under a spill folder, whichever fits (`choose_placement`).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .attention import IMPL, _ACTIVE, _Ctx, _weights, register, sample_scores
from .calibration import InstructionSample, ReasoningSample
from .coefficients import uniform_coefficients
from .transfer import page_aligned_empty, page_locked, to_device
from .io.lazy import all_finite
from .io.spill import HiddenStates, choose_placement, spill_folder
from .linears import FEATURE_GROUP, GROUP_HOOK
from .projection import bases_from_features

log = logging.getLogger("rainmerge")


# ---------------------------------------------------------------------------------------------------
# one layer inside the model's own forward


class _Pass(torch.nn.Module):
    """A decoder layer that is not loaded: its input is already the next layer's hidden state."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _Stop(Exception):
    def __init__(self, out: torch.Tensor):
        self.out = out


class Skeleton:
    """The model on the meta device (no weights) with one real decoder layer at a time. Running the
    model's forward on a hidden state (inputs_embeds) builds the positions, rotary embeddings and masks
    exactly as the whole model would; the layers before the real one pass it through and the forward
    stops right after it. Module paths are the whole model's (model.layers.{l}.self_attn.q_proj), so
    the hooks and the attention statistic address modules as on the whole model."""

    def __init__(self, root: Path, dtype: torch.dtype, device: str, trust_remote_code: bool = False):
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(str(root), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa",
                                                          trust_remote_code=trust_remote_code)
        self.body = getattr(self.model, self.model.base_model_prefix)
        self.layer_cls = type(self.body.layers[0])
        self.num_layers = len(self.body.layers)
        with torch.device(device):  # the rotary tables are computed at init: on the real device
            self.body.rotary_emb = type(self.body.rotary_emb)(config=self.model.config)
        self.body.layers = torch.nn.ModuleList([_Pass() for _ in range(self.num_layers)])
        self.dtype, self.device = dtype, torch.device(device)
        register()
        self.model.set_attn_implementation(IMPL)  # SDPA for the output; scores only while a _Ctx is active

    def embed(self, weight: torch.Tensor, input_ids: list[int]) -> torch.Tensor:
        return torch.nn.functional.embedding(to_device(torch.tensor([input_ids]), self.device), weight)

    def load_layer(self, layer: int, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        with torch.device("meta"):
            mod = self.layer_cls(self.model.config, layer)
        mod.load_state_dict(state, strict=True, assign=True)
        if any(t.is_meta for t in list(mod.parameters()) + list(mod.buffers())):
            raise RuntimeError(f"decoder layer {layer}: some tensors were not loaded")
        mod.eval()
        self.body.layers[layer] = mod
        return mod

    def unload(self, layer: int) -> None:
        self.body.layers[layer] = _Pass()

    @torch.no_grad()
    def run(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        def stop(_mod, _args, out):
            raise _Stop(out[0] if isinstance(out, tuple) else out)

        handle = self.body.layers[layer].register_forward_hook(stop)
        try:
            self.body(inputs_embeds=hidden, use_cache=False)
        except _Stop as s:
            return s.out
        finally:
            handle.remove()
        raise RuntimeError(f"decoder layer {layer} was not reached by the forward")


def layer_state(src: Any, layer: int, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    """Layer `layer`'s tensors from the shards, names relative to the layer, in `dtype` on `device`.
    Moved as stored and cast there (half the bytes of a host-side bf16 -> fp32 cast to move)."""
    prefix = f"model.layers.{layer}."
    out = {}
    for name in src.names():
        if name.startswith(prefix):
            t = src.get(name, check=False)  # the preflight scanned RAIN's LRM
            out[name[len(prefix):]] = t.to(device).to(dtype) if t.is_floating_point() else t.to(device)
    if not out:
        raise KeyError(f"{src.role}: no tensors for decoder layer {layer}")
    return out


# ---------------------------------------------------------------------------------------------------
# the loop


@dataclass
class SequentialResult:
    features: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # when no stage-1 config
    bases: dict[int, Any] = field(default_factory=dict)
    a1: torch.Tensor | None = None
    u1: torch.Tensor | None = None
    a0: torch.Tensor | None = None
    u0: torch.Tensor | None = None
    placement: str = ""
    hidden_bytes: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def hidden_bytes(ctx: Any, samples: list[list[int]], streams: int) -> int:
    """Bytes of `streams` copies of the hidden states of the given token sequences."""
    per_tok = ctx.arch.hidden * torch.finfo(ctx.forward_dtype).bits // 8
    return streams * per_tok * sum(len(ids) for ids in samples)


def layer_bytes(src: Any, layer: int, dtype: torch.dtype) -> int:
    prefix = f"model.layers.{layer}."
    n = sum(math.prod(src.shape(name)) for name in src.names() if name.startswith(prefix))
    return n * torch.finfo(dtype).bits // 8


def run_sequential(ctx: Any, *, reasoning: list[ReasoningSample] | None = None,
                   instruction: list[InstructionSample] | None = None, stage1: Any = None, stage2: Any = None,
                   bases: dict[int, Any] | None = None, strength: float = 1.0, placement: str = "auto",
                   spill_dir: str | Path | None = None, progress: bool = True) -> SequentialResult:
    """Stages 1 and/or 2 layer by layer (module doc). `reasoning` -> Stage-1 features of every merged layer
    (their bases instead when `stage1`, a ProjectionConfig, is given); `instruction` + `stage2` (a
    CoefficientConfig) -> the Stage-2 statistics a1, u1 (and a0, u0 for two_pass) on the probe merge, whose
    bases come from this run's Stage 1 or from `bases`."""
    t0 = time.time()
    with_s2 = instruction is not None and stage2 is not None
    if with_s2 and stage1 is None and bases is None:
        raise ValueError("stage 2 needs projector bases: pass stage1 (solved here) or bases")
    two_pass = with_s2 and stage2.estimator == "two_pass"
    seqs = {"reasoning": [s.input_ids for s in reasoning or []],
            "lrm_instruction": [s.input_ids for s in instruction or []] if two_pass else [],
            "probe_instruction": [s.input_ids for s in instruction or []] if with_s2 else []}
    need = sum(hidden_bytes(ctx, v, 1) for v in seqs.values())
    reserve = 3 * layer_bytes(ctx.reasoning, ctx.layers[0], ctx.forward_dtype)  # the layer, its probe delta, work
    where = choose_placement(need, ctx.device, placement, reserve)
    # given bases are only read, a layer at a time: kept as passed (a lazy artifact mapping stays lazy)
    given = bases is not None and stage1 is None
    out = SequentialResult(bases=bases if given else dict(bases or {}), placement=where, hidden_bytes=need)
    spill_root = spill_folder(spill_dir, need) if where == "disk" else None
    log.info("layer-sequential stages: %d layers, hidden states %.2f GiB on the %s%s", max(ctx.layers) + 1,
             need / 2**30, where, f" ({spill_root})" if spill_root else "")
    sk = Skeleton(ctx.reasoning.root, ctx.forward_dtype, ctx.device, ctx.models.reasoning.trust_remote_code)
    streams: dict[str, HiddenStates] = {}
    try:
        streams = _embedded_streams(ctx, sk, seqs, where, spill_root)
        weights = [_weights(s, sk.device) for s in instruction] if with_s2 else []
        if with_s2:
            shape = (len(instruction), len(ctx.layers), ctx.arch.num_heads)
            out.a1, out.u1 = (torch.full(shape, float("nan"), device=sk.device) for _ in range(2))
            if two_pass:
                out.a0, out.u0 = (torch.full(shape, float("nan"), device=sk.device) for _ in range(2))
        for layer in tqdm(range(max(ctx.layers) + 1), desc="stages 1-2: layers", unit="layer", disable=not progress):
            sk.load_layer(layer, layer_state(ctx.reasoning, layer, ctx.forward_dtype, ctx.device))
            _one_layer(ctx, sk, layer, streams, reasoning, weights, stage1, stage2, strength, out)
            sk.unload(layer)
        for k in ("a1", "u1", "a0", "u0"):
            if getattr(out, k) is not None:
                setattr(out, k, getattr(out, k).cpu())
    finally:
        for s in streams.values():
            s.close()
        if spill_root is not None:
            shutil.rmtree(spill_root, ignore_errors=True)
    out.timings["sequential_s"] = time.time() - t0
    return out


def _embedded_streams(ctx: Any, sk: "Skeleton", seqs: dict[str, list[list[int]]], where: str,
                      spill_root: Path | None) -> dict[str, HiddenStates]:
    """Each non-empty stream's hidden states before layer 0: the LRM's embedding of its token ids."""
    embed = ctx.reasoning.get("model.embed_tokens.weight", check=False).to(ctx.device).to(ctx.forward_dtype)
    streams = {}
    for name, ids in seqs.items():
        if ids:
            streams[name] = HiddenStates(name, where, ctx.device, spill_root)
            for i, x in enumerate(ids):
                streams[name].put(i, sk.embed(embed, x))
    return streams


def _one_layer(ctx: Any, sk: "Skeleton", layer: int, streams: dict[str, HiddenStates],
               reasoning: list[ReasoningSample] | None, weights: list[tuple[torch.Tensor, ...]], stage1: Any,
               stage2: Any, strength: float, out: SequentialResult) -> None:
    """Every stream through the loaded `layer`, in the order the module doc gives (the probe merge last)."""
    col = {l: i for i, l in enumerate(ctx.layers)}.get(layer)
    if "reasoning" in streams:
        groups = sorted({FEATURE_GROUP[m] for m in ctx.models.modules}) if col is not None else []
        feats = _stage1_layer(sk, ctx, layer, groups, reasoning or [], streams["reasoning"])
        if col is not None:
            if stage1 is not None:
                out.bases[layer] = stage1_layer_bases(ctx, feats, stage1)
            else:
                out.features[layer] = feats
    if "lrm_instruction" in streams:
        _stage2_layer(sk, layer, col, weights, stage2.row_chunk, streams["lrm_instruction"], out.a0, out.u0)
    if "probe_instruction" in streams:
        if col is not None:
            probe_merge_layer(ctx, sk.model, layer, out.bases[layer], strength)
        _stage2_layer(sk, layer, col, weights, stage2.row_chunk, streams["probe_instruction"], out.a1, out.u1)


def stage1_layer_bases(ctx: Any, layer_feats: dict[str, torch.Tensor], s1: Any) -> dict[str, Any]:
    """One layer's bases (paper Eq. 4) from its features, solved on the device, kept on the host; both
    stage paths call it (stages.stage1_projectors per layer, run_sequential as each layer's features exist)."""
    f = {g: x.to(ctx.device) for g, x in layer_feats.items()}
    return {k: b.to("cpu") if ctx.device != "cpu" else b
            for k, b in bases_from_features(f, ctx.arch.num_heads, ctx.arch.head_dim, **s1.basis_kwargs()).items()}


@torch.no_grad()
def _stage1_layer(sk: Skeleton, ctx: Any, layer: int, groups: list[str], samples: list[ReasoningSample],
                  hidden: HiddenStates) -> dict[str, torch.Tensor]:
    """Run the reasoning stream through `layer`; the inputs of its linears at the protected positions
    (float32 host buffers, filled as features.collect_features fills them) when `groups`."""
    total = sum(len(s.positions) for s in samples)
    mods = {g: sk.model.get_submodule(ctx.arch.module_path(layer, GROUP_HOOK[g])) for g in groups}
    feats = {g: page_aligned_empty(total, int(m.in_features)) for g, m in mods.items()}
    at, rows = [0, 0], {}

    def hook(dest: torch.Tensor):
        def fn(_mod, args):
            dest[at[0]:at[0] + at[1]].copy_(args[0][0].index_select(0, rows["idx"]), non_blocking=True)
        return fn

    handles = [m.register_forward_pre_hook(hook(feats[g])) for g, m in mods.items()]
    try:
        with page_locked(list(feats.values()), sk.device):
            for i, h in hidden.stream():
                s = samples[i]
                rows["idx"] = to_device(torch.tensor(s.positions), sk.device)
                at[1] = len(s.positions)
                hidden.put(i, sk.run(layer, h))
                at[0] += at[1]
    finally:
        for hd in handles:
            hd.remove()
    return feats


@torch.no_grad()
def _stage2_layer(sk: Skeleton, layer: int, col: int | None, weights: list[tuple[torch.Tensor, ...]], chunk: int,
                  hidden: HiddenStates, A: torch.Tensor, U: torch.Tensor) -> None:
    """Run an instruction stream through `layer`; when it is merged (col = its position among the merged
    layers) score every sample's heads with attention.py's statistic into A[:, col], U[:, col]."""
    for i, h in hidden.stream():
        if col is None:
            hidden.put(i, sk.run(layer, h))
            continue
        rows, w_cols, w_rel, w_unr, with_r, with_u = weights[i]
        c = _Ctx({layer}, rows, w_cols, w_rel, w_unr, chunk)
        _ACTIVE.append(c)
        try:
            hidden.put(i, sk.run(layer, h))
        finally:
            _ACTIVE.pop()
        if layer not in c.out:
            raise RuntimeError(f"attention hook saw no call for layer {layer}")
        a, u = sample_scores(*c.out[layer], with_r, with_u)
        if a is not None:
            A[i, col] = a
        if u is not None:
            U[i, col] = u


@torch.no_grad()
def probe_merge_layer(ctx: Any, model: torch.nn.Module, layer: int, layer_bases: dict[str, Any],
                      strength: float) -> None:
    """stages.apply_probe_merge for one layer: W += lambda P(tau) (alpha = 1) on that layer's merged linears."""
    from .merge import check_inputs
    from .methods.rain import Rain

    probe = Rain(ctx.arch, {layer: layer_bases}, uniform_coefficients([layer], ctx.arch), strength, ctx.device)
    for name, site in ctx.sites.items():
        if site.layer != layer:
            continue
        b, i = ctx.base.get(name, check=False), ctx.instruct.get(name, check=False)
        d = probe.delta_(site, probe.task_vector(b, i), record=False)
        if not all_finite(d):
            check_inputs((ctx.base, ctx.instruct), name, (b, i))
            raise FloatingPointError(f"{name}: probe-merge delta has non-finite values")
        w = model.get_submodule(ctx.arch.module_path(site.layer, site.module)).weight
        w.add_(d.to(w.device, w.dtype))

