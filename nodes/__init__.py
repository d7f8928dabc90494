"""ThinkDiff's ComfyUI nodes (V3 API). Thin: each ``execute`` adapts ComfyUI types and calls thinkdiff_core."""
from __future__ import annotations

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from ._common import register_folders
from .clip_variant import EncodeImagesThinkDiffCLIP, LoadThinkDiffVisionEncoder
from .conditioning import ThinkDiffConditioning
from .encode import VLMEncodeMultimodal, register_prompt_migration
from .loaders import LoadThinkDiffAligner, LoadThinkDiffVLM

register_folders()

NODES: list[type[io.ComfyNode]] = [LoadThinkDiffAligner, LoadThinkDiffVLM, VLMEncodeMultimodal, ThinkDiffConditioning,
                                   LoadThinkDiffVisionEncoder, EncodeImagesThinkDiffCLIP]


class ThinkDiffExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> ThinkDiffExtension:
    register_prompt_migration()   # API prompts saved with the other form of the image inputs still run
    return ThinkDiffExtension()
