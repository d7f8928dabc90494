"""From VLM hidden states or vision tokens to what FLUX reads (docs/method.md §4.1, §4.2 and §4.3).

FLUX reads [B, L, 4096] T5-XXL encoder states plus a CLIP-L pooled vector [B, 768] and a distilled
guidance value. ThinkDiff's LVLM variant replaces the T5 states by the aligned VLM rows; optionally
they are combined with real T5 text states (concatenated before or after, each part with its own
strength). The CLIP variant (:func:`build_clip_conditioning`) puts the aligned 65 tokens of every image,
in input order, before FLUX's own T5 encoding of the text, with that text's CLIP-L pooled vector.
Everything here is plain torch: the ComfyUI node only adapts its types to these calls.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .release import (ALIGNER_CLIP_FILE, ALIGNER_LVLM_FILE, CLIP_VISION_HIDDEN, CLIP_VISION_NAME, VLM_HIDDEN,
                      VLM_NAME)

if TYPE_CHECKING:   # the aligner module imports transformers; keep this module cheap to import
    from .aligner import Aligner

log = logging.getLogger("thinkdiff")

POOLED_DIM = 768
MODES = ("replace", "aligned_first", "text_first")
DEFAULT_GUIDANCE = 3.5   # FLUX-dev distilled guidance of the official scripts


@dataclass
class ThinkDiffEmbeds:
    """The VLM's reading of the images and text: one final-norm row per generated token."""
    hidden: torch.Tensor       # [N, D] float, row k produced generated token k
    token_ids: torch.Tensor    # [N]
    text: str                  # the generated text
    source: str                # the VLM's name (folder), for messages
    preset: str = "custom"
    num_images: int = 0

    @property
    def hidden_size(self) -> int:
        return int(self.hidden.shape[-1])

    @classmethod
    def from_vlm_output(cls, out, source: str, preset: str = "custom", num_images: int = 0,
                        device: str | torch.device = "cpu") -> "ThinkDiffEmbeds":
        """From :class:`thinkdiff_core.vlm.VLMOutput`."""
        return cls(hidden=out.hidden.float().to(device), token_ids=out.token_ids.cpu(), text=out.text,
                   source=source, preset=preset, num_images=num_images)


@dataclass
class ImageEmbeds:
    """ThinkDiff-CLIP's reading of the images: per image, the vision tower's CLS + 8x8 reduced tokens."""
    tokens: torch.Tensor       # [k, 65, D] float, images in input order
    source: str                # the vision encoder's name (folder), for messages

    @property
    def hidden_size(self) -> int:
        return int(self.tokens.shape[-1])

    @property
    def num_images(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def tokens_per_image(self) -> int:
        return int(self.tokens.shape[1])


KIND_LVLM = "ThinkDiff-LVLM"
KIND_CLIP = "ThinkDiff-CLIP"


def kind_of(embeds) -> str:
    return KIND_CLIP if isinstance(embeds, ImageEmbeds) else KIND_LVLM


@dataclass
class FluxConditioning:
    """FLUX's text conditioning: prompt embeddings, CLIP-L pooled vector, distilled guidance."""
    tokens: torch.Tensor       # [B, L, 4096] float32
    pooled: torch.Tensor       # [B, 768] float32
    guidance: float = DEFAULT_GUIDANCE


class IncompatibleError(ValueError):
    """The aligner was trained for another VLM (hidden sizes differ)."""


def check_compatible(aligner_in_dim: int, hidden_size: int, aligner_name: str = "", vlm_name: str = "") -> None:
    """A clear error, naming both models, when the VLM's rows cannot go through the aligner."""
    if hidden_size != aligner_in_dim:
        vlm = f"the VLM '{vlm_name}'" if vlm_name else "the VLM"
        aligner = f"the aligner '{aligner_name}'" if aligner_name else "the aligner"
        raise IncompatibleError(
            f"{vlm} has hidden size {hidden_size} but {aligner} expects "
            f"{aligner_in_dim}: this aligner was trained for a different VLM (the released "
            f"aligner needs {VLM_NAME}, hidden size {VLM_HIDDEN})")


FLUX_CONTEXT_DIM = 4096   # T5-XXL's width: what FLUX's txt_in layer reads


def check_output_width(out_dim: int, aligner_name: str = "", context_dim: int | None = None) -> None:
    """A clear error when an aligner does not map into the image model's text space (else sampling fails
    later with "mat1 and mat2 shapes cannot be multiplied"). ``context_dim``: the width the image model reads
    when the caller knows it (the diffusers pipeline does); else one of the pack's image models must read it:
    FLUX's T5-XXL (4096) or ThinkDiff-mini's tiny T5 (release.MINI_CONTEXT_DIM)."""
    from .release import MINI_CONTEXT_DIM
    if out_dim == context_dim or (context_dim is None and out_dim in (FLUX_CONTEXT_DIM, MINI_CONTEXT_DIM)):
        return
    aligner = f"the aligner '{aligner_name}'" if aligner_name else "the aligner"
    if context_dim is not None and context_dim != FLUX_CONTEXT_DIM:
        raise IncompatibleError(f"{aligner} outputs {out_dim}-wide tokens, but this image model reads "
                                f"{context_dim}-wide text states")
    raise IncompatibleError(
        f"{aligner} outputs {out_dim}-wide tokens, but FLUX reads T5-XXL states ({FLUX_CONTEXT_DIM} wide): "
        f"it was trained for a different text encoder (e.g. a small test T5); use an aligner fitted to "
        f"flan-t5-xxl, such as the released one")


def check_embeds_kind(aligner_in_dim: int, embeds, aligner_name: str = "", aligner_variant: str = "") -> None:
    """A clear error when the aligner is of the other variant than the embeds (an LVLM aligner given
    ThinkDiff-CLIP image embeds, or the reverse), or when the widths differ."""
    kind = kind_of(embeds)
    aligner = f"the aligner '{aligner_name}'" if aligner_name else "the aligner"
    if kind == KIND_CLIP:
        if aligner_variant == "lvlm" or aligner_in_dim != embeds.hidden_size:
            raise IncompatibleError(
                f"these are {KIND_CLIP} image embeds (vision encoder '{embeds.source}', {embeds.hidden_size}-wide "
                f"tokens) but {aligner} is "
                + ("a ThinkDiff-LVLM aligner" if aligner_variant == "lvlm" else "for another model")
                + f" (it reads {aligner_in_dim}-wide features). Load a {KIND_CLIP} aligner ({ALIGNER_CLIP_FILE}, "
                f"which reads {CLIP_VISION_NAME}'s {CLIP_VISION_HIDDEN}-wide tokens), or feed this aligner from "
                f"VLM Encode Multimodal")
        return
    check_lvlm_aligner(aligner_in_dim, embeds.hidden_size, embeds.source, aligner_name, aligner_variant)


def check_lvlm_aligner(aligner_in_dim: int, vlm_hidden: int, vlm_name: str = "", aligner_name: str = "",
                       aligner_variant: str = "") -> None:
    """A clear error when an aligner cannot read this VLM's rows: a ThinkDiff-CLIP aligner, or another width
    (with the hint that a CLIP aligner belongs after Encode Images)."""
    aligner = f"the aligner '{aligner_name}'" if aligner_name else "the aligner"
    if aligner_variant == "clip":
        raise IncompatibleError(
            f"these are {KIND_LVLM} embeds (the VLM '{vlm_name}') but {aligner} is a {KIND_CLIP} aligner "
            f"(it reads image tokens of a BLIP-2 vision encoder). Load a {KIND_LVLM} aligner ({ALIGNER_LVLM_FILE}), "
            f"or feed this aligner from Encode Images (ThinkDiff-CLIP)")
    try:
        check_compatible(aligner_in_dim, vlm_hidden, aligner_name, vlm_name)
    except IncompatibleError as e:
        raise IncompatibleError(f"{e}. If it is a {KIND_CLIP} aligner ({ALIGNER_CLIP_FILE}), feed it the "
                                f"image tokens of Encode Images (ThinkDiff-CLIP) instead") from None


def check_finite(**values: float) -> None:
    """A clear error for NaN or infinite numbers (an API prompt can send them; they would give a black image)."""
    import math
    for name, v in values.items():
        if not math.isfinite(float(v)):
            raise ValueError(f"{name} is {v}: give a finite number")


@torch.inference_mode()
def align(aligner: "Aligner", hidden: torch.Tensor) -> torch.Tensor:
    """VLM rows [N, D] or [B, N, D] -> aligned prompt embeddings [B, N, out_dim] in float32."""
    if hidden.ndim == 2:
        hidden = hidden.unsqueeze(0)
    if hidden.ndim != 3:
        raise ValueError(f"expected hidden states [N, D] or [B, N, D], got {tuple(hidden.shape)}")
    check_compatible(aligner.in_dim, hidden.shape[-1])
    return aligner(hidden).float()


def pooled_vector(pooled: torch.Tensor | None, batch: int = 1, dim: int = POOLED_DIM) -> torch.Tensor:
    """The CLIP-L pooled vector FLUX needs, [batch, 768]. ThinkDiff uses CLIP-L's pooled output of the
    empty prompt; zeros are a fallback and are logged, since they change FLUX's global modulation. A
    wider vector (an SD3-style [CLIP-L ; CLIP-G] pooled output) gives its CLIP-L part, the first 768."""
    if pooled is None:
        log.warning("ThinkDiff: no CLIP-L pooled vector given, using zeros; connect a CLIP-L text "
                    "encoder for results faithful to the paper (pooled output of the empty prompt)")
        return torch.zeros(batch, dim)
    pooled = pooled.float()
    if pooled.ndim == 1:
        pooled = pooled.unsqueeze(0)
    if pooled.shape[-1] < dim:
        raise ValueError(f"the pooled vector has size {pooled.shape[-1]}; FLUX needs CLIP-L's {dim}")
    pooled = pooled[..., :dim]
    if pooled.shape[0] != batch:
        pooled = pooled[:1].expand(batch, -1)
    return pooled


def combine(aligned: torch.Tensor, text: torch.Tensor | None = None, mode: str = "replace",
            aligned_strength: float = 1.0, text_strength: float = 1.0) -> torch.Tensor:
    """Combine aligned tokens [B, N, C] with optional T5 text states [B, L, C] along the sequence.

    replace: aligned tokens only (the paper's LVLM setting); aligned_first: [aligned ; text];
    text_first: [text ; aligned]. Each part is multiplied by its strength.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    a = aligned.float() * aligned_strength
    if mode == "replace" or text is None:
        return a
    t = text.to(a.device, torch.float32) * text_strength
    if t.shape[-1] != a.shape[-1]:
        raise ValueError(f"text embeddings have width {t.shape[-1]}, aligned tokens {a.shape[-1]}: "
                         f"both must be T5-XXL states (4096)")
    if t.shape[0] != a.shape[0]:
        if t.shape[0] == 1:
            t = t.expand(a.shape[0], -1, -1)
        elif a.shape[0] == 1:
            a = a.expand(t.shape[0], -1, -1)
        else:
            raise ValueError(f"batch sizes differ: aligned {a.shape[0]}, text {t.shape[0]}")
    return torch.cat([a, t] if mode == "aligned_first" else [t, a], dim=1)


def build_flux_conditioning(aligner: "Aligner", embeds: ThinkDiffEmbeds, *, aligner_name: str = "",
                            aligner_variant: str = "",
                            text: torch.Tensor | None = None, text_pooled: torch.Tensor | None = None,
                            empty_prompt_pooled: torch.Tensor | None = None, mode: str = "replace",
                            aligned_strength: float = 1.0, text_strength: float = 1.0,
                            guidance: float = DEFAULT_GUIDANCE, context_dim: int | None = None) -> FluxConditioning:
    """The whole ThinkDiff-LVLM conditioning (docs/method.md §4.1).

    context_dim: the width the image model reads, when known (see :func:`check_output_width`).

    text / text_pooled: an optional FLUX text conditioning (T5 states and its pooled vector) for the
    aligned_first / text_first modes. The pooled vector is CLIP-L's output for the empty prompt when
    given (the paper), else the text conditioning's, else zeros (logged).
    """
    check_embeds_kind(aligner.in_dim, embeds, aligner_name, aligner_variant)
    check_output_width(aligner.out_dim, aligner_name, context_dim)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode != "replace" and text is None:
        raise ValueError(f"mode {mode} combines the aligned tokens with a text conditioning, but none is connected: "
                         f"connect one (e.g. CLIPTextEncodeFlux) to the conditioning input, or choose mode replace")
    check_finite(guidance=guidance, aligned_strength=aligned_strength, text_strength=text_strength)
    tokens = combine(align(aligner, embeds.hidden), text, mode, aligned_strength, text_strength)
    pooled = empty_prompt_pooled if empty_prompt_pooled is not None else text_pooled
    return FluxConditioning(tokens=tokens, pooled=pooled_vector(pooled, batch=tokens.shape[0]),
                            guidance=float(guidance))


CLIP_TEXT_TOKENS = 128   # the official scripts' flux_max_sequence_length (docs/method.md §4.2)


def build_clip_conditioning(aligner: "Aligner", embeds: ImageEmbeds, *, text: torch.Tensor | None,
                            text_pooled: torch.Tensor | None, aligner_name: str = "", aligner_variant: str = "",
                            text_tokens: int = CLIP_TEXT_TOKENS, image_strength: float = 1.0,
                            text_strength: float = 1.0, guidance: float = DEFAULT_GUIDANCE) -> FluxConditioning:
    """The whole ThinkDiff-CLIP conditioning (docs/method.md §4.2): ``[aligned tokens of image 1 (65) ; image 2 ;
    ... ; FLUX T5 states of the text]`` with the text's CLIP-L pooled vector.

    text / text_pooled: FLUX's own text conditioning (T5 states [1, L, 4096] and CLIP-L pooled [1, 768]),
    e.g. from CLIPTextEncodeFlux; for images only, encode an empty prompt (the official scripts append the
    T5 encoding of ""). text_tokens: keep the first N text tokens (the official 128; ComfyUI's T5 pads to at
    least 256; 0 keeps them all). The strengths are 1 in the paper."""
    check_embeds_kind(aligner.in_dim, embeds, aligner_name, aligner_variant)
    if text is None:
        raise ValueError(f"{KIND_CLIP} puts the image tokens before FLUX's own encoding of the text, but no text "
                         f"conditioning is connected: connect CLIPTextEncodeFlux (DualCLIPLoader with clip_l and "
                         f"t5xxl, type flux) to the conditioning input; for images only, leave its text empty")
    check_output_width(aligner.out_dim, aligner_name, int(text.shape[-1]))   # the image tokens join FLUX's text states
    check_finite(guidance=guidance, image_strength=image_strength, text_strength=text_strength)
    if text_tokens < 0:
        raise ValueError(f"text_tokens is {text_tokens}: give 0 (keep all) or a positive number (128 as in the paper)")
    aligned = align(aligner, embeds.tokens)                    # [k, 65, 4096]
    aligned = aligned.reshape(1, -1, aligned.shape[-1])        # images in order along the sequence
    if text.ndim == 2:
        text = text.unsqueeze(0)
    if text_tokens:
        text = text[:, :text_tokens]
    tokens = combine(aligned, text, "aligned_first", image_strength, text_strength)
    return FluxConditioning(tokens=tokens, pooled=pooled_vector(text_pooled, batch=tokens.shape[0]),
                            guidance=float(guidance))
