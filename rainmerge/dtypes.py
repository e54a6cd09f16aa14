"""The one dtype table: safetensors' dtype names with their torch dtypes (sizes follow from torch), and
the float dtypes models compute in, by the config's names. A bottom-floor module: imports only torch."""

from __future__ import annotations

import torch

# safetensors header name -> torch dtype
SAFETENSORS: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E8M0": torch.float8_e8m0fnu,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}
# bytes per element of each safetensors name: headers are checked and sizes planned without reading a tensor
DTYPE_BYTES: dict[str, int] = {name: dt.itemsize for name, dt in SAFETENSORS.items()}

# the float dtypes models compute in, by the config's names (forward_dtype, stage1.solve_dtype)
FLOATS: dict[str, torch.dtype] = {"float64": torch.float64, "float32": torch.float32,
                                  "bfloat16": torch.bfloat16, "float16": torch.float16}
FLOAT_BYTES: dict[str, int] = {name: dt.itemsize for name, dt in FLOATS.items()}


def compute_float(st_name: str) -> torch.dtype | None:
    """The torch dtype of a safetensors name when it is a float models compute in (F64, F32, F16, BF16);
    None for anything else (float8 storage, integers, unknown names)."""
    dt = SAFETENSORS.get(st_name)
    return dt if dt in FLOATS.values() else None
