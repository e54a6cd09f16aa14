"""The one dtype table against the safetensors library itself and against the config's dtype names."""

import json
import typing

import torch
from safetensors.torch import save_file

from rainmerge.config import ProjectionConfig, MergeConfig
from rainmerge.dtypes import DTYPE_BYTES, FLOAT_BYTES, FLOATS, SAFETENSORS, compute_float


def test_names_and_sizes_are_what_safetensors_writes(tmp_path):
    tensors = {name: torch.zeros(3, 5, dtype=dt) for name, dt in SAFETENSORS.items()}
    save_file(tensors, tmp_path / "t.safetensors")
    raw = (tmp_path / "t.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    for name in SAFETENSORS:
        start, end = header[name]["data_offsets"]
        assert header[name]["dtype"] == name and end - start == 15 * DTYPE_BYTES[name], name


def test_config_float_names_all_resolve():
    fwd = set(typing.get_args(MergeConfig.model_fields["forward_dtype"].annotation)) - {"auto"}
    solve = set(typing.get_args(ProjectionConfig.model_fields["solve_dtype"].annotation))
    assert fwd | solve <= set(FLOATS)
    assert FLOAT_BYTES == {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}
    assert all(getattr(torch, n) is dt for n, dt in FLOATS.items())


def test_compute_float_only_for_the_floats_models_compute_in():
    assert {n: compute_float(n) for n in ("F64", "F32", "F16", "BF16")} == {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    assert [compute_float(n) for n in ("F8_E4M3", "F8_E8M0", "I32", "BOOL", "nope")] == [None] * 5
