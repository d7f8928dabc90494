"""Where things are in this repository's development layout (the core library never looks here)."""
from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_INPUTS = os.path.join(ROOT, "example_inputs")
WORKFLOWS = os.path.join(ROOT, "workflows")
CACHE = os.path.join(ROOT, ".cache")


def comfyui_dir() -> str:
    """The ComfyUI the tools use: $COMFYUI_DIR, else the one scripts/bootstrap.sh installs (.comfyui)."""
    return os.environ.get("COMFYUI_DIR") or os.path.join(ROOT, ".comfyui")


def tokenizer_dir(name: str) -> str:
    """A tokenizer folder ComfyUI ships ('qwen25_tokenizer', 't5_tokenizer')."""
    from thinkdiff_core.tiny import find_tokenizer
    return find_tokenizer(name, comfyui_dir())
