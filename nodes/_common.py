"""Small adapters between ComfyUI's types and thinkdiff_core: model folders, images, memory."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import folder_paths
import torch

log = logging.getLogger("thinkdiff")

ALIGNER_FOLDER = "thinkdiff"
VLM_FOLDER = "LLM"
ALIGNER_EXTENSIONS = {".pth", ".safetensors"}


def register_folders() -> None:
    """Register models/thinkdiff (aligner files) and models/LLM (HF model folders) with folder_paths,
    keeping any paths users added through extra_model_paths.yaml. Creates no directories."""
    for name, exts in ((ALIGNER_FOLDER, ALIGNER_EXTENSIONS), (VLM_FOLDER, set())):
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


def vlm_folders() -> list[str]:
    """Model folders (containing config.json) under every models/LLM path, up to two levels deep,
    as paths relative to that root (e.g. 'Qwen2-VL-7B-Instruct' or 'Qwen-VL/Qwen2-VL-7B-Instruct')."""
    found: list[str] = []
    for root in folder_paths.get_folder_paths(VLM_FOLDER):
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


def vlm_path(name: str) -> str | None:
    for root in folder_paths.get_folder_paths(VLM_FOLDER):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    return None


def where_vlm() -> str:
    roots = folder_paths.get_folder_paths(VLM_FOLDER)
    return (f"Put the Qwen2-VL model folder (e.g. Qwen2-VL-7B-Instruct, with config.json, *.safetensors "
            f"and tokenizer files) into {roots[0] if roots else 'ComfyUI/models/LLM'} and restart or "
            f"refresh ComfyUI")


def where_aligner() -> str:
    roots = folder_paths.get_folder_paths(ALIGNER_FOLDER)
    return (f"Put the ThinkDiff aligner (thinkdiff_lvlm.pth from the official release, or a converted "
            f".safetensors) into {roots[0] if roots else 'ComfyUI/models/thinkdiff'}")


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
    extra: dict = field(default_factory=dict)

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
