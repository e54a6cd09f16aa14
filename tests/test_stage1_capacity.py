"""Shipped real configs keep the Stage-1 projector exact on every module (issue #9).

Shapes are the public config.json values (no download); the pinned reasoning calibration set has 150
records (rain-method.md F.1). rows <= floor(max_rank_fraction * width) guarantees rule 'exact'.
"""

from pathlib import Path
from types import SimpleNamespace

import pytest

from rainmerge.config import load_config
from rainmerge.projection import capacity, positions_per_sample

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_RECORDS = 150
SHAPES = {  # hidden, heads, head_dim, intermediate
    "qwen2.5-1.5b": SimpleNamespace(hidden=1536, num_heads=12, head_dim=128, intermediate=8960),
    "qwen2.5-7b": SimpleNamespace(hidden=3584, num_heads=28, head_dim=128, intermediate=18944),
    "llama3.1-8b": SimpleNamespace(hidden=4096, num_heads=32, head_dim=128, intermediate=14336),
}


def _rows(cfg) -> int:
    n = min(REFERENCE_RECORDS, cfg.reasoning_calibration.max_samples or REFERENCE_RECORDS)
    return n * positions_per_sample(cfg.stage1.positions, cfg.stage1.radius)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shipped_config_rows_fit_under_every_rank_cap(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.stage1.o_proj == "full"
    cap = capacity(SHAPES[name], _rows(cfg), cfg.stage1.max_rank_fraction, cfg.stage1.o_proj)
    assert set(cap) == {"attn_in", "o_in", "mlp_in", "down_in"}
    bad = {g: c for g, c in cap.items() if not c["exact_guaranteed"]}
    assert not bad, f"{name}: protected rows exceed the rank cap on {bad}"


def test_reference_window_would_cap_the_1p5b_model_and_per_head_o_caps_everywhere():
    shape = SHAPES["qwen2.5-1.5b"]
    ref = capacity(shape, REFERENCE_RECORDS * positions_per_sample("window", 5))  # 1800 rows
    assert not ref["attn_in"]["exact_guaranteed"] and ref["attn_in"]["cap"] == 1382
    for name, s in SHAPES.items():  # head_dim 128 -> cap 115 << any realistic row count
        assert not capacity(s, 900, o_proj="per_head")["o_in"]["exact_guaranteed"], name
