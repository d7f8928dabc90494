"""ThinkDiff-CLIP's image encoder: BLIP-2's EVA-CLIP ViT-g vision tower, 65 tokens per image (docs/method.md §1.2).

Per image: BLIP-2 preprocessing (224x224 bicubic resize, CLIP mean/std), the vision tower's
``last_hidden_state`` (after its post-layernorm: 1 CLS + 16x16 patch tokens of width 1408), then the
official reduction: keep CLS, bilinearly resize the 16x16 patch grid to 8x8 (align_corners=False),
flatten row-major, CLS first -> 65 tokens. These go through the same :class:`~thinkdiff_core.aligner.Aligner`
as the LVLM variant (1408 -> 4096).

The folder can be a whole BLIP-2 checkpoint (``model_type`` ``blip-2``, e.g. Salesforce/blip2-flan-t5-xxl):
only its ``vision_model.*`` tensors are read, never the 11 B-parameter T5. Or a folder holding just the
vision tower (``model_type`` ``blip_2_vision_model``, a saved ``Blip2VisionModel``). Local files only.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .dtypes import resolve_dtype
from .release import where_vision

log = logging.getLogger("thinkdiff")

DOWNSAMPLE = 2               # vision_downsample_factor of the official config: 16x16 -> 8x8
FULL_MODEL = "blip-2"
VISION_ONLY = "blip_2_vision_model"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_FILE = "preprocessor_config.json"


class VisionLoadError(FileNotFoundError):
    pass


def tokens_per_image(num_patches: int = 256, factor: int = DOWNSAMPLE) -> int:
    side = int(round(num_patches ** 0.5))
    return 1 + (side // factor) ** 2


def reduce_tokens(hidden: torch.Tensor, factor: int = DOWNSAMPLE) -> torch.Tensor:
    """[B, 1 + g*g, D] (CLS first) -> [B, 1 + (g/f)^2, D]: CLS, then the bilinearly resized patch grid,
    row-major (docs/method.md §1.2; 257 -> 65 for the ViT-g at 224 px)."""
    if hidden.ndim != 3:
        raise ValueError(f"expected vision states [B, 1 + g*g, D], got {tuple(hidden.shape)}")
    cls, patches = hidden[:, :1], hidden[:, 1:]
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
    grid = patches.reshape(hidden.shape[0], side, side, -1).permute(0, 3, 1, 2)
    small = F.interpolate(grid.float(), size=(side // factor, side // factor), mode="bilinear",
                          align_corners=False).to(hidden.dtype)
    return torch.cat([cls, small.permute(0, 2, 3, 1).reshape(hidden.shape[0], -1, hidden.shape[-1])], dim=1)


def check_vision_folder(path: str | os.PathLike) -> dict:
    """Check a local BLIP-2 / Blip2VisionModel folder before loading; return its config dict."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise VisionLoadError(f"vision encoder folder not found: {path}. {where_vision()}")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise VisionLoadError(f"{path} has no config.json, so it is not a transformers model folder. {where_vision()}")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise VisionLoadError(f"{cfg_path} is not valid JSON ({e}); copy it again from the model's release. "
                              f"{where_vision()}") from None
    if cfg.get("model_type") not in (FULL_MODEL, VISION_ONLY):
        raise VisionLoadError(f"{path}: model_type {cfg.get('model_type')!r} is not a BLIP-2 model (expected "
                              f"{FULL_MODEL!r} or {VISION_ONLY!r}). ThinkDiff-CLIP reads BLIP-2's EVA-CLIP ViT-g; "
                              f"a Qwen2-VL folder belongs in the Load ThinkDiff VLM node. {where_vision()}")
    if not any(n.endswith(".safetensors") for n in os.listdir(path)):
        raise VisionLoadError(f"{path} has no *.safetensors weights (only {', '.join(sorted(os.listdir(path))[:8])}). "
                              f"{where_vision()}")
    return cfg


def _vision_state_dict(path: str, prefix: str) -> dict:
    """Only the tensors under ``prefix`` (e.g. 'vision_model.'), reading only the shards that hold them."""
    from safetensors import safe_open
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as fh:
            weight_map = json.load(fh)["weight_map"]
        files = sorted({f for k, f in weight_map.items() if k.startswith(prefix)})
    else:
        files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    sd = {}
    for name in files:
        with safe_open(os.path.join(path, name), framework="pt", device="cpu") as fh:
            for k in fh.keys():
                if k.startswith(prefix):
                    sd[k[len(prefix):]] = fh.get_tensor(k)
    return sd


def _processor(path: str, image_size: int):
    """BLIP-2's image processor from the folder; without a preprocessor_config.json the BLIP-2 one is
    rebuilt (resize to the tower's image size, bicubic, CLIP mean/std): BlipImageProcessor's own
    defaults (384 px) would be wrong."""
    from transformers import BlipImageProcessor
    if os.path.isfile(os.path.join(path, PREPROCESSOR_FILE)):
        proc = BlipImageProcessor.from_pretrained(path, local_files_only=True)
    else:
        log.warning("ThinkDiff: %s has no %s; using BLIP-2's preprocessing (%d px, bicubic, CLIP mean/std)",
                    path, PREPROCESSOR_FILE, image_size)
        proc = BlipImageProcessor(size={"height": image_size, "width": image_size}, image_mean=list(CLIP_MEAN),
                                  image_std=list(CLIP_STD), do_convert_rgb=True)
    return proc


@dataclass
class VisionOutput:
    tokens: torch.Tensor      # [k, 65, D]: per image, CLS then the 8x8 grid


class VisionEncoder:
    """BLIP-2's vision tower plus its image processor: images -> 65 tokens each."""

    def __init__(self, model, processor, name: str = "", factor: int = DOWNSAMPLE):
        self.model, self.processor, self.name, self.factor = model, processor, name, factor

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: str | torch.dtype = "auto",
                        device: str | torch.device = "cpu") -> "VisionEncoder":
        from transformers import Blip2Config, Blip2VisionConfig, Blip2VisionModel
        path = os.fspath(path)
        raw = check_vision_folder(path)
        device = torch.device(device)
        if raw["model_type"] == FULL_MODEL:
            config, prefix = Blip2Config.from_pretrained(path, local_files_only=True).vision_config, "vision_model."
        else:
            config, prefix = Blip2VisionConfig.from_pretrained(path, local_files_only=True), ""
        from safetensors import SafetensorError
        try:
            sd = _vision_state_dict(path, prefix)
        except (SafetensorError, OSError) as e:
            raise VisionLoadError(f"{path}: the weights could not be read ({e.__class__.__name__}: "
                                  f"{str(e).splitlines()[0][:200] if str(e) else '-'}); a *.safetensors file is "
                                  f"probably truncated: copy it again") from None
        with torch.device("meta"):
            model = Blip2VisionModel(config)
        expected = set(model.state_dict())
        missing = sorted(expected - set(sd))
        if missing:
            raise VisionLoadError(f"{path}: the vision tower's weights are incomplete ({len(missing)} of {len(expected)} "
                                  f"tensors missing, e.g. {prefix}{missing[0]}). {where_vision()}")
        model.load_state_dict({k: sd[k] for k in expected}, strict=True, assign=True)
        model = model.to(device=device, dtype=resolve_dtype(dtype, device)).eval().requires_grad_(False)
        return cls(model, _processor(path, config.image_size), name=os.path.basename(os.path.normpath(path)))

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def tokens_per_image(self) -> int:
        side = self.model.config.image_size // self.model.config.patch_size
        return tokens_per_image(side * side, self.factor)

    def pixel_values(self, images: Sequence) -> torch.Tensor:
        """PIL images -> [k, 3, 224, 224] normalised pixels (the BLIP-2 processor)."""
        if not images:
            raise ValueError("no image given: ThinkDiff-CLIP needs at least one image")
        out = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        return out["pixel_values"]

    @torch.no_grad()
    def encode_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[k, 3, H, W] -> [k, 65, D] (post-layernorm states, reduced)."""
        hidden = self.model(pixel_values=pixel_values.to(self.device, self.dtype)).last_hidden_state
        return reduce_tokens(hidden, self.factor)

    def encode(self, images: Sequence) -> VisionOutput:
        """PIL images, in order -> their tokens [k, 65, D], in the same order."""
        return VisionOutput(tokens=self.encode_pixels(self.pixel_values(images)))
