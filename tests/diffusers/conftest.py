"""Fixtures for the diffusers entry point and the CoBSAT harness: a tiny random diffusers FluxPipeline with the
REAL CLIP-L and T5 tokenizers ComfyUI ships, a tiny random Qwen2-VL with the real Qwen2-VL tokenizer, and a
random aligner from the VLM's width to the tiny FLUX's T5 width (all built at test time, nothing downloaded)."""
import pytest

from thinkdiff_core.tiny import build_tiny_aligner, build_tiny_flux_pipeline, build_tiny_qwen2vl, find_tokenizer

FLUX_T5_DIM = 32   # joint_attention_dim of the tiny FLUX = the tiny T5's d_model = the aligner's output width


@pytest.fixture(scope="session")
def clip_tokenizer_dir(comfy_dir) -> str:
    return find_tokenizer("sd1_tokenizer", comfy_dir)


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory, clip_tokenizer_dir, t5_tokenizer_dir) -> str:
    d = tmp_path_factory.mktemp("tiny_flux")
    build_tiny_flux_pipeline(d, clip_tokenizer_dir, t5_tokenizer_dir, joint_dim=FLUX_T5_DIM)
    return str(d)


@pytest.fixture(scope="session")
def pipe(tiny_flux_dir):
    from diffusers import FluxPipeline
    p = FluxPipeline.from_pretrained(tiny_flux_dir, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory, qwen_tokenizer_dir) -> str:
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen2vl"), qwen_tokenizer_dir)


@pytest.fixture(scope="session")
def encoder(tiny_vlm_dir):
    from thinkdiff_core.vlm import VLMEncoder
    return VLMEncoder.from_pretrained(tiny_vlm_dir, dtype="fp32")


@pytest.fixture(scope="session")
def aligner_file(tmp_path_factory, encoder) -> str:
    from thinkdiff_core.checkpoint import save_aligner
    path = tmp_path_factory.mktemp("aligner") / "tiny_aligner.safetensors"
    save_aligner(build_tiny_aligner(encoder.hidden_size, out_dim=FLUX_T5_DIM, hidden_dim=64), path,
                 source_vlm="tiny-qwen2-vl (random)")
    return str(path)


@pytest.fixture(scope="session")
def photos():
    """Two real photos (scikit-image's CC0 samples)."""
    from PIL import Image
    from skimage import data
    return [Image.fromarray(data.chelsea()).resize((56, 42)), Image.fromarray(data.coffee()).resize((56, 42))]
