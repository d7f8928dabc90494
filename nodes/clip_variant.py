"""ThinkDiff-CLIP: Load ThinkDiff-CLIP Vision Encoder / Encode Images (ThinkDiff-CLIP) (docs/method.md §1.2, §4.2).

The image tokens go to ThinkDiff Conditioning (the same node as the LVLM variant), which puts them
before FLUX's own text conditioning (CLIPTextEncodeFlux).
"""
from __future__ import annotations

import os

from comfy_api.latest import io

from ..thinkdiff_core import dtypes
from ..thinkdiff_core.release import ALIGNER_CLIP_FILE, CLIP_VISION_FOLDER, CLIP_VISION_NAME
from . import _common as C
from .encode import MAX_IMAGES, image_inputs, images_in_order
from .types import LoadedVision, ThinkDiffEmbeds, ThinkDiffVision


class LoadThinkDiffVisionEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ThinkDiffLoadVisionEncoder", display_name="Load ThinkDiff-CLIP Vision Encoder",
            category="ThinkDiff",
            description=f"Loads BLIP-2's EVA-CLIP ViT-g vision tower from a model folder in models/{CLIP_VISION_FOLDER} "
                        f"(a whole BLIP-2 folder such as {CLIP_VISION_NAME}: only the vision tower is read; local "
                        f"files only). ThinkDiff-CLIP needs no VLM.",
            inputs=[
                io.Combo.Input("vision_name", options=C.vlm_folders(CLIP_VISION_FOLDER),
                               tooltip=f"Model folder in models/{CLIP_VISION_FOLDER}: {CLIP_VISION_NAME} (the "
                                       f"encoder {ALIGNER_CLIP_FILE} was trained with) or a saved "
                                       "Blip2VisionModel folder."),
                io.Combo.Input("dtype", options=dtypes.choices(auto=True), default=dtypes.AUTO,
                               tooltip="Weight precision. auto: bf16 on GPUs that support it (the official "
                                       "scripts run it in bf16), else fp16; fp32 on CPU."),
                io.Boolean.Input("keep_loaded", default=True,
                                 tooltip="Keep the encoder on the GPU after encoding. Off: move it to the "
                                         "offload device right after each use."),
            ],
            outputs=[ThinkDiffVision.Output(display_name="vision")],
        )

    @classmethod
    def validate_inputs(cls, vision_name):
        if C.vlm_path(vision_name, CLIP_VISION_FOLDER) is None:
            return f"vision encoder folder '{vision_name}' not found in models/{CLIP_VISION_FOLDER}. {C.where_vision()}."
        return True

    @classmethod
    def execute(cls, vision_name, dtype, keep_loaded) -> io.NodeOutput:
        from ..thinkdiff_core.vision import VisionEncoder
        path = C.vlm_path(vision_name, CLIP_VISION_FOLDER)
        if path is None:
            raise FileNotFoundError(f"vision encoder folder '{vision_name}' not found in models/{CLIP_VISION_FOLDER}. "
                                    f"{C.where_vision()}.")
        encoder, patcher, torch_dtype, load_device = C.load_for_comfy(
            lambda dt, device: VisionEncoder.from_pretrained(path, dtype=dt, device=device), dtype)
        C.log.info("ThinkDiff: loaded vision encoder %s (%s, hidden size %d; runs on %s)", vision_name, torch_dtype,
                   encoder.hidden_size, load_device)
        return io.NodeOutput(LoadedVision(encoder=encoder, patcher=patcher, name=os.path.basename(vision_name),
                                          keep_loaded=keep_loaded, dtype=dtypes.dtype_name(torch_dtype)))


class EncodeImagesThinkDiffCLIP(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ThinkDiffEncodeImages", display_name="Encode Images (ThinkDiff-CLIP)", category="ThinkDiff",
            description="Turns each image into 65 tokens of BLIP-2's vision tower (CLS + an 8x8 grid), images in "
                        "input order, for ThinkDiff Conditioning with a ThinkDiff-CLIP aligner.",
            inputs=[
                ThinkDiffVision.Input("vision", tooltip="From Load ThinkDiff-CLIP Vision Encoder."),
                *image_inputs(),
            ],
            outputs=[ThinkDiffEmbeds.Output(display_name="embeds")],
        )

    @classmethod
    def execute(cls, vision, **images) -> io.NodeOutput:   # images: image_1=... or images={"image_1": ...}
        import comfy.model_management as mm
        from ..thinkdiff_core.conditioning import ImageEmbeds
        pil = C.images_to_pil(*images_in_order(images))
        if not pil:
            raise ValueError(f"Encode Images (ThinkDiff-CLIP) needs at least one image: connect image_1 "
                             f"(up to {MAX_IMAGES}; a batch counts as several images)")
        mm.throw_exception_if_processing_interrupted()
        vision.load()
        try:
            with C.user_errors():
                tokens = vision.encoder.encode(pil).tokens
        finally:
            vision.release()
        C.log.info("ThinkDiff: %s encoded %d image(s) into %d tokens each", vision.name, len(pil), tokens.shape[1])
        return io.NodeOutput(ImageEmbeds(tokens=tokens.float().to(mm.intermediate_device()), source=vision.name))
