"""The fast paths of issue #11 against their references: TIES vs peft's ties, task arithmetic
without cast passes, the one-reduction finiteness check, and Stage 3 naming a broken input."""

from __future__ import annotations

import pytest
import torch

from rainmerge.io.lazy import all_finite
from rainmerge.methods import Site
from rainmerge.methods.task_arithmetic import TaskArithmetic
from rainmerge.methods.ties import Ties, magnitude_mask, ties_merge

SITE = Site(0, "q", "w")


def _peft_ties(taus, weights, density):
    from peft.utils.merge_utils import ties

    return ties(taus, torch.tensor(weights, dtype=taus[0].dtype), density)


@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 0.93, 1.0])
@pytest.mark.parametrize("shape", [(7, 5), (64, 48), (257,), (600, 500)])  # the last: bracketed path
def test_ties_matches_peft_without_boundary_ties(density, shape):
    g = torch.Generator().manual_seed(hash((density, shape)) % 2**31)
    taus = [torch.randn(shape, generator=g) for _ in range(2)]  # continuous: no equal magnitudes
    for w in ([1.0, 1.0], [1.0, 0.37], [1.0, -2.0]):
        assert torch.equal(ties_merge(taus, w, density), _peft_ties(taus, w, density))


def test_ties_with_duplicates_keeps_k_and_agrees_off_the_tied_magnitude():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        # few distinct magnitudes (like differences of bf16 weights): many exact ties, also at the threshold
        taus = [torch.randint(-6, 7, (40, 30), generator=g).float() * 0.25 for _ in range(2)]
        density = [0.1, 0.3, 0.5, 0.77][trial % 4]
        for t in taus:
            m = magnitude_mask(t, density)
            k = int(density * t.numel())
            assert int(m.sum()) == k
            a = t.abs().reshape(-1)
            thr = a.topk(k).values.min()
            # every entry above the threshold kept, none below; ties at it broken by lowest index
            assert bool(m.reshape(-1)[a > thr].all()) and not bool(m.reshape(-1)[a < thr].any())
            eq_kept = m.reshape(-1)[a == thr]
            assert torch.equal(eq_kept, torch.sort(eq_kept, descending=True, stable=True).values)
        ours, ref = ties_merge(taus, [1.0, 0.5], density), _peft_ties(taus, [1.0, 0.5], density)
        # off the threshold magnitudes of either task vector the results are identical
        thr = [t.abs().reshape(-1).topk(int(density * t.numel())).values.min() for t in taus]
        off = (taus[0].abs() != thr[0]) & (taus[1].abs() != thr[1])
        assert torch.equal(ours[off], ref[off])
        # at them, both are TIES means of kept entries: bounded by the largest weighted magnitude
        bound = 2 * max(float(taus[0].abs().max()), 0.5 * float(taus[1].abs().max()))
        assert float((ours - ref).abs().max()) <= bound
        assert bool((ours != ref)[off].logical_not().all())


def test_ties_method_on_bf16_inputs_matches_peft_on_float32():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(96, 64, generator=g).bfloat16()
    lrm = (base.float() + 0.01 * torch.randn(96, 64, generator=g)).bfloat16()
    itm = (base.float() + 0.01 * torch.randn(96, 64, generator=g)).bfloat16()
    b, r, i = base.float(), lrm.float(), itm.float()
    ref = b + _peft_ties([r - b, i - b], [1.0, 0.8], 0.5)
    ours = Ties(0.8, 0.5).merge(SITE, lrm, base, itm)
    assert ours.dtype == torch.float32
    # bf16 differences take few distinct values, so many tie at the trim threshold; peft's topk keeps
    # an unspecified subset of those. Everywhere else the two agree exactly.
    taus = [r - b, i - b]
    thr = [t.abs().reshape(-1).topk(int(0.5 * t.numel())).values.min() for t in taus]
    off = (taus[0].abs() != thr[0]) & (taus[1].abs() != thr[1])
    assert int(off.sum()) > 0.5 * off.numel()
    assert torch.equal(ours[off], ref[off])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_task_arithmetic_on_stored_dtypes_equals_the_float32_formula(dtype):
    g = torch.Generator().manual_seed(2)
    lrm, base, itm = (torch.randn(33, 17, generator=g).to(dtype) for _ in range(3))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    ref = lrm.to(acc) + 0.7 * (itm.to(acc) - base.to(acc))
    before = [t.clone() for t in (lrm, base, itm)]
    out = TaskArithmetic(0.7).merge(SITE, lrm, base, itm)
    assert out.dtype == acc and torch.allclose(out, ref, rtol=1e-6, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(before, (lrm, base, itm)))  # inputs untouched
    # fp32 inputs (the old interface) give the same as stored ones
    out32 = TaskArithmetic(0.7).merge(SITE, lrm.to(acc), base.to(acc), itm.to(acc))
    assert torch.equal(out, out32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_all_finite(dtype):
    t = torch.randn(50, 40).to(dtype)
    assert all_finite(t)
    big = torch.full((8, 8), torch.finfo(dtype).max, dtype=dtype)  # the sum overflows: still finite
    assert all_finite(big)
    for v in (float("nan"), float("inf"), float("-inf")):
        u = t.clone()
        u[49, 39] = v
        assert not all_finite(u)
    u = t.clone()
    u[0, 0], u[1, 1] = float("inf"), float("-inf")
    assert not all_finite(u)
    assert all_finite(torch.arange(5)) and all_finite(torch.empty(0))


def test_lrm_loaded_as_stored_then_upcast_equals_a_float32_load(trio_factory, tmp_path):
    """bf16 checkpoint, float32 forwards: loading as stored and upcasting per parameter (no 1.5x peak)
    gives the same parameters, buffers and hidden states as from_pretrained(dtype=float32)."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from rainmerge.config import load_config
    from rainmerge.context import load_reasoning_model, open_models, stored_float_dtype

    trio = trio_factory()
    d = tmp_path / "lrm-bf16"
    shutil.copytree(trio["reasoning"], d)
    for f in d.glob("*.safetensors"):
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(f).items()}, f, metadata={"format": "pt"})
    cfg = load_config(None, {"base": str(trio["base"]), "instruct": str(trio["instruct"]), "reasoning": str(d),
                             "output": str(tmp_path / "o"), "device": "cpu", "method": "task_arithmetic"})
    ctx = open_models(cfg.models_spec(), cfg.runtime())
    assert stored_float_dtype(ctx.reasoning) == torch.bfloat16 and ctx.forward_dtype == torch.float32
    ours = load_reasoning_model(ctx)
    ref = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="sdpa").eval()
    a, b = dict(ours.named_parameters()), dict(ref.named_parameters())
    assert a.keys() == b.keys() and all(a[k].dtype == torch.float32 and torch.equal(a[k], b[k]) for k in a)
    ab, bb = dict(ours.named_buffers()), dict(ref.named_buffers())
    assert ab.keys() == bb.keys() and all(ab[k].dtype == bb[k].dtype and torch.equal(ab[k], bb[k]) for k in ab)
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.no_grad():
        assert torch.equal(ours(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_kth_largest_is_kthvalue_exactly():
    from rainmerge.methods.ties import kth_largest

    g = torch.Generator().manual_seed(3)
    n = 300_001
    cases = {
        "normal": torch.randn(n, generator=g).abs(),
        "few_values": torch.randint(0, 7, (n,), generator=g).float(),  # massive ties
        "sorted": torch.arange(n, dtype=torch.float32),  # the strided sample sees a biased grid
        "constant": torch.full((n,), 0.5),
        "blocks": torch.cat([torch.rand(n // 2, generator=g) * 1e-3, torch.rand(n - n // 2, generator=g)]),
    }
    for name, a in cases.items():
        for k in (1, 2, 17, n // 10, n // 2, n - 3, n):
            assert torch.equal(kth_largest(a, k), torch.kthvalue(a, n - k + 1).values), (name, k)
