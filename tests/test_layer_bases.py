"""Projector bases read back from their pipeline artifact a layer at a time (Stage 2 and Stage 3 in the
pipeline keep one layer's bases on the host, not every layer's)."""

import dataclasses

import pytest
import torch

from rainmerge.product.artifacts import LayerBases, load_bases, save_bases
from rainmerge.projection import Basis


def _bases():
    g = torch.Generator().manual_seed(0)
    out = {}
    for layer in (0, 2, 5):
        out[layer] = {name: Basis(torch.randn(16, 4, generator=g, dtype=torch.float64 if name == "mlp_in" else torch.float32),
                                  torch.rand(4, generator=g).sort(descending=True).values, k=3 + layer % 2,
                                  lam=0.0, capped=layer == 2, rows=40 + layer, rel_ridge=1e-6, float32_residual=0.5)
                      for name in ("attn_in", "mlp_in")}
    return out


def test_round_trip_is_exact_and_read_on_access(tmp_path):
    want = _bases()
    save_bases(tmp_path, want)
    got = load_bases(tmp_path)
    assert isinstance(got, LayerBases) and list(got) == [0, 2, 5] and len(got) == 3
    for layer, groups in want.items():
        back = got[layer]
        assert set(back) == set(groups)
        for name, b in groups.items():
            c = back[name]
            assert torch.equal(c.V, b.V) and c.V.dtype == b.V.dtype and torch.equal(c.s, b.s)
            for f in dataclasses.fields(b):
                if not isinstance(getattr(b, f.name), torch.Tensor):
                    assert getattr(c, f.name) == getattr(b, f.name), f.name
    # nothing was read ahead: a layer's file is opened only when that layer is asked for
    (tmp_path / "layer_005.safetensors").unlink()
    assert torch.equal(got[2]["attn_in"].V, want[2]["attn_in"].V)
    try:
        got[5]
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("layer 5 was held in memory instead of read on access")


@pytest.mark.slow
def test_merge_from_lazily_read_bases_is_byte_identical(tmp_path, monkeypatch):
    """The toy RAIN merge with its Stage-1 bases round-tripped through the artifact and read a layer at a
    time (as the pipeline's merge step does) writes the same model.safetensors as from the in-memory dict."""
    import hashlib
    from pathlib import Path

    from rainmerge import stages
    from rainmerge.cli import main

    toy = Path(__file__).resolve().parents[1] / "assets" / "toy"
    args = ["merge", "--config", str(toy.parents[1] / "configs" / "toy.yaml"), "--quiet", "--device", "cpu",
            "--base", str(toy / "base"), "--instruct", str(toy / "instruct"), "--reasoning", str(toy / "reasoning"),
            "--reasoning-calibration", str(toy / "data" / "reasoning_calibration.json"),
            "--instruction-calibration", str(toy / "data" / "instruction_calibration.jsonl"), "--method", "rain"]

    def digest(out):
        assert main([*args, "--output", str(out)]) == 0
        return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()

    ref = digest(tmp_path / "dict")
    real, seen = stages.build_method, []

    def via_artifact(cfg, **parts):
        if "bases" in parts:
            folder = tmp_path / "bases"
            folder.mkdir()
            save_bases(folder, parts["bases"])
            parts["bases"] = load_bases(folder)
            seen.append(type(parts["bases"]))
        return real(cfg, **parts)

    monkeypatch.setattr(stages, "build_method", via_artifact)
    assert digest(tmp_path / "lazy") == ref and seen == [LayerBases]
