"""The dtype names used across the pack (node widgets, CLI flags, configs) -> torch dtypes."""
from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """'fp32' / 'bf16' / 'fp16' (or torch's long names, or a torch.dtype) -> torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    key = _ALIASES.get(name, name)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[key]
