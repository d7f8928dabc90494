"""Small adapters between ComfyUI and thinkdiff_core: model folders, images, the patcher module."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import folder_paths
import torch

from ..thinkdiff_core import release
from ..thinkdiff_core.release import ALIGNER_FOLDER, CLIP_VISION_FOLDER, VLM_FOLDER

log = logging.getLogger("thinkdiff")

ALIGNER_EXTENSIONS = {".pth", ".safetensors"}


def register_folders() -> None:
    """Register models/thinkdiff (aligner files), models/LLM and models/blip2 (HF model folders) with
    folder_paths, keeping any paths users added through extra_model_paths.yaml. Creates no directories."""
    for name, exts in ((ALIGNER_FOLDER, ALIGNER_EXTENSIONS), (VLM_FOLDER, set()), (CLIP_VISION_FOLDER, set())):
        default = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, known = folder_paths.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            if exts and known:
                known.update(exts)
            elif exts:  # a name created by add_model_folder_path has an empty set = all files
                folder_paths.folder_names_and_paths[name] = (paths, set(exts))
        else:
            folder_paths.folder_names_and_paths[name] = ([default], set(exts))


def aligner_files() -> list[str]:
    return [f for f in folder_paths.get_filename_list(ALIGNER_FOLDER)
            if os.path.splitext(f)[1].lower() in ALIGNER_EXTENSIONS]


def vlm_folders(folder: str = VLM_FOLDER) -> list[str]:
    """Model folders (containing config.json) under every models/LLM path (or another registered
    folder: models/blip2), up to two levels deep, as paths relative to that root (e.g.
    'Qwen2-VL-7B-Instruct' or 'Qwen-VL/Qwen2-VL-7B-Instruct')."""
    found: list[str] = []
    for root in folder_paths.get_folder_paths(folder):
        if not os.path.isdir(root):
            continue
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            if os.path.isfile(os.path.join(entry.path, "config.json")):
                found.append(entry.name)
                continue
            nested = [f"{entry.name}/{sub.name}" for sub in sorted(os.scandir(entry.path), key=lambda e: e.name)
                      if sub.is_dir() and os.path.isfile(os.path.join(sub.path, "config.json"))]
            # a folder without config.json is still listed (loading it explains what is missing)
            found.extend(nested or [entry.name])
    return sorted(dict.fromkeys(found))


def vlm_path(name: str, folder: str = VLM_FOLDER) -> str | None:
    for root in folder_paths.get_folder_paths(folder):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    return None


def where_vlm() -> str:
    roots = folder_paths.get_folder_paths(VLM_FOLDER)
    return release.where_vlm(roots[0] if roots else None) + " and restart or refresh ComfyUI"


def where_vision() -> str:
    roots = folder_paths.get_folder_paths(CLIP_VISION_FOLDER)
    return release.where_vision(roots[0] if roots else None) + " and restart or refresh ComfyUI"


def where_aligner() -> str:
    roots = folder_paths.get_folder_paths(ALIGNER_FOLDER)
    return release.where_aligner(roots[0] if roots else None)


def missing_aligner(name: str) -> str:
    return f"aligner file '{name}' not found in models/{ALIGNER_FOLDER}. {where_aligner()}."


def images_to_pil(*images: torch.Tensor | None) -> list:
    """ComfyUI IMAGE tensors [B, H, W, C] in 0..1 -> PIL RGB images, in input order; a batch of B
    counts as B images. None (an unconnected input) is skipped."""
    import numpy as np
    from PIL import Image
    out = []
    for batch in images:
        if batch is None:
            continue
        if batch.ndim == 3:
            batch = batch.unsqueeze(0)
        for img in batch:
            arr = (img[..., :3].float().cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
            out.append(Image.fromarray(arr))
    return out


class PatcherModule(torch.nn.Module):
    """Holds a transformers model for comfy.model_patcher.ModelPatcher, which assigns ``model.device``
    (a read-only property on transformers models) while moving weights."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.hf_model = model
        self.device = device


def load_for_comfy(load, dtype: str):
    """Build a transformers-backed encoder on ComfyUI's offload device and wrap its model in a ModelPatcher, so
    core's memory manager moves it to the GPU when it runs. ``load(torch_dtype, device)`` returns an object with
    ``.model``; "auto" dtype follows ComfyUI's own judgement of the device. Returns (encoder, patcher,
    torch_dtype, load_device)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    from ..thinkdiff_core import dtypes
    load_device = mm.get_torch_device()
    offload_device = mm.text_encoder_offload_device()
    torch_dtype = dtypes.resolve_dtype(
        dtype, load_device, bf16_supported=mm.should_use_bf16(load_device, prioritize_performance=False),
        fp16_supported=mm.should_use_fp16(load_device, prioritize_performance=False))
    with user_errors():
        encoder = load(torch_dtype, offload_device)
    patcher = comfy.model_patcher.ModelPatcher(PatcherModule(encoder.model, offload_device),
                                               load_device=load_device, offload_device=offload_device)
    return encoder, patcher, torch_dtype, load_device


@contextmanager
def user_errors():
    """The core's errors reach the UI as the builtin type they derive from, with their message.

    ComfyUI names an exception by its module path (``custom_nodes.thinkdiff.thinkdiff_core.checkpoint.
    AlignerFileError``), which reads like a file path to users; ``ValueError`` / ``FileNotFoundError``
    with the same message do not. The original stays chained for the log's traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError) as e:
        if type(e) in (ValueError, FileNotFoundError):
            raise
        base = FileNotFoundError if isinstance(e, FileNotFoundError) else ValueError
        raise base(str(e)) from e
