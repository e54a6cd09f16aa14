"""Stage-2 statistics from the registered attention path vs eager attention probabilities."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rainmerge.attention import alignment_leakage
from rainmerge.calibration import InstructionRecord, Template, encode_instruction
from tests.tiny import instruction_records


def _brute_force(attn, sample):
    """a, u per layer/head straight from the definition, with Python loops over tokens."""
    L, H = len(attn), attn[0].shape[1]
    a = torch.zeros(L, H, dtype=torch.float64)
    u = torch.zeros(L, H, dtype=torch.float64)
    for l in range(L):
        P = attn[l][0].double()
        for h in range(H):
            av, uv = [], []
            for s in sample.spans:
                if s.related:
                    av.append(sum(P[h, t, i] for t in s.related for i in s.instruction) /
                              (len(s.related) * len(s.instruction)))
                if s.unrelated:
                    uv.append(sum(P[h, t, i] for t in s.unrelated for i in s.instruction) /
                              (len(s.unrelated) * len(s.instruction)))
            a[l, h] = sum(av) / len(av) if av else float("nan")
            u[l, h] = sum(uv) / len(uv) if uv else float("nan")
    return a, u


def test_statistics_match_eager_attention(trio_factory):
    trio = trio_factory("qwen2")
    tok = AutoTokenizer.from_pretrained(trio["reasoning"])
    raw = instruction_records()
    raw[1]["unrelated_response_spans"] = []  # no leakage span in sample 1
    for rel in raw[1]["related_prompt_list"]:
        rel["unrelated_response_spans"] = []
    for rel in raw[2]["related_prompt_list"]:  # no related response span in sample 2
        rel["response_spans"] = []
    recs = [InstructionRecord.model_validate(r) for r in raw]
    samples, rep = encode_instruction(recs, Template(tok), "response", 4096)
    assert rep.kept == len(recs)
    model = AutoModelForCausalLM.from_pretrained(trio["reasoning"], dtype=torch.float32)
    A, U = alignment_leakage(model, samples, [0, 1], model.config.num_attention_heads, row_chunk=3,
                             progress=False)
    eager = AutoModelForCausalLM.from_pretrained(trio["reasoning"], dtype=torch.float32,
                                                 attn_implementation="eager")
    for si, s in enumerate(samples):
        with torch.no_grad():
            attn = eager(input_ids=torch.tensor([s.input_ids]), output_attentions=True).attentions
        a, u = _brute_force(attn, s)
        assert torch.allclose(A[si].double(), a, atol=1e-5, rtol=0, equal_nan=True)
        assert torch.allclose(U[si].double(), u, atol=1e-5, rtol=0, equal_nan=True)
        # rows are response tokens after the instruction: causal attention to it is non-zero
        assert (a[~a.isnan()] > 0).all() and (u[~u.isnan()] > 0).all()
    assert model.config._attn_implementation == "sdpa"  # restored after scoring
    # sample 1 has no unrelated span, sample 2 no related span: absent (NaN), not 0, and left out of the means
    assert not A.isnan().any(dim=(1, 2))[[0, 1]].any() and A[2].isnan().all()
    assert U[1].isnan().all() and not U[[0, 2]].isnan().any()
    from rainmerge.coefficients import masked_mean, solve_stage2

    assert torch.allclose(masked_mean(U), U[[0, 2]].mean(0)) and torch.allclose(masked_mean(A), A[[0, 1]].mean(0))
    sol = solve_stage2(A, U)
    assert (sol.n_samples, sol.n_a, sol.n_u) == (3, 2, 2) and not sol.degenerate
