"""ThinkDiff Conditioning: aligned VLM tokens (ThinkDiff-LVLM) or aligned image tokens + FLUX's text
conditioning (ThinkDiff-CLIP) -> a FLUX CONDITIONING."""
from __future__ import annotations

from comfy_api.latest import io

from ..thinkdiff_core.conditioning import CLIP_TEXT_TOKENS, DEFAULT_GUIDANCE, MODES
from . import _common as C
from .types import ThinkDiffAligner, ThinkDiffEmbeds


def empty_prompt_pooled(clip):
    """CLIP's unprojected pooled output of the empty prompt (what ThinkDiff feeds FLUX)."""
    out = clip.encode_from_tokens(clip.tokenize(""), return_pooled="unprojected", return_dict=True)
    pooled = out.get("pooled_output")
    if pooled is None:
        raise ValueError("the CLIP input gave no pooled output; connect a CLIP-L text encoder "
                         "(CLIPLoader with clip_l.safetensors, or a FLUX DualCLIPLoader)")
    return pooled


class ThinkDiffConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ThinkDiffConditioning", display_name="ThinkDiff Conditioning", category="ThinkDiff",
            description="Maps the VLM's generated-token states (ThinkDiff-LVLM), or the images' tokens "
                        "(ThinkDiff-CLIP, placed before the text conditioning), through the aligner into FLUX's T5 "
                        "space and returns a FLUX conditioning (use cfg 1 with a ConditioningZeroOut negative, or "
                        "BasicGuider).",
            inputs=[
                ThinkDiffAligner.Input("aligner", tooltip="From Load ThinkDiff Aligner."),
                ThinkDiffEmbeds.Input("embeds", tooltip="From VLM Encode Multimodal (ThinkDiff-LVLM aligner) or "
                                                        "Encode Images (ThinkDiff-CLIP aligner)."),
                io.Clip.Input("clip", optional=True,
                              tooltip="CLIP-L text encoder: its pooled output of the empty prompt becomes FLUX's "
                                      "pooled vector, as in the paper. Without it (and without a text "
                                      "conditioning) zeros are used."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="FLUX text conditioning (CLIPTextEncodeFlux). ThinkDiff-CLIP: required; "
                                              "the image tokens go before it and its pooled vector is used (empty "
                                              "text for images only). ThinkDiff-LVLM: optional, combined with the "
                                              "aligned tokens per mode; its pooled vector is used when no CLIP is "
                                              "connected."),
                io.Combo.Input("mode", options=list(MODES), default="replace",
                               tooltip="ThinkDiff-LVLM: replace: aligned tokens only (the paper). aligned_first: "
                                       "[aligned ; text]. text_first: [text ; aligned]. Needs the conditioning input "
                                       "for the last two. ThinkDiff-CLIP embeds are always [images ; text] (the "
                                       "paper); mode is not used."),
                io.Float.Input("aligned_strength", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Multiplies the aligned tokens (VLM rows or image tokens)."),
                io.Float.Input("text_strength", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Multiplies the text conditioning's tokens (aligned_first / text_first, "
                                       "and ThinkDiff-CLIP)."),
                io.Int.Input("clip_text_tokens", default=CLIP_TEXT_TOKENS, min=0, max=4096, optional=True,
                             tooltip="ThinkDiff-CLIP: keep the first N tokens of the text conditioning (the "
                                     "paper's 128; ComfyUI's T5 pads its encoding to 256). 0 keeps them all."),
                io.Float.Input("guidance", default=DEFAULT_GUIDANCE, min=0.0, max=100.0, step=0.1,
                               tooltip="FLUX-dev distilled guidance (3.5 as in the paper)."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, aligner, embeds, mode, aligned_strength, text_strength, guidance, clip=None,
                conditioning=None, clip_text_tokens=CLIP_TEXT_TOKENS) -> io.NodeOutput:
        import comfy.model_management as mm
        from ..thinkdiff_core.conditioning import ImageEmbeds, build_clip_conditioning, build_flux_conditioning
        text = text_pooled = None
        if conditioning:
            if len(conditioning) > 1:
                C.log.warning("ThinkDiff: the text conditioning has %d entries; only the first is used",
                              len(conditioning))
            text, text_pooled = conditioning[0][0], conditioning[0][1].get("pooled_output")
        with C.user_errors():
            if isinstance(embeds, ImageEmbeds):     # ThinkDiff-CLIP: [image tokens ; FLUX text], the text's pooled
                cond = build_clip_conditioning(
                    aligner.module, embeds, text=text, text_pooled=text_pooled, aligner_name=aligner.name,
                    aligner_variant=aligner.info.variant, text_tokens=clip_text_tokens,
                    image_strength=aligned_strength, text_strength=text_strength, guidance=guidance)
            else:
                cond = build_flux_conditioning(
                    aligner.module, embeds, aligner_name=aligner.name, aligner_variant=aligner.info.variant,
                    text=text, text_pooled=text_pooled,
                    empty_prompt_pooled=empty_prompt_pooled(clip) if clip is not None else None, mode=mode,
                    aligned_strength=aligned_strength, text_strength=text_strength, guidance=guidance)
        device = mm.intermediate_device()
        out = [[cond.tokens.to(device), {"pooled_output": cond.pooled.to(device), "guidance": cond.guidance}]]
        if isinstance(embeds, ImageEmbeds):   # what FLUX reads, shown on the node
            n, k = embeds.num_images, embeds.tokens_per_image
            layout = (f"ThinkDiff-CLIP: {n} image(s) x {k} tokens + {cond.tokens.shape[1] - n * k} text tokens "
                      f"= {cond.tokens.shape[1]} tokens")
            C.log.info("ThinkDiff: %s", layout)
            return io.NodeOutput(out, ui={"text": [layout]})
        return io.NodeOutput(out)
