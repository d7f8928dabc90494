"""VLM Encode Multimodal: images + text -> generated tokens and their hidden states."""
from __future__ import annotations

from comfy_api.latest import io

from . import _common as C
from .types import ThinkDiffEmbeds, ThinkDiffVLM

MAX_IMAGES = 6
PRESET_HELP = ("in_context: the paper's reasoning prompt; text = one word per image plus the query word, e.g. "
               "'red, blue, green' for two images. image_text: the images, then your instruction. "
               "two_images: fuse image_1 and image_2 (text optional). custom: images then text, as given.")


class VLMEncodeMultimodal(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from ..thinkdiff_core.prompts import PRESETS
        images = [io.Image.Input(f"image_{i}", optional=True,
                                 tooltip=f"Image {i} in reading order (optional). A batch counts as several "
                                         f"images, in order.")
                  for i in range(1, MAX_IMAGES + 1)]
        return io.Schema(
            node_id="ThinkDiffVLMEncode", display_name="VLM Encode Multimodal", category="ThinkDiff",
            description="Lets the VLM read the images and text and generate (reason); keeps the final-norm "
                        "hidden state behind every generated token for the ThinkDiff aligner.",
            inputs=[
                ThinkDiffVLM.Input("vlm", tooltip="From Load ThinkDiff VLM."),
                *images,
                io.Combo.Input("preset", options=list(PRESETS), default="in_context", tooltip=PRESET_HELP),
                io.String.Input("text", multiline=True, default="",
                                tooltip="Words (in_context) or the instruction text (other presets)."),
                io.Int.Input("max_new_tokens", default=128, min=1, max=4096,
                             tooltip="Tokens to generate; the conditioning has one token per generated token."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Sampling seed. Same seed and inputs give the same text (and ComfyUI "
                                     "reuses the cached result instead of generating again)."),
                io.Float.Input("temperature", default=0.6, min=0.0, max=2.0, step=0.05,
                               tooltip="Sampling temperature; 0 = greedy decoding."),
                io.Float.Input("top_p", default=0.9, min=0.01, max=1.0, step=0.01,
                               tooltip="Nucleus sampling: keep the smallest token set with this probability mass."),
                io.Boolean.Input("stop_at_eos", default=False,
                                 tooltip="Stop at the end-of-text token. Off (the paper's setting): always "
                                         "generate max_new_tokens tokens."),
            ],
            outputs=[ThinkDiffEmbeds.Output(display_name="embeds"), io.String.Output(display_name="text")],
        )

    @classmethod
    def execute(cls, vlm, preset, text, max_new_tokens, seed, temperature, top_p, stop_at_eos,
                **images) -> io.NodeOutput:
        import comfy.model_management as mm
        import comfy.utils
        from ..thinkdiff_core.conditioning import ThinkDiffEmbeds as Embeds
        from ..thinkdiff_core.prompts import build_prompt
        pil = C.images_to_pil(*(images.get(f"image_{i}") for i in range(1, MAX_IMAGES + 1)))
        prompt = build_prompt(preset, pil, text)   # PromptError (ValueError) explains what is missing
        pbar = comfy.utils.ProgressBar(max_new_tokens)

        def on_token(k: int, n: int) -> None:
            # InterruptProcessingException subclasses Exception in 0.3.75: never catch it around here.
            mm.throw_exception_if_processing_interrupted()
            pbar.update_absolute(k, n)

        mm.throw_exception_if_processing_interrupted()
        vlm.load()
        try:
            out = vlm.encoder.generate(prompt, max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos,
                                       do_sample=temperature > 0, temperature=temperature, top_p=top_p,
                                       seed=seed, on_token=on_token)
        finally:
            vlm.release()
        embeds = Embeds.from_vlm_output(out, source=vlm.name, preset=preset, num_images=len(pil),
                                        device=mm.intermediate_device())
        C.log.info("ThinkDiff: %s generated %d tokens: %r", vlm.name, len(out.token_ids), out.text[:200])
        return io.NodeOutput(embeds, out.text, ui={"text": [out.text]})
