"""Names of the official release and of the models it builds on, and where users put them.

One home for the file and folder names that loaders, messages, workflows, the trainer's metadata
and the docs show (the official checkpoints are ``Mifucius/ThinkDiff`` on Hugging Face).
"""
from __future__ import annotations

# the official aligner checkpoints
ALIGNER_LVLM_FILE = "thinkdiff_lvlm.pth"
ALIGNER_CLIP_FILE = "thinkdiff_clip.pth"
CHECKPOINT_REPO = "Mifucius/ThinkDiff"

# the models the released aligners were trained with (Hugging Face ids, and the folder name users keep)
VLM_REPO = "Qwen/Qwen2-VL-7B-Instruct"
VLM_NAME = "Qwen2-VL-7B-Instruct"
VLM_HIDDEN = 3584
T5_REPO = "google/flan-t5-xxl"
CLIP_VISION_REPO = "Salesforce/blip2-flan-t5-xxl"   # ThinkDiff-CLIP reads only its vision tower
CLIP_VISION_NAME = "blip2-flan-t5-xxl"
CLIP_VISION_HIDDEN = 1408
SOURCE_MODEL = {"lvlm": VLM_REPO, "clip": CLIP_VISION_REPO}

# ComfyUI model folders (under ComfyUI/models/) and the FLUX.1-dev files the workflows load
ALIGNER_FOLDER = "thinkdiff"
VLM_FOLDER = "LLM"
CLIP_VISION_FOLDER = "blip2"
FLUX_T5_FILE = "t5xxl_fp16.safetensors"   # FLUX's own T5 text encoder (ThinkDiff-CLIP appends its encoding)
FLUX_FILES = {"diffusion_models": "flux1-dev.safetensors", "clip": "clip_l.safetensors", "vae": "ae.safetensors"}


def where_vlm(root: str | None = None) -> str:
    """What to do when the VLM folder is missing."""
    return (f"Put the Qwen2-VL model folder (e.g. {VLM_NAME} from {VLM_REPO}: the whole Hugging Face folder "
            f"with config.json, *.safetensors, tokenizer and preprocessor files) into "
            f"{root or 'ComfyUI/models/' + VLM_FOLDER}")


def where_aligner(root: str | None = None) -> str:
    """What to do when the aligner file is missing."""
    return (f"Put the ThinkDiff aligner ({ALIGNER_LVLM_FILE} or {ALIGNER_CLIP_FILE} from {CHECKPOINT_REPO}, or a "
            f".safetensors converted with `python -m thinkdiff_core convert`) into "
            f"{root or 'ComfyUI/models/' + ALIGNER_FOLDER}")


def where_vision(root: str | None = None) -> str:
    """What to do when the ThinkDiff-CLIP vision encoder folder is missing or incomplete."""
    return (f"Put a BLIP-2 model folder (e.g. {CLIP_VISION_NAME} from {CLIP_VISION_REPO}: config.json, "
            f"preprocessor_config.json and the *.safetensors files; only the vision tower is read) into "
            f"{root or 'ComfyUI/models/' + CLIP_VISION_FOLDER}")


# The public homes of the FLUX.1-dev files above, for ComfyUI's "missing models" dialog: the workflows carry
# them as properties.models = [{name, url, directory}] on the stock loaders, as ComfyUI's own templates do.
# `directory` is the ComfyUI model folder the file goes to; CLIPLoader reads "text_encoders" (models/clip
# is its legacy second path), the folder ComfyUI 0.3.75's FLUX templates name for clip_l. The FLUX.1-dev
# repository is gated: the link works once the user has accepted the FLUX.1-dev licence on Hugging Face.
FLUX_DEV_REPO = "black-forest-labs/FLUX.1-dev"
FLUX_TEXT_ENCODERS_REPO = "comfyanonymous/flux_text_encoders"
FLUX_DOWNLOADS = {
    "diffusion_models": {"name": FLUX_FILES["diffusion_models"], "directory": "diffusion_models",
                         "url": f"https://huggingface.co/{FLUX_DEV_REPO}/resolve/main/{FLUX_FILES['diffusion_models']}"},
    "clip": {"name": FLUX_FILES["clip"], "directory": "text_encoders",
             "url": f"https://huggingface.co/{FLUX_TEXT_ENCODERS_REPO}/resolve/main/{FLUX_FILES['clip']}"},
    "vae": {"name": FLUX_FILES["vae"], "directory": "vae",
            "url": f"https://huggingface.co/{FLUX_DEV_REPO}/resolve/main/{FLUX_FILES['vae']}"},
    # ThinkDiff-CLIP's workflows also load FLUX's T5 (DualCLIPLoader: clip_l + t5xxl)
    "t5xxl": {"name": FLUX_T5_FILE, "directory": "text_encoders",
              "url": f"https://huggingface.co/{FLUX_TEXT_ENCODERS_REPO}/resolve/main/{FLUX_T5_FILE}"},
}


# ThinkDiff-mini (python -m train mini build): tiny models trained on easy-vqa that show the method working on
# a CPU; `python -m train mini install` puts them under these names in ComfyUI's models folders, and
# workflows/thinkdiff_mini_in_context.json loads them with the stock loaders around the ThinkDiff nodes.
MINI_CONTEXT_DIM = 64   # the width of ThinkDiff-mini's tiny T5, which its image model reads
MINI_FILES = {
    VLM_FOLDER: "thinkdiff-mini-qwen2vl",                       # a folder, like a real VLM
    ALIGNER_FOLDER: "thinkdiff-mini-aligner.safetensors",
    "diffusion_models": "thinkdiff-mini-sd3.safetensors",     # SD3-layout MMDiT on tiny-T5 states
    "vae": "thinkdiff-mini-taesd.safetensors",                # TAESD layout, 16 latent channels
}
