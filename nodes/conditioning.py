"""ThinkDiff Conditioning: aligned VLM tokens -> a FLUX CONDITIONING."""
from __future__ import annotations

from comfy_api.latest import io

from . import _common as C
from .encode import ThinkDiffEmbeds
from .loaders import ThinkDiffAligner


def empty_prompt_pooled(clip):
    """CLIP-L's unprojected pooled output of the empty prompt (what ThinkDiff feeds FLUX), [1, 768]."""
    out = clip.encode_from_tokens(clip.tokenize(""), return_pooled="unprojected", return_dict=True)
    pooled = out.get("pooled_output")
    if pooled is None:
        raise ValueError("the CLIP input gave no pooled output; connect a CLIP-L text encoder "
                         "(CLIPLoader with clip_l.safetensors, or a FLUX DualCLIPLoader)")
    if pooled.shape[-1] > 768:   # e.g. an SD3-style CLIP: CLIP-L's pooled vector comes first
        pooled = pooled[..., :768]
    elif pooled.shape[-1] < 768:
        raise ValueError(f"the CLIP input's pooled output has size {pooled.shape[-1]}; FLUX needs CLIP-L's 768")
    return pooled


class ThinkDiffConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from ..thinkdiff_core.conditioning import MODES
        return io.Schema(
            node_id="ThinkDiffConditioning", display_name="ThinkDiff Conditioning", category="ThinkDiff",
            description="Maps the VLM's generated-token states through the aligner into FLUX's T5 space and "
                        "returns a FLUX conditioning (use cfg 1 with a ConditioningZeroOut negative, or "
                        "BasicGuider).",
            inputs=[
                ThinkDiffAligner.Input("aligner", tooltip="From Load ThinkDiff Aligner."),
                ThinkDiffEmbeds.Input("embeds", tooltip="From VLM Encode Multimodal."),
                io.Clip.Input("clip", optional=True,
                              tooltip="CLIP-L text encoder: its pooled output of the empty prompt becomes FLUX's "
                                      "pooled vector, as in the paper. Without it (and without a text "
                                      "conditioning) zeros are used."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="Optional FLUX text conditioning (e.g. CLIPTextEncodeFlux) to "
                                              "combine with the aligned tokens, see mode. Its pooled vector is "
                                              "used when no CLIP is connected."),
                io.Combo.Input("mode", options=list(MODES), default="replace",
                               tooltip="replace: aligned tokens only (the paper). aligned_first: [aligned ; text]. "
                                       "text_first: [text ; aligned]. Needs the conditioning input for the "
                                       "last two."),
                io.Float.Input("aligned_strength", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Multiplies the aligned VLM tokens."),
                io.Float.Input("text_strength", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Multiplies the text conditioning's tokens (aligned_first / text_first)."),
                io.Float.Input("guidance", default=3.5, min=0.0, max=100.0, step=0.1,
                               tooltip="FLUX-dev distilled guidance (3.5 as in the paper)."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, aligner, embeds, mode, aligned_strength, text_strength, guidance, clip=None,
                conditioning=None) -> io.NodeOutput:
        import comfy.model_management as mm
        from ..thinkdiff_core.conditioning import align, combine, pooled_vector
        if embeds["hidden_size"] != aligner.in_dim:
            raise ValueError(f"the VLM '{embeds['vlm_name']}' has hidden size {embeds['hidden_size']} but the "
                             f"aligner '{aligner.name}' expects {aligner.in_dim}: this aligner was trained for a "
                             f"different VLM (thinkdiff_lvlm.pth needs Qwen2-VL-7B-Instruct, hidden size 3584)")
        aligned = align(aligner.module, embeds["hidden"])          # [1, N, 4096] float32
        text = None
        pooled = None
        if conditioning:
            if len(conditioning) > 1:
                C.log.warning("ThinkDiff: the text conditioning has %d entries; only the first is used",
                              len(conditioning))
            text = conditioning[0][0]
            pooled = conditioning[0][1].get("pooled_output")
        if mode != "replace" and text is None:
            C.log.warning("ThinkDiff: mode %s without a text conditioning: using the aligned tokens only", mode)
        if clip is not None:
            pooled = empty_prompt_pooled(clip)
        cond = combine(aligned, text, mode, aligned_strength, text_strength)
        pooled = pooled_vector(pooled, batch=cond.shape[0])
        device = mm.intermediate_device()
        return io.NodeOutput([[cond.float().to(device),
                               {"pooled_output": pooled.float().to(device), "guidance": guidance}]])
