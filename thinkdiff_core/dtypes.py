"""The one dtype table of the pack: node widgets, CLI flags and configs all use these names.

``resolve_dtype`` turns a name (or "auto") into a torch dtype for a device; the nodes, the core and
the trainer all call it, passing what their host knows about the device where that matters
(ComfyUI's memory manager decides bf16/fp16 support for the nodes).
"""
from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTO = "auto"
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def choices(auto: bool = False, only: tuple[str, ...] | None = None) -> list[str]:
    """Option lists for combos and CLI flags, built from the table (``auto`` first when allowed)."""
    names = [n for n in DTYPES if only is None or n in only]
    return ([AUTO] if auto else []) + names


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """'fp32' / 'bf16' / 'fp16' (or torch's long names, or a torch.dtype) -> torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    key = _ALIASES.get(name, name)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> 'bf16' (the table's name), for logs, metadata and configs."""
    for k, v in DTYPES.items():
        if v == dtype:
            return k
    return str(dtype).replace("torch.", "")


def resolve_dtype(name: str | torch.dtype, device: str | torch.device = "cpu", *,
                  bf16_supported: bool | None = None, fp16_supported: bool | None = None) -> torch.dtype:
    """A dtype name, or "auto": fp32 on the CPU; on an accelerator bf16 where it is supported, else
    fp16 where that is, else fp32. Support defaults to what torch reports for CUDA devices."""
    if name != AUTO:
        return parse_dtype(name)
    device = torch.device(device)
    if device.type == "cpu":
        return torch.float32
    if bf16_supported is None:
        bf16_supported = device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if fp16_supported is None:
        fp16_supported = device.type == "cuda"
    if bf16_supported:
        return torch.bfloat16
    return torch.float16 if fp16_supported else torch.float32
