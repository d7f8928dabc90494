"""The core pipeline on tiny random models, end to end on the CPU (``python -m thinkdiff_core demo``).

Builds (once, in a cache folder) a tiny Qwen2-VL with the real Qwen2-VL tokenizer and a tiny aligner,
reads two real photos with the paper's in-context prompt, generates 128 tokens with EOS suppressed,
aligns the captured rows and prints the text and the FLUX prompt-embedding shape. The weights are
random, so the text is gibberish: the demo shows the plumbing, not the quality.
"""
from __future__ import annotations

import os



def default_cache() -> str:
    """$XDG_CACHE_HOME/thinkdiff/demo_core (~/.cache/... when unset): the tiny models are rebuilt there once."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "thinkdiff", "demo_core")


def demo_images():
    """Two real photos shipped by scikit-image (CC0 / public domain)."""
    from PIL import Image
    from skimage import data
    return [Image.fromarray(data.chelsea()).resize((96, 64)), Image.fromarray(data.coffee()).resize((96, 64))]


def run(cache: str | None = None, max_new_tokens: int = 128, seed: int = 0, comfyui_dir: str | None = None) -> dict:
    """``comfyui_dir``: a ComfyUI folder whose shipped Qwen2 tokenizer the tiny VLM uses (else $COMFYUI_DIR)."""
    import torch

    from .checkpoint import load_aligner, save_aligner
    from .conditioning import align, pooled_vector
    from .prompts import build_prompt
    from .tiny import build_tiny_aligner, build_tiny_qwen2vl, find_tokenizer
    from .vlm import VLMEncoder

    cache = cache or default_cache()
    vlm_dir, aligner_path = os.path.join(cache, "tiny-qwen2-vl"), os.path.join(cache, "tiny_aligner.safetensors")
    if not os.path.isfile(os.path.join(vlm_dir, "config.json")):
        build_tiny_qwen2vl(vlm_dir, find_tokenizer("qwen25_tokenizer", comfyui_dir))
    encoder = VLMEncoder.from_pretrained(vlm_dir, dtype="fp32")
    if not os.path.isfile(aligner_path):
        save_aligner(build_tiny_aligner(encoder.hidden_size), aligner_path, source_vlm="tiny-qwen2-vl (random)")
    aligner, _ = load_aligner(aligner_path)
    prompt = build_prompt("in_context", demo_images(), "cat, coffee, dog")
    out = encoder.generate(prompt, max_new_tokens=max_new_tokens, seed=seed)
    embeds = align(aligner, out.hidden)
    pooled = pooled_vector(torch.zeros(1, 768))   # a real graph takes CLIP-L's pooled output of ""
    return {"text": out.text, "tokens": int(out.token_ids.numel()), "rows": tuple(out.hidden.shape),
            "prompt_embeds": list(embeds.shape), "pooled": list(pooled.shape)}
