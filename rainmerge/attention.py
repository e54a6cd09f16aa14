"""Stage 2 statistics from the model's real attention probabilities (RoPE, biases, causal mask).

A registered attention implementation runs SDPA for the layer output and, for the selected layers
only, re-scores just the response query rows (R u U) against all keys, in row chunks, and reduces
them at once to per-head alignment/leakage scalars. Nothing [heads, T, T] outlives one chunk.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .calibration import InstructionSample
from .features import decoder_body
from .transfer import to_device

IMPL = "rainmerge_stats"


@dataclass
class _Ctx:
    layers: set[int]
    rows: torch.Tensor  # [n] query positions
    w_cols: torch.Tensor  # [T, K] column weights 1/|I_k| on instruction tokens
    w_rel: torch.Tensor  # [n, K] row weights 1/|R_k|
    w_unr: torch.Tensor  # [n, K] row weights 1/|U_k|
    chunk: int
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _moved: dict[torch.device, tuple[torch.Tensor, ...]] = field(default_factory=dict)

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """rows and weights on `device` (a layer of a model spread over several GPUs: its own device)."""
        if self.rows.device == device:
            return self.rows, self.w_cols, self.w_rel, self.w_unr
        if device not in self._moved:
            self._moved[device] = tuple(t.to(device) for t in (self.rows, self.w_cols, self.w_rel, self.w_unr))
        return self._moved[device]  # type: ignore[return-value]


_ACTIVE: list[_Ctx] = []


def expand_keys(key: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[1, KV, T, D] -> [H, T, D] float32 (transformers' repeat_kv, then upcast); once per layer."""
    k = key[0]
    if n_rep > 1:
        k = k[:, None].expand(k.shape[0], n_rep, *k.shape[1:]).reshape(k.shape[0] * n_rep, *k.shape[1:])
    return k.float()


def row_probabilities(query, key, attention_mask, scaling, rows, sliding_window=None, n_rep=1, keys=None):
    """softmax(q_rows k^T * scaling + mask) for the given query rows, in float32: [H, n, T].
    `keys`: expand_keys(key, n_rep) computed once per layer and shared by its row chunks."""
    k = expand_keys(key, n_rep) if keys is None else keys  # [H, T, D]
    q = query[0][:, rows].float()  # [H, n, D]
    scores = torch.matmul(q, k.transpose(1, 2)) * scaling
    T = k.shape[1]
    cols = torch.arange(T, device=scores.device)
    if attention_mask is None:
        allowed = cols[None, :] <= rows[:, None]
        if sliding_window is not None:
            allowed &= cols[None, :] > rows[:, None] - sliding_window
        scores = scores.masked_fill(~allowed[None], float("-inf"))
    else:
        m = attention_mask[0, :, rows][..., :T]
        scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
    return torch.softmax(scores, dim=-1)


def _stats_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                 **kwargs)
    ctx = _ACTIVE[-1] if _ACTIVE else None
    if ctx is not None and module.layer_idx in ctx.layers:
        n_rep = query.shape[1] // key.shape[1]
        rows, w_cols, w_rel, w_unr = ctx.on(query.device)
        a = torch.zeros(query.shape[1], w_rel.shape[1], device=query.device)
        u = torch.zeros_like(a)
        keys = expand_keys(key, n_rep)
        for c0 in range(0, len(rows), ctx.chunk):
            sl = slice(c0, c0 + ctx.chunk)
            p = row_probabilities(query, key, attention_mask, scaling, rows[sl],
                                  kwargs.get("sliding_window"), n_rep, keys)
            mass = p @ w_cols  # [H, n, K]: mean attention on instruction k per query row
            a += torch.einsum("hnk,nk->hk", mass, w_rel[sl])
            u += torch.einsum("hnk,nk->hk", mass, w_unr[sl])
        ctx.out[module.layer_idx] = (a, u)  # left on the device: alignment_leakage copies once at the end
    return out


def register() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPL, _stats_attention)
    AttentionMaskInterface.register(IMPL, sdpa_mask)
    return IMPL


def _weights(sample: InstructionSample, device) -> tuple[torch.Tensor, ...]:
    """Row/column weights on `device`, and the indices of the instructions that have a related / an
    unrelated span (known on the host: no device->host read is needed to select them)."""
    rows = sample.rows()
    at = {t: i for i, t in enumerate(rows)}
    T, K = len(sample.input_ids), len(sample.spans)
    w_cols = torch.zeros(T, K)
    w_rel = torch.zeros(len(rows), K)
    w_unr = torch.zeros(len(rows), K)
    for k, s in enumerate(sample.spans):
        w_cols[s.instruction, k] = 1.0 / len(s.instruction)
        if s.related:
            w_rel[[at[t] for t in s.related], k] = 1.0 / len(s.related)
        if s.unrelated:
            w_unr[[at[t] for t in s.unrelated], k] = 1.0 / len(s.unrelated)
    with_r = [k for k, s in enumerate(sample.spans) if s.related]
    with_u = [k for k, s in enumerate(sample.spans) if s.unrelated]
    host = (torch.tensor(rows), w_cols, w_rel, w_unr, torch.tensor(with_r, dtype=torch.long),
            torch.tensor(with_u, dtype=torch.long))
    return tuple(to_device(x, device) for x in host)


def sample_scores(a: torch.Tensor, u: torch.Tensor, with_r: torch.Tensor, with_u: torch.Tensor
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One sample's a and u per head ([..., H, K] per instruction -> [..., H]): the mean over the
    instructions that have a related (a) / an unrelated (u) span; None when none has (the sample's
    statistic stays NaN, "absent"). Shared by the whole-model and the layer-sequential path."""
    return (a.index_select(-1, with_r).mean(-1) if len(with_r) else None,
            u.index_select(-1, with_u).mean(-1) if len(with_u) else None)


@torch.no_grad()
def alignment_leakage(
    model: torch.nn.Module,
    samples: list[InstructionSample],
    layers: Iterable[int],
    num_heads: int,
    row_chunk: int = 256,
    progress: bool = True,
    desc: str = "stage 2: attention",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper Eq. 11 terms per sample: a[s, l, h] (response->instruction) and u[s, l, h] (leakage).

    a_k = sum_{t in R_k} sum_{tau in I_k} Att[t, tau] / (|I_k| |R_k|), averaged over the sample's
    instructions that have related spans; u likewise over those with unrelated spans.

    A sample with no located related span has a[s] = NaN (all layers and heads), one with no located
    unrelated span has u[s] = NaN: "absent", not 0, so sample averages are masked means
    (coefficients.masked_mean) over the n_a / n_u samples that have the span, not diluted by zeros.

    Unrelated spans, instruction- vs sample-level: calibration.encode_instruction pools the sample-level
    `unrelated_response_spans` into every instruction's own `unrelated_response_spans`, so U_k is the
    union of both (tokens counted once) and u_k is normalised by |I_k| |U_k|; u averages u_k over the
    instructions with U_k non-empty. The reference instead adds two separately normalised terms per
    instruction (its own list / span count + the sample list / span count) and sums over instructions.
    """
    register()
    layers = sorted(layers)
    pos = {l: i for i, l in enumerate(layers)}
    device = next(model.parameters()).device
    prev = model.config._attn_implementation
    model.set_attn_implementation(IMPL)
    # filled on the device and copied once at the end: no per-sample sync, so the host queues the next
    # forward while this one runs (transformers' forward is host-bound at these lengths)
    A = torch.full((len(samples), len(layers), num_heads), float("nan"), device=device)
    U = torch.full_like(A, float("nan"))
    try:
        for si, s in enumerate(tqdm(samples, desc=desc, unit="sample", disable=not progress)):
            rows, w_cols, w_rel, w_unr, with_r, with_u = _weights(s, device)
            ctx = _Ctx(set(layers), rows, w_cols, w_rel, w_unr, row_chunk)
            _ACTIVE.append(ctx)
            try:
                decoder_body(model)(input_ids=to_device(torch.tensor([s.input_ids]), device), use_cache=False)
            finally:
                _ACTIVE.pop()
            missing = set(layers) - set(ctx.out)
            if missing:
                raise RuntimeError(f"attention hook saw no call for layers {sorted(missing)}")
            idx = to_device(torch.tensor([pos[l] for l in ctx.out]), device)
            a, u = sample_scores(torch.stack([ctx.out[l][0].to(device) for l in ctx.out]),  # [L, H, K]
                                 torch.stack([ctx.out[l][1].to(device) for l in ctx.out]), with_r, with_u)
            if a is not None:
                A[si].index_copy_(0, idx, a)
            if u is not None:
                U[si].index_copy_(0, idx, u)
    finally:
        model.set_attn_implementation(prev)
    return A.cpu(), U.cpu()
