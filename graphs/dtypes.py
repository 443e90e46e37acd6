"""The one dtype map: precision names (``fp16``) and tensor dtype names (``float16``, as TensorSpec writes them)."""

from __future__ import annotations

import torch

# --precision name -> the dtype of weights, activations and caches
PRECISION_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    """A dtype as graph signatures and manifests write it: ``torch.float16`` -> ``float16``."""
    return str(dtype).removeprefix("torch.")


# dtype name -> dtype, for every dtype a graph input or output may have
TENSOR_DTYPES: dict[str, torch.dtype] = {
    dtype_name(d): d
    for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int8,
              torch.uint8, torch.bool)
}


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype of a precision name; ValueError listing the names."""
    try:
        return PRECISION_DTYPES[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISION_DTYPES)}") from None


def precision_of(dtype: torch.dtype) -> str:
    """The precision name of a floating-point dtype (``torch.bfloat16`` -> ``bf16``); ValueError otherwise."""
    for name, known in PRECISION_DTYPES.items():
        if known == dtype:
            return name
    raise ValueError(f"dtype {dtype} has no ditcache precision; use one of: "
                     f"{', '.join(f'{dtype_name(d)} ({n})' for n, d in PRECISION_DTYPES.items())}")


def dtype_of(name: str) -> torch.dtype:
    """The dtype a graph signature names (``float16``); ValueError listing the names."""
    try:
        return TENSOR_DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown tensor dtype {name!r}; known: {', '.join(TENSOR_DTYPES)}") from None
