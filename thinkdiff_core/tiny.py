"""Tiny random-weight models of the real architectures, paired with real tokenizers.

Real Qwen2-VL-7B / flan-t5-xxl / FLUX weights cannot be downloaded here (and many users are
offline), so tests, the quick-start demo and the trainer's tests build these at set-up time.
Tokenizers are real: ComfyUI ships the Qwen2/2.5-VL vocabulary (``comfy/text_encoders/qwen25_tokenizer``)
and the T5 sentencepiece vocabulary (``comfy/text_encoders/t5_tokenizer``); pass their folders in.
"""
from __future__ import annotations

import os

import torch

from .aligner import Aligner


# where ComfyUI keeps each tokenizer folder: the CLIP-L one (FLUX's `tokenizer`) sits beside comfy/sd1_clip.py
_TOKENIZER_HOMES = {"sd1_tokenizer": ("comfy",)}


def find_tokenizer(name: str, comfyui_dir: str | os.PathLike | None = None) -> str:
    """Folder of a tokenizer ComfyUI ships: name is 'qwen25_tokenizer', 't5_tokenizer' (comfy/text_encoders/)
    or 'sd1_tokenizer' (comfy/: the CLIP-L tokenizer).

    Looked up in ``comfyui_dir``, else in the ComfyUI folder named by the COMFYUI_DIR variable."""
    home = _TOKENIZER_HOMES.get(name, ("comfy", "text_encoders"))
    for c in (comfyui_dir, os.environ.get("COMFYUI_DIR")):
        if c and os.path.isdir(os.path.join(c, *home, name)):
            return os.path.join(c, *home, name)
    raise FileNotFoundError(f"tokenizer folder {'/'.join(home)}/{name} not found (looked in "
                            f"{comfyui_dir or '-'} and COMFYUI_DIR={os.environ.get('COMFYUI_DIR') or '(unset)'}); "
                            f"pass a ComfyUI folder or set COMFYUI_DIR to one")


@torch.no_grad()
def _nontrivial_norm(weight: torch.Tensor, seed: int) -> None:
    """Give a norm scale values far from 1 (random in [0.5, 1.5]): with an all-ones scale, tests could
    not tell a normed state from an un-scaled one, nor a copied norm from a fresh one."""
    g = torch.Generator().manual_seed(seed)
    weight.copy_(0.5 + torch.rand(weight.shape, generator=g))


def build_tiny_qwen2vl(dst: str | os.PathLike, tokenizer_dir: str | os.PathLike, hidden_size: int = 64,
                       num_layers: int = 2, seed: int = 0, family: str = "qwen2_vl", vision_dim: int = 32) -> str:
    """A random Qwen2-VL (or, with ``family="qwen2_5_vl"``, Qwen2.5-VL) saved as a normal HF folder
    (config, safetensors, tokenizer, image/video processor), loadable by :meth:`VLMEncoder.from_pretrained`."""
    import transformers
    from transformers import AutoTokenizer, Qwen2VLImageProcessor, Qwen2VLVideoProcessor
    dst = os.fspath(dst)
    tok = AutoTokenizer.from_pretrained(os.fspath(tokenizer_dir), local_files_only=True)
    ids = {t: tok.convert_tokens_to_ids(t) for t in
           ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>")}
    head_dim = hidden_size // 4
    hw = 3 * head_dim // 16
    mrope = [head_dim // 2 - 2 * hw, hw, hw]   # sums to head_dim / 2
    text = dict(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=4096, rope_scaling={"type": "mrope", "mrope_section": mrope},
                tie_word_embeddings=False, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    if family == "qwen2_vl":
        config_cls, model_cls, processor_cls = "Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"
        vision = dict(depth=2, embed_dim=vision_dim, hidden_size=hidden_size, num_heads=2, mlp_ratio=2)
    elif family == "qwen2_5_vl":
        config_cls, model_cls, processor_cls = ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration",
                                                "Qwen2_5_VLProcessor")
        vision = dict(depth=2, hidden_size=vision_dim, intermediate_size=2 * vision_dim, out_hidden_size=hidden_size,
                      num_heads=2,
                      fullatt_block_indexes=[1], window_size=112)
    else:
        raise ValueError(f"unknown family {family!r}")
    vision.update(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    cfg = getattr(transformers, config_cls)(
        text_config=text, vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).eval()
    from .vlm import find_final_norm
    _nontrivial_norm(find_final_norm(model).weight, seed + 1)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(dst)
    processor = getattr(transformers, processor_cls)(image_processor=Qwen2VLImageProcessor(), tokenizer=tok,
                                                     video_processor=Qwen2VLVideoProcessor())
    processor.save_pretrained(dst)
    return dst


def build_tiny_aligner(in_dim: int, out_dim: int = 4096, hidden_dim: int | None = 256, seed: int = 0) -> Aligner:
    """A random aligner (default-initialised linears, norm weight 1)."""
    torch.manual_seed(seed)
    return Aligner(in_dim, out_dim, hidden_dim).eval()


def build_tiny_t5(dst: str | os.PathLike, tokenizer_dir: str | os.PathLike, d_model: int = 64,
                  num_layers: int = 2, seed: int = 0) -> str:
    """A random T5ForConditionalGeneration (flan-t5 layout: gated-gelu, untied head, dropout 0.1) + the
    real T5 tokenizer. The final norms' scales are random, not ones."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration
    dst = os.fspath(dst)
    tok = AutoTokenizer.from_pretrained(os.fspath(tokenizer_dir), local_files_only=True)
    cfg = T5Config(vocab_size=32128, d_model=d_model, d_kv=max(8, d_model // 4), d_ff=2 * d_model,
                   num_layers=num_layers, num_decoder_layers=num_layers, num_heads=4, dropout_rate=0.1,
                   feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1)
    cfg.tie_word_embeddings = False   # transformers 5's T5Config ignores the constructor argument
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(cfg)
    _nontrivial_norm(model.encoder.final_layer_norm.weight, seed + 1)   # the aligner's norm is copied from it
    _nontrivial_norm(model.decoder.final_layer_norm.weight, seed + 2)
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst


def build_tiny_flux_pipeline(dst: str | os.PathLike | None, clip_tokenizer_dir: str | os.PathLike,
                             t5_tokenizer_dir: str | os.PathLike, joint_dim: int = 32, seed: int = 0):
    """A random diffusers ``FluxPipeline`` of the real architecture (FLUX transformer with 1 double + 1 single
    block, a 1-level AutoencoderKL, CLIPTextModel, T5EncoderModel, FlowMatchEulerDiscreteScheduler) with the
    REAL CLIP-L and T5 tokenizers ComfyUI ships (``find_tokenizer('sd1_tokenizer')`` / ``('t5_tokenizer')``).

    The T5 width (``joint_dim``) is what an aligner for it must output; CLIP keeps its real width 768 so the
    pooled vector has FLUX's real size. Saved with ``save_pretrained`` to ``dst`` (a folder that
    ``FluxPipeline.from_pretrained`` loads) unless ``dst`` is None; the pipeline is returned either way.
    Sizes follow diffusers' own FluxPipeline fast tests: images must be multiples of 16 pixels (8 works too)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=joint_dim,
                                         pooled_projection_dim=768, axes_dims_rope=[4, 4, 8])
    clip_tok = CLIPTokenizer.from_pretrained(os.fspath(clip_tokenizer_dir), local_files_only=True)
    clip_tok.model_max_length = 77   # ComfyUI's copy says 8192 (it chunks prompts itself); FLUX.1-dev's says 77
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(clip_tok), hidden_size=768, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=77,
                                        bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
                                        pad_token_id=clip_tok.pad_token_id, hidden_act="quick_gelu",
                                        projection_dim=768))
    t5_tok = AutoTokenizer.from_pretrained(os.fspath(t5_tokenizer_dir), local_files_only=True)
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=joint_dim, d_kv=8, d_ff=2 * joint_dim, num_layers=1,
                                 num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0))
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=clip, tokenizer=clip_tok,
                        text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer)
    for m in (transformer, clip, t5, vae):
        m.eval()
    if dst is not None:
        pipe.save_pretrained(os.fspath(dst))
    return pipe


def build_tiny_blip2_vision(dst: str | os.PathLike, hidden_size: int = 32, num_layers: int = 2, seed: int = 0,
                            full: bool = False) -> str:
    """A random BLIP-2 vision tower of the real layout at the real geometry (224 px, patch 14 -> 16x16
    patches + CLS), narrow, saved as a normal HF folder with BLIP-2's image processor config.

    full=False: a ``Blip2VisionModel`` folder (model_type blip_2_vision_model). full=True: a whole tiny
    ``Blip2ForConditionalGeneration`` (vision tower + Q-Former + a tiny T5), the layout of
    Salesforce/blip2-flan-t5-xxl, from which :class:`~thinkdiff_core.vision.VisionEncoder` reads only the
    vision tower. The tower's post-layernorm scale is random, not ones."""
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2VisionConfig, Blip2VisionModel,
                              BlipImageProcessor)
    from .vision import CLIP_MEAN, CLIP_STD
    dst = os.fspath(dst)
    # initializer_range: Blip2VisionConfig's default (1e-10) would make every image give the same tokens
    vision = Blip2VisionConfig(hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                               num_hidden_layers=num_layers, num_attention_heads=2, image_size=224, patch_size=14,
                               initializer_range=0.02)
    torch.manual_seed(seed)
    if full:
        cfg = Blip2Config(vision_config=vision.to_dict(),
                          qformer_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                              intermediate_size=64, encoder_hidden_size=hidden_size),
                          text_config=dict(model_type="t5", vocab_size=32128, d_model=32, d_kv=8, d_ff=64,
                                           num_layers=1, num_decoder_layers=1, num_heads=4,
                                           feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                           decoder_start_token_id=0, pad_token_id=0, eos_token_id=1),
                          num_query_tokens=4, initializer_range=0.02)
        model = Blip2ForConditionalGeneration(cfg).eval()
        norm = model.vision_model.post_layernorm
    else:
        model = Blip2VisionModel(vision).eval()
        norm = model.post_layernorm
    _nontrivial_norm(norm.weight, seed + 1)
    model.save_pretrained(dst)
    BlipImageProcessor(size={"height": 224, "width": 224}, resample=3, image_mean=list(CLIP_MEAN),
                       image_std=list(CLIP_STD), do_convert_rgb=True).save_pretrained(dst)
    return dst
