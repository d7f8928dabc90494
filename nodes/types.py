"""The pack's socket types and what flows through them (one home; node files import from here).

THINKDIFF_ALIGNER carries a :class:`LoadedAligner`, THINKDIFF_VLM a :class:`LoadedVLM`, THINKDIFF_VISION a
:class:`LoadedVision` (ThinkDiff-CLIP), THINKDIFF_EMBEDS either kind of embeds: a
:class:`thinkdiff_core.conditioning.ThinkDiffEmbeds` (LVLM) or an :class:`~thinkdiff_core.conditioning.ImageEmbeds` (CLIP).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

ThinkDiffAligner = io.Custom("THINKDIFF_ALIGNER")
ThinkDiffVLM = io.Custom("THINKDIFF_VLM")
ThinkDiffEmbeds = io.Custom("THINKDIFF_EMBEDS")
ThinkDiffVision = io.Custom("THINKDIFF_VISION")


@dataclass
class LoadedAligner:
    """What flows through a THINKDIFF_ALIGNER socket."""
    module: Any            # thinkdiff_core.aligner.Aligner
    info: Any              # thinkdiff_core.checkpoint.AlignerInfo
    name: str

    @property
    def in_dim(self) -> int:
        return int(self.info.in_dim)


@dataclass
class LoadedVLM:
    """What flows through a THINKDIFF_VLM socket: the encoder and the ModelPatcher ComfyUI manages."""
    encoder: Any           # thinkdiff_core.vlm.VLMEncoder
    patcher: Any           # comfy.model_patcher.ModelPatcher
    name: str
    keep_loaded: bool = True
    dtype: str = ""

    def load(self) -> None:
        import comfy.model_management as mm
        mm.load_models_gpu([self.patcher], force_full_load=True)

    def release(self) -> None:
        """Move the VLM back to its offload device (unless it should stay loaded)."""
        if self.keep_loaded:
            return
        import comfy.model_management as mm
        for i in range(len(mm.current_loaded_models) - 1, -1, -1):
            loaded = mm.current_loaded_models[i]
            if loaded.model is self.patcher:
                if loaded.model_unload():
                    mm.current_loaded_models.pop(i)
        mm.soft_empty_cache()


@dataclass
class LoadedVision(LoadedVLM):
    """What flows through a THINKDIFF_VISION socket: a thinkdiff_core.vision.VisionEncoder and its
    ModelPatcher (loaded and released like the VLM)."""
