"""ThinkDiff on diffusers' ``FluxPipeline``: the official scripts' path, outside ComfyUI (docs/method.md §4.1).

The VLM reads the images and text (a preset of :mod:`thinkdiff_core.prompts`), the aligner maps the
final-norm rows of its generated tokens into the T5 space, and FLUX gets them as ``prompt_embeds`` with
``pooled_prompt_embeds`` = CLIP-L's pooled output of "" (computed with the pipeline's own text_encoder and
tokenizer), distilled guidance 3.5, 28 steps, 512x512 for the in-context preset and 1024x1024 otherwise::

    import torch
    from diffusers import FluxPipeline
    from thinkdiff_core.checkpoint import load_aligner
    from thinkdiff_core.vlm import VLMEncoder
    from thinkdiff_core.diffusers_pipeline import generate

    pipe = FluxPipeline.from_pretrained("FLUX.1-dev", dtype=torch.bfloat16, local_files_only=True).to("cuda")
    vlm = VLMEncoder.from_pretrained("Qwen2-VL-7B-Instruct", dtype="bf16", device="cuda")
    aligner, _ = load_aligner("thinkdiff_lvlm.pth")
    out = generate(pipe, vlm, aligner.to("cuda"), images=[img1, img2], text="white, red, black", preset="in_context")
    out.image.save("out.png"); print(out.text)

ThinkDiff-CLIP (docs/method.md §4.2) needs no VLM: :func:`generate_clip` reads the images with BLIP-2's vision
tower (:class:`~thinkdiff_core.vision.VisionEncoder`), puts their aligned tokens before the pipeline's own T5
encoding of the text (128 tokens) and uses that text's CLIP-L pooled vector; 28 steps, guidance 3.5,
1024x1024, as the official scripts::

    vision = VisionEncoder.from_pretrained("blip2-flan-t5-xxl", dtype="bf16", device="cuda")
    aligner, _ = load_aligner("thinkdiff_clip.pth")
    out = generate_clip(pipe, vision, aligner.to("cuda"), images=[img1, img2], text="in a snowy forest")

Two steps, one per variant: :func:`lvlm_conditioning` / :func:`clip_conditioning` build a
:class:`~thinkdiff_core.conditioning.FluxConditioning` (tokens + pooled vector + guidance) with
:mod:`thinkdiff_core.conditioning`, and :func:`run_flux` hands any such conditioning to the pipeline.

diffusers is imported only inside these functions (``pip install thinkdiff[diffusers]``); importing
this module, like ``import thinkdiff_core``, does not need it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .conditioning import (CLIP_TEXT_TOKENS, DEFAULT_GUIDANCE, FluxConditioning, ImageEmbeds, ThinkDiffEmbeds,
                           build_clip_conditioning, build_flux_conditioning)
from .prompts import Prompt, build_prompt

if TYPE_CHECKING:
    from .aligner import Aligner
    from .vision import VisionEncoder
    from .vlm import VLMEncoder, VLMOutput

# The official inference settings (docs/method.md §4.1): FLUX-dev distilled guidance 3.5, 28 steps,
# 512x512 in the multi-image / in-context script, 1024x1024 in the single-image script; the VLM writes
# exactly 128 tokens (EOS suppressed) sampled at T 0.6, top-p 0.9; FLUX seeded with 42 before each image.
DEFAULT_STEPS = 28
DEFAULT_SEED = 42
VLM_TOKENS = 128
VLM_TEMPERATURE = 0.6
VLM_TOP_P = 0.9
SIZE_BY_PRESET = {"in_context": 512}
DEFAULT_SIZE = 1024


def default_size(preset: str) -> int:
    """Image side length the official script for that use generated at."""
    return SIZE_BY_PRESET.get(preset, DEFAULT_SIZE)


@dataclass
class ThinkDiffOutput:
    image: Any                      # PIL image (or what output_type asked for)
    text: str                       # the VLM's generated text (ThinkDiff-CLIP: the user's text)
    conditioning: FluxConditioning  # what FLUX got: tokens [1, N, C], pooled [1, 768], guidance
    vlm: "VLMOutput | None"         # the VLM's raw output (ids, rows, rendered prompt); None for ThinkDiff-CLIP


def _require_diffusers():
    try:
        import diffusers  # noqa: F401
    except ImportError:
        raise ImportError("the diffusers entry point needs diffusers: pip install 'thinkdiff[diffusers]' "
                          "(or pip install diffusers)") from None


@torch.inference_mode()
def clip_pooled(pipe, prompt: str = "") -> torch.Tensor:
    """CLIP-L's pooled output [1, 768] for ``prompt``, from the pipeline's own tokenizer and text_encoder
    (the computation ``FluxPipeline.encode_prompt`` does; it skips it whenever ``prompt_embeds`` are given,
    which is why the official code subclassed the pipeline). ThinkDiff-LVLM uses the empty prompt."""
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise ValueError("the pipeline has no CLIP text encoder/tokenizer (text_encoder/tokenizer are None); "
                         "ThinkDiff needs CLIP-L's pooled output of the empty prompt: load the pipeline with them")
    return pipe._get_clip_prompt_embeds(prompt=prompt, device=pipe._execution_device).float()


def lvlm_conditioning(pipe, aligner: "Aligner", vlm_out: "VLMOutput", *, source: str = "", preset: str = "custom",
                      num_images: int = 0, guidance: float = DEFAULT_GUIDANCE) -> FluxConditioning:
    """ThinkDiff-LVLM conditioning for this pipeline: the aligned rows (thinkdiff_core.conditioning) and
    CLIP-L's pooled vector of "" from the pipeline's own CLIP."""
    embeds = ThinkDiffEmbeds.from_vlm_output(vlm_out, source=source, preset=preset, num_images=num_images)
    return build_flux_conditioning(aligner, embeds, empty_prompt_pooled=clip_pooled(pipe, ""), guidance=guidance,
                                   context_dim=pipe.transformer.config.joint_attention_dim)


def pipeline_embeds(pipe, cond: FluxConditioning) -> dict:
    """``prompt_embeds`` / ``pooled_prompt_embeds`` as the pipeline's transformer wants them (its dtype and
    execution device; the official code cast the aligned tokens to bf16, the transformer's dtype)."""
    width = pipe.transformer.config.joint_attention_dim
    if cond.tokens.shape[-1] != width:
        raise ValueError(f"the prompt embeddings are {cond.tokens.shape[-1]} wide but this FLUX transformer reads "
                         f"{width}-wide T5 states: the aligner does not belong to this FLUX model")
    dtype, device = pipe.transformer.dtype, pipe._execution_device
    return {"prompt_embeds": cond.tokens.to(device, dtype), "pooled_prompt_embeds": cond.pooled.to(device, dtype)}


def run_flux(pipe, cond: FluxConditioning, *, num_inference_steps: int = DEFAULT_STEPS, height: int = 512,
             width: int = 512, seed: int | None = DEFAULT_SEED, generator: torch.Generator | None = None,
             **pipe_kwargs):
    """Call the pipeline with a FluxConditioning (any variant); returns the pipeline's first image.

    The generator is a CPU ``torch.Generator`` seeded with ``seed`` unless one is given, so a call with the
    same seed gives the same image on any device."""
    _require_diffusers()
    if generator is None and seed is not None:
        generator = torch.Generator("cpu").manual_seed(int(seed))
    out = pipe(**pipeline_embeds(pipe, cond), guidance_scale=float(cond.guidance),
               num_inference_steps=int(num_inference_steps), height=int(height), width=int(width),
               generator=generator, **pipe_kwargs)
    return out.images[0]


def think(vlm: "VLMEncoder", images: Sequence[Any] = (), text: str = "", preset: str = "in_context", *,
          prompt: Prompt | None = None, max_new_tokens: int = VLM_TOKENS, stop_at_eos: bool = False,
          temperature: float = VLM_TEMPERATURE, top_p: float = VLM_TOP_P, do_sample: bool = True,
          seed: int = 0, max_pixels: int | None = None) -> "VLMOutput":
    """The VLM's reading of images + text with a preset (thinkdiff_core.prompts.build_prompt), or of a
    ready ``prompt``; by default exactly 128 tokens, EOS suppressed, T 0.6, top-p 0.9 (the paper)."""
    prompt = prompt if prompt is not None else build_prompt(preset, images, text)
    return vlm.generate(prompt, max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos, do_sample=do_sample,
                        temperature=temperature, top_p=top_p, seed=seed, max_pixels=max_pixels)


def generate(pipe, vlm: "VLMEncoder", aligner: "Aligner", images: Sequence[Any] = (), text: str = "",
             preset: str = "in_context", *, guidance: float = DEFAULT_GUIDANCE,
             num_inference_steps: int = DEFAULT_STEPS, height: int | None = None, width: int | None = None,
             seed: int | None = DEFAULT_SEED, vlm_seed: int = 0, max_new_tokens: int = VLM_TOKENS,
             temperature: float = VLM_TEMPERATURE, top_p: float = VLM_TOP_P, max_pixels: int | None = None,
             **pipe_kwargs) -> ThinkDiffOutput:
    """ThinkDiff-LVLM end to end on a diffusers FluxPipeline: the image and the VLM's text for images + text
    with a preset ("in_context": text is the words, one per image plus the query word, e.g. "white, red,
    black"; "image_text", "two_images", "custom": see thinkdiff_core.prompts). Defaults are the official
    inference settings; height/width default to 512 for in_context and 1024 otherwise."""
    images = list(images)
    prompt = build_prompt(preset, images, text)
    out = think(vlm, prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                seed=vlm_seed, max_pixels=max_pixels)
    cond = lvlm_conditioning(pipe, aligner, out, source=vlm.name, preset=preset, num_images=len(images),
                             guidance=guidance)
    size = default_size(preset)
    image = run_flux(pipe, cond, num_inference_steps=num_inference_steps, height=height or size,
                     width=width or size, seed=seed, **pipe_kwargs)
    return ThinkDiffOutput(image=image, text=out.text, conditioning=cond, vlm=out)


def generate_from_text(pipe, prompt: str, *, guidance: float = DEFAULT_GUIDANCE,
                       num_inference_steps: int = DEFAULT_STEPS, height: int = 512, width: int = 512,
                       seed: int | None = DEFAULT_SEED, **pipe_kwargs):
    """Plain FLUX on a text prompt (its own CLIP-L + T5): the text-rewriter baseline's second half, with
    the same settings and seeding as :func:`run_flux`."""
    _require_diffusers()
    generator = torch.Generator("cpu").manual_seed(int(seed)) if seed is not None else None
    return pipe(prompt=prompt, guidance_scale=float(guidance), num_inference_steps=int(num_inference_steps),
                height=int(height), width=int(width), generator=generator, **pipe_kwargs).images[0]


@torch.inference_mode()
def flux_text(pipe, text: str = "", max_sequence_length: int = CLIP_TEXT_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's own encoding of ``text``: T5 states [1, max_sequence_length, C] (padded, as
    ``FluxPipeline.encode_prompt`` pads) and CLIP-L's pooled vector [1, 768]."""
    if getattr(pipe, "text_encoder_2", None) is None or getattr(pipe, "tokenizer_2", None) is None:
        raise ValueError("the pipeline has no T5 text encoder/tokenizer (text_encoder_2/tokenizer_2 are None); "
                         "ThinkDiff-CLIP puts FLUX's own T5 encoding of the text after the image tokens: load the "
                         "pipeline with them")
    t5 = pipe._get_t5_prompt_embeds(prompt=text, max_sequence_length=int(max_sequence_length),
                                    device=pipe._execution_device)
    return t5.float(), clip_pooled(pipe, text)


def clip_conditioning(pipe, aligner: "Aligner", tokens: torch.Tensor, text: str = "", *, source: str = "",
                      aligner_variant: str = "", guidance: float = DEFAULT_GUIDANCE) -> FluxConditioning:
    """ThinkDiff-CLIP conditioning for this pipeline: ``[aligned tokens of each image (65) ; the pipeline's T5
    encoding of text (128)]`` with text's CLIP-L pooled vector. tokens: the vision encoder's [k, 65, D]."""
    t5, pooled = flux_text(pipe, text)
    return build_clip_conditioning(aligner, ImageEmbeds(tokens=tokens, source=source), text=t5, text_pooled=pooled,
                                   aligner_variant=aligner_variant, guidance=guidance)


def generate_clip(pipe, vision: "VisionEncoder", aligner: "Aligner", images: Sequence[Any], text: str = "", *,
                  aligner_variant: str = "", guidance: float = DEFAULT_GUIDANCE,
                  num_inference_steps: int = DEFAULT_STEPS, height: int = DEFAULT_SIZE, width: int = DEFAULT_SIZE,
                  seed: int | None = DEFAULT_SEED, **pipe_kwargs) -> ThinkDiffOutput:
    """ThinkDiff-CLIP end to end on a diffusers FluxPipeline: images (in order) + an optional text; the
    official settings by default (28 steps, guidance 3.5, 1024x1024, seed 42)."""
    tokens = vision.encode(list(images)).tokens
    cond = clip_conditioning(pipe, aligner, tokens, text, source=vision.name, aligner_variant=aligner_variant,
                             guidance=guidance)
    image = run_flux(pipe, cond, num_inference_steps=num_inference_steps, height=height, width=width, seed=seed,
                     **pipe_kwargs)
    return ThinkDiffOutput(image=image, text=text, conditioning=cond, vlm=None)
