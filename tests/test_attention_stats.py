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
            a[l, h] = sum(av) / len(av) if av else 0.0
            u[l, h] = sum(uv) / len(uv) if uv else 0.0
    return a, u


def test_statistics_match_eager_attention(trio_factory):
    trio = trio_factory("qwen2")
    tok = AutoTokenizer.from_pretrained(trio["reasoning"])
    recs = [InstructionRecord.model_validate(r) for r in instruction_records()]
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
        assert torch.allclose(A[si].double(), a, atol=1e-5, rtol=0)
        assert torch.allclose(U[si].double(), u, atol=1e-5, rtol=0)
        # rows are response tokens after the instruction: causal attention to it is non-zero
        assert (a > 0).all() and (u > 0).all()
    assert model.config._attn_implementation == "sdpa"  # restored after scoring
