"""GQA grouping and coefficient mapping against transformers' own repeat_kv."""

import pytest
import torch
from transformers.models.qwen2.modeling_qwen2 import repeat_kv

from rainmerge.arch import arch_from_config, check_compatible
from rainmerge.coefficients import module_coefficients
from rainmerge.errors import ConfigError
from rainmerge.methods.rain import scale_module

CFG = {"model_type": "qwen2", "hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
       "num_hidden_layers": 28, "intermediate_size": 18944, "vocab_size": 152064}


def test_kv_head_matches_repeat_kv():
    arch = arch_from_config(CFG)
    kv = torch.arange(arch.num_kv_heads).float().view(1, arch.num_kv_heads, 1, 1).expand(1, -1, 3, 2)
    expanded = repeat_kv(kv, arch.n_rep)
    for h in range(arch.num_heads):
        assert expanded[0, h, 0, 0].item() == arch.kv_head(h)
        assert h in arch.query_heads(arch.kv_head(h))
    # the reference code's h mod KV mapping disagrees for most heads
    assert sum(arch.kv_head(h) == h % arch.num_kv_heads for h in range(28)) == 8


def test_kv_coefficient_is_mean_of_its_query_group_and_scales_rows_once():
    arch = arch_from_config(CFG | {"hidden_size": 56, "intermediate_size": 8, "num_attention_heads": 4 * 7})
    alpha = torch.rand(1, arch.num_heads, dtype=torch.float64)
    c = module_coefficients(alpha, [0], arch)[0]
    for g in range(arch.num_kv_heads):
        assert torch.isclose(c["k"][g], alpha[0, arch.query_heads(g)].mean())
    delta = torch.ones(arch.num_kv_heads * arch.head_dim, arch.hidden, dtype=torch.float64)
    scaled = scale_module("k", delta, c["k"], arch)
    for g in range(arch.num_kv_heads):
        rows = scaled[g * arch.head_dim:(g + 1) * arch.head_dim]
        assert torch.allclose(rows, torch.full_like(rows, float(c["k"][g])))
    assert torch.allclose(c["gate"], alpha.mean().reshape(1))


def test_o_scaling_is_per_column_block():
    arch = arch_from_config(CFG | {"hidden_size": 8, "num_attention_heads": 4, "num_key_value_heads": 2})
    a = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    out = scale_module("o", torch.ones(8, 8, dtype=torch.float64), a, arch)
    assert torch.equal(out[:, 0:2], torch.ones(8, 2, dtype=torch.float64))
    assert torch.equal(out[:, 6:8], torch.full((8, 2), 4.0, dtype=torch.float64))


def test_explicit_head_dim_and_family_checks():
    a = arch_from_config({**CFG, "model_type": "mistral", "head_dim": 256})
    assert a.head_dim == 256 and a.weight_shape("q") == (28 * 256, 3584)
    with pytest.raises(ConfigError, match="family"):
        check_compatible({"r": arch_from_config(CFG), "b": arch_from_config({**CFG, "model_type": "llama"})})
    with pytest.raises(ConfigError, match="hidden"):
        check_compatible({"r": arch_from_config(CFG), "b": arch_from_config({**CFG, "hidden_size": 4096})})
    with pytest.raises(ConfigError, match="not supported"):
        arch_from_config({**CFG, "model_type": "gpt2"})
    warn = check_compatible({"r": arch_from_config(CFG), "b": arch_from_config({**CFG, "vocab_size": 151936})})
    assert warn and "vocab" in warn[0]
