"""The prompt texts and templates, pinned to the official code's strings.

The strings are written out here on purpose (not imported from thinkdiff_core): an edit to a prompt in
the code must fail this test. Sources: the official ThinkDiff code, see docs/method.md §2.2 and §4.1.
"""
from thinkdiff_core import prompts
from thinkdiff_core.prompts import build_prompt, caption_prompt, in_context_content, render_qwen_chat

V = "<|vision_start|><|image_pad|><|vision_end|>"
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"

# thinkdiff/datasets/datasets/cc_sbu_dataset_mllama_vllm_process_wids.py:11-33 (the active 16)
OFFICIAL_TRAINING_INSTRUCTIONS = [
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
]
# scripts/test/test_mllama_t5_decoder_flux_multi_image.py:137
OFFICIAL_IN_CONTEXT_INSTRUCTION = (
    "I give you several words and pictures. First, please analyse what the next picture is. Then give me a "
    "detailed diffusion prompt to describe the next picture. Please only provide me the detailed prompt and "
    "start the answer with 'Create an image'.\n\n")


def test_system_prompt_is_the_official_one():
    assert prompts.DEFAULT_SYSTEM == "You are a helpful assistant."


def test_training_instructions_are_the_official_sixteen_in_order():
    assert list(prompts.TRAINING_INSTRUCTIONS) == OFFICIAL_TRAINING_INSTRUCTIONS


def test_in_context_instruction_is_the_official_one():
    assert prompts.IN_CONTEXT_INSTRUCTION == OFFICIAL_IN_CONTEXT_INSTRUCTION


def test_in_context_prompt_matches_the_official_layout():
    """Instruction, "Word i: x, " + Picture i (vision ids on), "\\n\\n" separators, the query word."""
    a, b = object(), object()   # any non-string item is an image
    p = build_prompt("in_context", [a, b], "white, red, black")
    assert p.add_vision_id and p.images == [a, b]
    text, images = render_qwen_chat(p.content, add_vision_id=p.add_vision_id)
    assert images == [a, b]
    assert text == (SYSTEM + "<|im_start|>user\n" + OFFICIAL_IN_CONTEXT_INSTRUCTION
                    + f"Word 1: white, Picture 1: {V}\n\nWord 2: red, Picture 2: {V}"
                    + "\n\nWord 3: black, " + ASSISTANT)
    assert p.content == in_context_content(["white", "red", "black"], [a, b])


def test_image_text_prompt_is_the_official_single_image_path():
    """[system, user: [image, instruction]] with the plain template: no "Picture 1: " (get_embed,
    need_process=True, applies the chat template without add_vision_id)."""
    img = object()
    p = build_prompt("image_text", [img], "Create a diffusion prompt for a dog in this style.")
    assert not p.add_vision_id
    text, _ = render_qwen_chat(p.content, add_vision_id=p.add_vision_id)
    assert text == (SYSTEM + "<|im_start|>user\n" + V + "Create a diffusion prompt for a dog in this style."
                    + ASSISTANT)
    # the training captions use the same format
    assert caption_prompt(img, "Describe the image concisely.").add_vision_id is False


def test_multi_image_presets_keep_vision_ids():
    a, b = object(), object()
    two = build_prompt("two_images", [a, b], "")
    assert two.add_vision_id
    text, _ = render_qwen_chat(two.content, add_vision_id=two.add_vision_id)
    assert text.startswith(SYSTEM + f"<|im_start|>user\nPicture 1: {V}Picture 2: {V}")
    assert build_prompt("image_text", [a, b], "Combine them.").add_vision_id
    assert build_prompt("custom", [a, b], "x").add_vision_id
    assert not build_prompt("custom", [a], "x").add_vision_id
