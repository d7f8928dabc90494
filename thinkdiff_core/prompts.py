"""Prompt formats of the paper (docs/method.md §2.2 and 4.1), as data plus a Qwen2-VL chat renderer.

A *content* list interleaves ``str`` and image items (PIL images) in the order the VLM reads them.
A :class:`Prompt` pairs it with the one template choice the official scripts differ in: whether
"Picture i: " is written before each image (``add_vision_id``). ``render_qwen_chat`` turns it into the
exact text Qwen2-VL's chat template produces with ``add_generation_prompt=True``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

DEFAULT_SYSTEM = "You are a helpful assistant."

# Instruction of the paper's multi-image in-context demo (T/test_mllama_t5_decoder_flux_multi_image.py:137).
IN_CONTEXT_INSTRUCTION = (
    "I give you several words and pictures. First, please analyse what the next picture is. "
    "Then give me a detailed diffusion prompt to describe the next picture. Please only provide me "
    "the detailed prompt and start the answer with 'Create an image'.\n\n")

# Ours (the official LVLM code has no two-image demo): the VLM describes one image that fuses both.
TWO_IMAGES_INSTRUCTION = (
    "Create a detailed diffusion prompt for one new image that combines the main subject of the "
    "first picture with the second picture. Do not use 'similar to the image'.")

# The 16 captioning instructions used when pre-computing training features (docs/method.md §2.2, PW:11-33).
TRAINING_INSTRUCTIONS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
    "Generate a prompt that can recreate the image in a 2D diffusion model.",
    "Provide a descriptive prompt to reproduce the given image using a diffusion model.",
    "Create a prompt suitable for a 2D diffusion model to generate the same image.",
    "Summarize the visual details as a prompt for a 2D diffusion model.",
    "Write a clear prompt to guide a 2D diffusion model in recreating the image.",
)

PRESETS = ("in_context", "image_text", "two_images", "custom")


class PromptError(ValueError):
    pass


@dataclass
class Prompt:
    """What the VLM reads: interleaved text and images, and whether Qwen2-VL's chat template writes
    "Picture i: " before each image (``add_vision_id``), as the official script for that use did."""
    content: list
    add_vision_id: bool
    preset: str = "custom"

    @property
    def images(self) -> list:
        return [c for c in self.content if is_image(c)]


def is_image(item: Any) -> bool:
    return not isinstance(item, str)


def split_words(text: str) -> list[str]:
    """'white, red; black' or one word per line -> ['white', 'red', 'black']."""
    return [w.strip() for w in re.split(r"[,;\n]", text) if w.strip()]


def in_context_content(words: Sequence[str], images: Sequence[Any],
                       instruction: str = IN_CONTEXT_INSTRUCTION) -> list:
    """CoBSAT-style in-context set: word i + picture i for each shot, then the query word.

    ``len(words)`` must be ``len(images) + 1``: the last word is the query.
    """
    if len(images) == 0:
        raise PromptError("the in-context preset needs at least one example image")
    if len(words) != len(images) + 1:
        raise PromptError(f"the in-context preset needs one word per image plus the query word: "
                          f"{len(images)} image(s) need {len(images) + 1} words, got {len(words)} "
                          f"({', '.join(words) or 'none'})")
    content: list = [instruction]
    for i, (w, img) in enumerate(zip(words, images)):
        content += [("\n\n" if i else "") + f"Word {i + 1}: {w}, ", img]
    content.append(f"\n\nWord {len(words)}: {words[-1]}, ")
    return content


def caption_prompt(image: Any, instruction: str) -> Prompt:
    """The official single-image format: [image, instruction], plain chat template (no "Picture 1: ").
    Used for the training captions (docs/method.md §2.2) and the image_text preset (§4.1)."""
    return Prompt([image, instruction], add_vision_id=False, preset="image_text")


def build_prompt(preset: str, images: Sequence[Any], text: str = "") -> Prompt:
    """The prompt of one of the node presets.

    in_context: the official multi-image reasoning script: instruction, "Word i: x, " + picture i,
      the query word; vision ids on (``add_vision_id=True``).
    image_text: the official single-image path: the image, then the instruction, no vision ids. With
      several images, vision ids are on (as the official multi-image script) so the text can refer to
      "Picture 2".
    two_images: ours (the official LVLM code has no two-image demo): both images with vision ids, then
      the fusing instruction (after the user's text, if any).
    custom: images then text as given; vision ids only with more than one image.
    """
    images = list(images)
    if preset == "in_context":
        return Prompt(in_context_content(split_words(text), images), add_vision_id=True, preset=preset)
    if preset == "image_text":
        if not images:
            raise PromptError("the image + text preset needs one image (got none)")
        if not text.strip():
            raise PromptError("the image + text preset needs an instruction text, e.g. "
                              "'Create a diffusion prompt for a dog in the style of this picture.'")
        if len(images) == 1:
            return caption_prompt(images[0], text)
        return Prompt([*images, text], add_vision_id=True, preset=preset)
    if preset == "two_images":
        if len(images) != 2:
            raise PromptError(f"the two-images preset needs exactly 2 images, got {len(images)}")
        return Prompt([*images, (text.strip() + " " if text.strip() else "") + TWO_IMAGES_INSTRUCTION],
                      add_vision_id=True, preset=preset)
    if preset == "custom":
        if not images and not text.strip():
            raise PromptError("nothing to encode: give at least one image or a text")
        return Prompt([*images, text] if text else images, add_vision_id=len(images) > 1, preset=preset)
    raise PromptError(f"unknown prompt preset {preset!r}; choose one of {', '.join(PRESETS)}")


def render_qwen_chat(content: Sequence[Any], system: str | None = DEFAULT_SYSTEM,
                     add_vision_id: bool = True) -> tuple[str, list]:
    """Qwen2-VL chat text for one user turn + the generation prompt, and the images in order."""
    parts, images = [], []
    if system:
        parts.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    parts.append("<|im_start|>user\n")
    for item in content:
        if is_image(item):
            images.append(item)
            if add_vision_id:
                parts.append(f"Picture {len(images)}: ")
            parts.append("<|vision_start|><|image_pad|><|vision_end|>")
        else:
            parts.append(item)
    parts.append("<|im_end|>\n<|im_start|>assistant\n")
    return "".join(parts), images
