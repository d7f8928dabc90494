"""VLM Encode Multimodal: images + text -> generated tokens and their hidden states.

The image inputs grow as they are connected. Where ComfyUI's V3 API has ``io.Autogrow`` (0.33.0 has it)
the node declares them that way: one group ``images`` whose slots keep the names image_1 .. image_6, so
the prompt carries them as ``images.image_1`` .. ; on older ComfyUI (0.3.75) they are six optional
inputs ``image_1`` .. ``image_6`` and web/js/dynamic_image_slots.js shows them one by one. Workflows
saved either way run on both: the JS extension renames saved image slots to this ComfyUI's form when a
workflow loads, and :func:`migrate_prompt` does the same for API-format prompts posted to /prompt.
"""
from __future__ import annotations

import re

from comfy_api.latest import io

from . import _common as C
from .types import ThinkDiffEmbeds, ThinkDiffVLM

NODE_ID = "ThinkDiffVLMEncode"
# every node with these growing image inputs (Encode Images (ThinkDiff-CLIP) shares them)
IMAGE_NODE_IDS = {NODE_ID, "ThinkDiffEncodeImages"}
MAX_IMAGES = 6
IMAGE_NAMES = tuple(f"image_{i}" for i in range(1, MAX_IMAGES + 1))
IMAGES_GROUP = "images"
# feature check, not a version check: the V3 API's growing input group (with slot names of our choosing)
AUTOGROW = hasattr(io, "Autogrow") and hasattr(io.Autogrow, "TemplateNames")
PRESET_HELP = ("in_context: the paper's reasoning prompt; text = one word per image plus the query word, e.g. "
               "'red, blue, green' for two images. image_text: the images, then your instruction. "
               "two_images: fuse image_1 and image_2 (text optional). custom: images then text, as given.")
IMAGE_HELP = "Images in reading order (optional). A batch counts as several images, in order."


def image_inputs() -> list:
    """The image inputs in this ComfyUI's form (see the module docstring)."""
    if AUTOGROW:
        template = io.Autogrow.TemplateNames(io.Image.Input("image", tooltip=IMAGE_HELP), names=list(IMAGE_NAMES),
                                             min=0)
        return [io.Autogrow.Input(IMAGES_GROUP, template=template, optional=True,
                                  tooltip=f"{IMAGE_HELP} Connecting one adds the next slot (up to {MAX_IMAGES}).")]
    return [io.Image.Input(name, optional=True, tooltip=f"Image {name.rsplit('_', 1)[1]} in reading order "
                                                        f"(optional). A batch counts as several images, in order.")
            for name in IMAGE_NAMES]


def images_in_order(kwargs: dict) -> list:
    """The connected images (tensors, None where unconnected) in slot order, from execute's keyword
    arguments in either form: ``images={'image_1': ...}`` (Autogrow) or ``image_1=...``."""
    group = kwargs.get(IMAGES_GROUP) or {}
    return [group.get(name, kwargs.get(name)) for name in IMAGE_NAMES]


# image_2 / images.image_2, and the names of early versions of the node: image (the first), image2, ...
_NAME_RE = re.compile(rf"^(?:{IMAGES_GROUP}\.)?image_?([1-9][0-9]*)?$")


def input_name(name: str) -> str:
    """An image input's name as this ComfyUI's schema spells it ('image_2' <-> 'images.image_2'; the early
    names 'image' and 'image2' become image_1 and image_2); other names unchanged."""
    m = _NAME_RE.match(name)
    if not m:
        return name
    slot = f"image_{m.group(1) or 1}"
    return f"{IMAGES_GROUP}.{slot}" if AUTOGROW else slot


def known_image_names() -> set[str]:
    return {input_name(n) for n in IMAGE_NAMES}


def check_image_inputs(node_inputs: dict) -> None:
    """Image inputs the node does not have (image_7, ...) would be ignored by ComfyUI without a word: refuse."""
    extra = sorted(k for k in node_inputs if _NAME_RE.match(k) and k not in known_image_names())
    if extra:
        raise ValueError(f"VLM Encode Multimodal takes at most {MAX_IMAGES} image inputs "
                         f"(image_1 .. image_{MAX_IMAGES}); {', '.join(extra)} would be ignored. Connect at most {MAX_IMAGES}, or join images into "
                         f"a batch (a batch counts as several images, in order)")


def check_aligners_downstream(prompt: dict | None, node_id: str | None, vlm) -> None:
    """Before generating: the aligners that will read this node's embeds (ThinkDiff Conditioning nodes fed
    by it, their Load ThinkDiff Aligner) exist, are readable and fit this VLM (input size) and FLUX (output
    width). Otherwise the mismatch would surface only after the VLM has generated."""
    import folder_paths
    from ..thinkdiff_core.checkpoint import peek_dims
    from ..thinkdiff_core.conditioning import check_lvlm_aligner, check_output_width
    from ..thinkdiff_core.release import ALIGNER_FOLDER
    if not isinstance(prompt, dict) or node_id is None:
        return
    for node in prompt.values():
        inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
        embeds, aligner = inputs.get("embeds"), inputs.get("aligner")
        if node.get("class_type") != "ThinkDiffConditioning" or not isinstance(embeds, list) \
                or str(embeds[0]) != str(node_id) or not isinstance(aligner, list):
            continue
        loader = prompt.get(str(aligner[0]), {})
        name = loader.get("inputs", {}).get("aligner_name")
        if loader.get("class_type") != "ThinkDiffLoadAligner" or not isinstance(name, str):
            continue
        path = folder_paths.get_full_path(ALIGNER_FOLDER, name)
        if path is None:
            raise FileNotFoundError(C.missing_aligner(name))
        in_dim, out_dim = peek_dims(path)
        check_lvlm_aligner(in_dim, vlm.encoder.hidden_size, vlm.name, name)
        check_output_width(out_dim, name)


def migrate_prompt(json_data: dict) -> dict:
    """POST /prompt hook: image inputs of VLM Encode Multimodal (or Encode Images) named the other version's way (an API
    prompt saved with ComfyUI 0.3.75 posted to 0.33.0, or the reverse) are renamed to this one's."""
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    for node in (prompt.values() if isinstance(prompt, dict) else ()):
        if isinstance(node, dict) and node.get("class_type") in IMAGE_NODE_IDS and isinstance(node.get("inputs"), dict):
            node["inputs"] = {input_name(k): v for k, v in node["inputs"].items()}
    return json_data


def register_prompt_migration() -> None:
    """Install :func:`migrate_prompt` as an on-prompt handler of the running server (once)."""
    try:
        from server import PromptServer
    except ImportError:   # not inside a ComfyUI server
        return
    server = getattr(PromptServer, "instance", None)
    if server is not None and migrate_prompt not in getattr(server, "on_prompt_handlers", []):
        server.add_on_prompt_handler(migrate_prompt)


class VLMEncodeMultimodal(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        from ..thinkdiff_core.prompts import PRESETS
        return io.Schema(
            node_id=NODE_ID, display_name="VLM Encode Multimodal", category="ThinkDiff",
            description="Lets the VLM read the images and text and generate (reason); keeps the final-norm "
                        "hidden state behind every generated token for the ThinkDiff aligner.",
            inputs=[
                ThinkDiffVLM.Input("vlm", tooltip="From Load ThinkDiff VLM."),
                *image_inputs(),
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
            # the graph, to check what the node cannot see in its inputs before generating: image inputs it
            # does not have, the aligners that will read its output
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, vlm, preset, text, max_new_tokens, seed, temperature, top_p, stop_at_eos,
                **images) -> io.NodeOutput:   # images: image_1=... or images={"image_1": ...}
        import comfy.model_management as mm
        import comfy.utils
        from ..thinkdiff_core.conditioning import ThinkDiffEmbeds as Embeds
        from ..thinkdiff_core.prompts import build_prompt
        graph, me = cls.hidden.prompt, cls.hidden.unique_id
        pil = C.images_to_pil(*images_in_order(images))
        with C.user_errors():
            if isinstance(graph, dict) and isinstance(graph.get(str(me)), dict):
                check_image_inputs(graph[str(me)].get("inputs", {}))
            prompt = build_prompt(preset, pil, text)   # PromptError (ValueError) explains what is missing
            check_aligners_downstream(graph, me, vlm)
        pbar = comfy.utils.ProgressBar(max_new_tokens)

        def on_token(k: int, n: int) -> None:
            # InterruptProcessingException subclasses Exception in 0.3.75: never catch it around here.
            mm.throw_exception_if_processing_interrupted()
            pbar.update_absolute(k, n)

        mm.throw_exception_if_processing_interrupted()
        vlm.load()
        try:
            with C.user_errors():
                # temperature 0 means greedy; NaN is not <= 0, so generate() reports it
                out = vlm.encoder.generate(prompt, max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos,
                                           do_sample=not (temperature <= 0), temperature=temperature, top_p=top_p,
                                           seed=seed, on_token=on_token)
        finally:
            vlm.release()
        embeds = Embeds.from_vlm_output(out, source=vlm.name, preset=preset, num_images=len(pil),
                                        device=mm.intermediate_device())
        C.log.info("ThinkDiff: %s generated %d tokens: %r", vlm.name, len(out.token_ids), out.text[:200])
        return io.NodeOutput(embeds, out.text, ui={"text": [out.text]})
