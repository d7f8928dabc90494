"""thinkdiff_core.diffusers_pipeline on a tiny random diffusers FluxPipeline (real CLIP-L and T5 tokenizers)."""
from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch

from thinkdiff_core import diffusers_pipeline as dp
from thinkdiff_core.checkpoint import load_aligner
from thinkdiff_core.prompts import build_prompt

STEPS, SIZE = 2, 32
TOKENS = 16   # the default is the paper's 128 (test below); fewer keep the CPU test short


def test_image_equals_the_pipeline_called_directly_with_the_aligned_embeddings(pipe, encoder, aligner_file, photos):
    aligner, _ = load_aligner(aligner_file)
    out = dp.generate(pipe, encoder, aligner, photos, "cat, coffee, dog", preset="in_context",
                      num_inference_steps=STEPS, height=SIZE, width=SIZE, seed=7, vlm_seed=3, max_new_tokens=TOKENS)
    # the same thing by hand: the VLM's rows (EOS suppressed, T 0.6, top-p 0.9), the aligner, CLIP-L pooled of ""
    # from the pipeline's public encode_prompt, then the pipeline itself with the same seed
    vlm = encoder.generate(build_prompt("in_context", photos, "cat, coffee, dog"), max_new_tokens=TOKENS, seed=3,
                           temperature=0.6, top_p=0.9)
    assert vlm.hidden.shape[0] == TOKENS and out.text == vlm.text and out.text
    with torch.no_grad():
        prompt_embeds = aligner(vlm.hidden).unsqueeze(0)
        _, pooled, _ = pipe.encode_prompt(prompt="", prompt_2="")
    assert torch.allclose(out.conditioning.tokens, prompt_embeds), "prompt_embeds are not the aligned VLM rows"
    assert torch.allclose(out.conditioning.pooled, pooled), "pooled_prompt_embeds are not CLIP-L's pooled output of ''"
    assert out.conditioning.guidance == 3.5
    direct = pipe(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, guidance_scale=3.5,
                  num_inference_steps=STEPS, height=SIZE, width=SIZE,
                  generator=torch.Generator().manual_seed(7)).images[0]
    a, b = np.asarray(out.image), np.asarray(direct)
    assert a.shape == (SIZE, SIZE, 3) and a.std() > 0
    assert np.array_equal(a, b), f"images differ (max abs diff {np.abs(a.astype(int) - b).max()})"
    # and the embeddings matter: other prompt embeddings give another image under the same seed (not a reordering:
    # FLUX gives every text token position 0, so the order of the tokens does not matter)
    other = pipe(prompt_embeds=-prompt_embeds, pooled_prompt_embeds=pooled, guidance_scale=3.5,
                 num_inference_steps=STEPS, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(7))
    assert not np.array_equal(np.asarray(other.images[0]), a)


def test_official_inference_settings_are_the_defaults():
    sig = inspect.signature(dp.generate).parameters
    assert sig["guidance"].default == 3.5 and sig["num_inference_steps"].default == 28
    assert sig["max_new_tokens"].default == 128 and sig["temperature"].default == 0.6 and sig["top_p"].default == 0.9
    assert sig["seed"].default == 42 and sig["preset"].default == "in_context"
    assert dp.default_size("in_context") == 512 and dp.default_size("image_text") == 1024


def test_pooled_vector_is_clip_l_of_the_empty_prompt(pipe):
    pooled = dp.clip_pooled(pipe, "")
    assert pooled.shape == (1, 768)
    assert torch.allclose(pooled, pipe.encode_prompt(prompt="", prompt_2="")[1])
    assert not torch.allclose(pooled, dp.clip_pooled(pipe, "a red car"))


def test_aligner_of_another_width_is_a_clear_error(pipe, encoder, photos):
    from thinkdiff_core.tiny import build_tiny_aligner
    wrong = build_tiny_aligner(encoder.hidden_size, out_dim=48, hidden_dim=16)
    with pytest.raises(ValueError, match="outputs 48-wide tokens, but this image model reads 32-wide text states"):
        dp.generate(pipe, encoder, wrong, photos[:1], "describe it", preset="image_text", max_new_tokens=2,
                    num_inference_steps=1, height=16, width=16)


def test_text_path_is_the_pipeline_with_its_own_encoders(pipe):
    a = dp.generate_from_text(pipe, "a red car", num_inference_steps=1, height=16, width=16, seed=1)
    b = pipe(prompt="a red car", guidance_scale=3.5, num_inference_steps=1, height=16, width=16,
             generator=torch.Generator().manual_seed(1)).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_diffusers_is_imported_lazily():
    code = ("import sys, thinkdiff_core, thinkdiff_core.diffusers_pipeline, thinkdiff_core.eval.cobsat; "
            "assert 'diffusers' not in sys.modules, 'diffusers imported at package import'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_clip_variant_is_image_tokens_then_the_pipelines_own_t5_text(pipe, photos, tmp_path):
    """ThinkDiff-CLIP on the pipeline (docs/method.md §4.2): [65 aligned tokens per image, in order ; the
    pipeline's T5 encoding of the text, 128 tokens] with the text's CLIP-L pooled vector; the image equals the
    pipeline called directly with those embeddings."""
    from thinkdiff_core.tiny import build_tiny_aligner, build_tiny_blip2_vision
    from thinkdiff_core.vision import VisionEncoder
    vision = VisionEncoder.from_pretrained(build_tiny_blip2_vision(tmp_path / "blip2"), dtype="fp32")
    aligner = build_tiny_aligner(vision.hidden_size, out_dim=pipe.transformer.config.joint_attention_dim, hidden_dim=64)
    text = "a cat on a sofa"
    out = dp.generate_clip(pipe, vision, aligner, photos, text, num_inference_steps=STEPS, height=SIZE, width=SIZE,
                           seed=7)
    with torch.no_grad():
        image_tokens = aligner(vision.encode(photos).tokens)              # [2, 65, C]
        t5, pooled, _ = pipe.encode_prompt(prompt=text, prompt_2=text, max_sequence_length=128)
    expected = torch.cat([image_tokens[0], image_tokens[1], t5[0]]).unsqueeze(0)
    assert out.conditioning.tokens.shape == (1, 2 * 65 + 128, pipe.transformer.config.joint_attention_dim)
    assert torch.allclose(out.conditioning.tokens, expected, atol=1e-6)
    assert torch.allclose(out.conditioning.pooled, pooled) and out.vlm is None and out.text == text
    direct = pipe(prompt_embeds=expected, pooled_prompt_embeds=pooled, guidance_scale=3.5, num_inference_steps=STEPS,
                  height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(7)).images[0]
    assert np.array_equal(np.asarray(out.image), np.asarray(direct))
    # the images matter, and an LVLM aligner is refused with the variant's message
    swapped = dp.clip_conditioning(pipe, aligner, vision.encode(photos[::-1]).tokens, text)
    assert not torch.allclose(swapped.tokens[:, :65], out.conditioning.tokens[:, :65])
    with pytest.raises(Exception, match="ThinkDiff-LVLM aligner"):
        dp.clip_conditioning(pipe, aligner, vision.encode(photos).tokens, text, aligner_variant="lvlm")
