"""Fixtures for the core-library tests: a tiny random Qwen2-VL with the real Qwen2-VL tokenizer
(shipped by ComfyUI), and real photos (scikit-image's CC0 / public-domain samples)."""
import pytest
from PIL import Image

from thinkdiff_core.tiny import build_tiny_qwen2vl


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory, qwen_tokenizer_dir):
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen2vl"), qwen_tokenizer_dir)


@pytest.fixture(scope="session")
def encoder(tiny_vlm_dir):
    from thinkdiff_core.vlm import VLMEncoder
    return VLMEncoder.from_pretrained(tiny_vlm_dir, dtype="fp32")


@pytest.fixture(scope="session")
def photos():
    """Four real photos of different sizes (the processor resizes them the Qwen2-VL way)."""
    from skimage import data
    arrays = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    sizes = [(64, 64), (84, 56), (56, 84), (112, 70)]
    return [Image.fromarray(a).convert("RGB").resize(s) for a, s in zip(arrays, sizes)]
