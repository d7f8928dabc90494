"""Fixtures every suite shares: the ComfyUI folder (its tokenizers are the real ones the tiny models
use) and the tokenizer folders in it; and the offline guard: in this process, any connection or name
lookup that is not loopback fails (devtools.offline), so no code path can reach a model hub unseen."""
from __future__ import annotations

import os

import pytest

from devtools import offline, paths

# subprocesses the tests start (python -m train ..., python -m thinkdiff_core ...) find the same ComfyUI
os.environ.setdefault("COMFYUI_DIR", paths.comfyui_dir())


def pytest_configure(config):
    offline.install()


@pytest.fixture(scope="session")
def comfy_dir() -> str:
    d = paths.comfyui_dir()
    if not os.path.isfile(os.path.join(d, "main.py")):
        pytest.fail(f"ComfyUI not found at {d} (no main.py): run scripts/bootstrap.sh or set COMFYUI_DIR to a "
                    f"ComfyUI 0.3.75 folder. The suites need a real ComfyUI and are never skipped.", pytrace=False)
    return d


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(comfy_dir) -> str:
    from thinkdiff_core.tiny import find_tokenizer
    return find_tokenizer("qwen25_tokenizer", comfy_dir)


@pytest.fixture(scope="session")
def t5_tokenizer_dir(comfy_dir) -> str:
    from thinkdiff_core.tiny import find_tokenizer
    return find_tokenizer("t5_tokenizer", comfy_dir)
