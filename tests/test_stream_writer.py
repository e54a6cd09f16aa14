"""The streaming shard writer (rainmerge.io.stream) writes the safetensors library's own file, byte for
byte, while holding only a few tensors; bad input is refused with the tensor named."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rainmerge.io.stream import DTYPE_STR, StreamingShard, data_order
from rainmerge.io.writer import write_sharded


def _mixed() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for i, dt in enumerate(DTYPE_STR):
        base = torch.randn(3 + i, 5, generator=g) * 40
        out[f"layer.{i}.{str(dt)[6:]}"] = base.to(dt) if dt is not torch.bool else base > 0
    out["scalar"] = torch.tensor(3.5)
    out["empty"] = torch.zeros(0, 7, dtype=torch.bfloat16)
    out["model.embed_tokens.weight"] = torch.randn(64, 16, generator=g).to(torch.bfloat16)
    return out


def test_bytes_equal_the_librarys_save_file(tmp_path):
    tensors = _mixed()
    save_file(tensors, tmp_path / "lib.safetensors", metadata={"format": "pt"})
    layout = {n: (tuple(t.shape), DTYPE_STR[t.dtype]) for n, t in tensors.items()}
    with StreamingShard(tmp_path / "ours.safetensors", list(reversed(tensors)), layout, {"format": "pt"}) as shard:
        for name in shard.order:
            shard.write(name, tensors[name])
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "lib.safetensors").read_bytes()


def test_a_shard_is_never_held_whole(tmp_path, monkeypatch):
    """produce() runs tensor by tensor while earlier ones are already on disk: with a queue of 1 at
    most three produced tensors are alive at once (queued, being written, just made)."""
    import weakref

    n, alive, peak = 12, weakref.WeakSet(), [0]
    layout = {f"t{i:02d}": ((256, 256), "F32") for i in range(n)}

    def produce(name):
        t = torch.full((256, 256), float(int(name[1:])))
        alive.add(t)
        peak[0] = max(peak[0], len(alive))
        return t

    with StreamingShard(tmp_path / "s.safetensors", list(layout), layout, queue=1) as shard:
        for name in shard.order:
            shard.write(name, produce(name))
    assert peak[0] <= 3
    with safe_open(tmp_path / "s.safetensors", "pt") as f:
        assert all(float(f.get_tensor(k)[0, 0]) == float(int(k[1:])) for k in layout)


def test_write_sharded_streams_several_shards_with_an_index(tmp_path):
    tensors = {f"model.layers.{i}.w": torch.randn(64, 64).to(torch.bfloat16) for i in range(6)}
    layout = {n: (tuple(t.shape), "BF16") for n, t in tensors.items()}
    seen = []
    where = write_sharded(tmp_path, layout, lambda n: seen.append(n) or tensors[n], max_shard_size=20_000,
                          progress=False)
    assert sorted(seen) == sorted(tensors) and len(set(where.values())) > 1
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == where
    for name, fname in where.items():
        with safe_open(tmp_path / fname, "pt") as f:
            assert torch.equal(f.get_tensor(name), tensors[name])


def test_out_of_order_wrong_shape_and_missing_tensors_are_refused(tmp_path):
    layout = {"a": ((2, 2), "F32"), "b": ((3,), "BF16")}
    assert data_order(["b", "a"], layout) == ["a", "b"]  # F32 before BF16, as the library stores them
    with pytest.raises(RuntimeError, match="got tensor b, expected a"):
        with StreamingShard(tmp_path / "x.safetensors", ["a", "b"], layout) as s:
            s.write("b", torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match=r"a: produced \(2, 3\) torch.float32, planned \[2, 2\] F32"):
        with StreamingShard(tmp_path / "x.safetensors", ["a", "b"], layout) as s:
            s.write("a", torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="1 planned tensors were never written"):
        with StreamingShard(tmp_path / "x.safetensors", ["a", "b"], layout) as s:
            s.write("a", torch.zeros(2, 2))
    with pytest.raises(ValueError, match="dtype C64 cannot be written"):
        data_order(["c"], {"c": ((1,), "C64")})
