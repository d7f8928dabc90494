"""Random-weight stand-ins for every model a ThinkDiff FLUX workflow loads, in the real file formats.

Real Qwen2-VL-7B / ThinkDiff / FLUX weights cannot be downloaded here, so the node tests and the
quick-start demo build these instead. ComfyUI loads them exactly like the real files (stock
UNETLoader / CLIPLoader / VAELoader detection); the images are noise-like but deterministic.

    models/diffusion_models/thinkdiff-demo-flux1-dev.safetensors   FLUX-dev layout, hidden 3072, 1+1 blocks, bf16 (1 GB)
    models/clip/thinkdiff-demo-clip_l.safetensors                  full-size random CLIP-L text model, fp16
    models/vae/thinkdiff-demo-taef1.safetensors                    TAESD-style FLUX VAE (16 channels)
    models/LLM/thinkdiff-demo-qwen2vl/                             tiny Qwen2-VL (hidden 64) + the real Qwen2 tokenizer
    models/thinkdiff/thinkdiff-demo-aligner.pth                    aligner 64 -> 4096 in the official .pth layout
    models/thinkdiff/thinkdiff-demo-aligner-3584.safetensors       aligner for a 3584-wide VLM (mismatch checks)
    models/blip2/thinkdiff-demo-blip2/                             tiny whole BLIP-2 (vision hidden 32, 224 px, patch 14)
    models/thinkdiff/thinkdiff-demo-clip-aligner.pth               ThinkDiff-CLIP aligner 32 -> 4096, official .pth layout
    models/text_encoders/thinkdiff-demo-t5xxl.safetensors          FLUX's T5-XXL with a 2-layer body (d_model 4096), fp16;
                                                                   loaded by the demo-only ThinkDiffDemoDualCLIPLoader
                                                                   (devtools/demo_nodes), swapped in for DualCLIPLoader

CLI (from the repository root): python -m devtools.demo_models MODELS_DIR [--comfyui DIR] [--force]
[--reuse-from OTHER_MODELS_DIR]
The FLUX/VAE layouts come from ComfyUI's own classes (built on the meta device), so the builders run
in a process where ComfyUI's ``comfy`` package imports: the CLI re-starts itself that way
(devtools.with_comfy) when it is not, and other tools call :func:`build_in_subprocess`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

from devtools import paths, with_comfy
from thinkdiff_core import release

FLUX_FILE = "thinkdiff-demo-flux1-dev.safetensors"
CLIP_FILE = "thinkdiff-demo-clip_l.safetensors"
VAE_FILE = "thinkdiff-demo-taef1.safetensors"
VLM_DIR = "thinkdiff-demo-qwen2vl"
ALIGNER_FILE = "thinkdiff-demo-aligner.pth"
WRONG_ALIGNER_FILE = "thinkdiff-demo-aligner-3584.safetensors"
VLM_HIDDEN = 64
VISION_DIR = "thinkdiff-demo-blip2"
CLIP_ALIGNER_FILE = "thinkdiff-demo-clip-aligner.pth"
T5_FILE = "thinkdiff-demo-t5xxl.safetensors"
VISION_HIDDEN = 32

# Demo file name per loader input (or {real name: demo name} where one input loads either of two files):
# run_workflow.py and the tests swap them in.
DEMO_NAMES = {
    ("UNETLoader", "unet_name"): FLUX_FILE,
    ("CLIPLoader", "clip_name"): CLIP_FILE,
    ("VAELoader", "vae_name"): VAE_FILE,
    ("ThinkDiffLoadVLM", "vlm_name"): VLM_DIR,
    ("ThinkDiffLoadAligner", "aligner_name"): {release.ALIGNER_LVLM_FILE: ALIGNER_FILE,
                                               release.ALIGNER_CLIP_FILE: CLIP_ALIGNER_FILE, None: ALIGNER_FILE},
    ("ThinkDiffLoadVisionEncoder", "vision_name"): VISION_DIR,
    ("DualCLIPLoader", "clip_name1"): CLIP_FILE,
    ("DualCLIPLoader", "clip_name2"): T5_FILE,
}
# Stock loaders the demo swaps for a demo-only class with the same inputs (devtools/demo_nodes).
DEMO_CLASSES = {"DualCLIPLoader": "ThinkDiffDemoDualCLIPLoader"}


def demo_name(class_type: str, input_name: str, value):
    """The demo file for a loader input (None when the input is not a model file)."""
    d = DEMO_NAMES.get((class_type, input_name))
    if isinstance(d, dict):
        return d.get(value, d[None])
    return d


def _import_comfy(what: str):
    """ComfyUI's `comfy` package in CPU mode (no CUDA probing); it must already be importable."""
    with_comfy.require(what)
    with_comfy.cpu_mode()
    import comfy.ops  # noqa: F401


def _fill(shapes: dict, dtype, seed: int) -> dict:
    """Every key gets a value (ComfyUI layers do not initialise weights): weights randn/sqrt(fan_in),
    biases zero, norm scales one."""
    import torch
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        if k.endswith(".scale") or "norm" in k and k.endswith(".weight") and len(shape) == 1:
            t = torch.ones(shape)
        elif k.endswith(".bias"):
            t = torch.zeros(shape)
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            t = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        else:
            t = torch.randn(shape, generator=g) * 0.02
        sd[k] = t.to(dtype).contiguous()
    return sd


def flux_params() -> dict:
    """FLUX.1-dev's configuration in the keyword arguments this ComfyUI's ``Flux`` takes: newer ComfyUI
    (0.33.0) adds required ``FluxParams`` fields, filled here with the values its own model detection
    uses for FLUX.1 (``txt_ids_dims=[]``)."""
    import dataclasses
    from comfy.ldm.flux.model import FluxParams
    kw = dict(in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
              mlp_ratio=4.0, num_heads=24, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000,
              patch_size=2, qkv_bias=True, guidance_embed=True)
    fields = {f.name for f in dataclasses.fields(FluxParams)}
    if "txt_ids_dims" in fields:
        kw["txt_ids_dims"] = []     # FLUX.1: no text position ids (FLUX.2 uses [3])
    missing = [f.name for f in dataclasses.fields(FluxParams) if f.name not in kw
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise RuntimeError(f"this ComfyUI's FluxParams needs fields the demo builder does not know: {missing}")
    return kw


def flux_layout() -> dict:
    """{key: shape} of the demo FLUX as this ComfyUI's classes lay it out (built on the meta device)."""
    import torch
    _import_comfy("flux_layout")
    import comfy.ops
    from comfy.ldm.flux.model import Flux
    model = Flux(image_model="flux", **flux_params(), device="meta", dtype=torch.bfloat16,
                 operations=comfy.ops.disable_weight_init)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def taef1_layout() -> dict:
    import torch
    _import_comfy("taef1_layout")
    from comfy.taesd.taesd import TAESD
    with torch.device("meta"):
        model = TAESD(latent_channels=16)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return {**shapes, "vae_scale": (), "vae_shift": ()}


def build_flux(path: str, seed: int = 0) -> str:
    """Smallest FLUX-dev that ComfyUI's stock detection accepts: hidden 3072 (24 heads are hard-coded),
    1 double block, 1 single block, guidance embedding."""
    import torch
    from safetensors.torch import save_file
    sd = _fill(flux_layout(), torch.bfloat16, seed)
    tmp = path + ".tmp"
    save_file(sd, tmp)
    os.replace(tmp, path)
    return path


def build_taef1(path: str, seed: int = 0) -> str:
    import torch
    from safetensors.torch import save_file
    shapes = {k: v for k, v in taef1_layout().items() if k not in ("vae_scale", "vae_shift")}
    sd = _fill(shapes, torch.float32, seed)
    sd["vae_scale"] = torch.tensor(0.3611)
    sd["vae_shift"] = torch.tensor(0.1159)
    save_file(sd, path)
    return path


def file_layout(path: str) -> dict:
    """{key: shape} of a safetensors file (its header only)."""
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def _link_or_copy(src: str, dst: str) -> None:
    """dst becomes the same file as src (a hard link where the file system allows, else a copy)."""
    if os.path.isdir(src):
        shutil.copytree(src, dst, copy_function=_link_or_copy)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def t5_layout() -> dict:
    """{key: shape} of FLUX's T5-XXL encoder as this ComfyUI builds it with the demo loader's
    t5xxl_model_config (devtools/demo_nodes: 2 layers, d_model 4096), on the meta device."""
    import json as _json

    import torch
    _import_comfy("t5_layout")
    import comfy.ops
    import comfy.text_encoders.sd3_clip
    from comfy.text_encoders.t5 import T5
    from devtools.demo_nodes import T5_CONFIG
    with open(os.path.join(os.path.dirname(comfy.text_encoders.sd3_clip.__file__), "t5_config_xxl.json")) as f:
        config = {**_json.load(f), **T5_CONFIG}
    model = T5(config, torch.float16, "meta", comfy.ops.manual_cast)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def build_t5xxl(path: str, seed: int = 0) -> str:
    """FLUX's T5-XXL text encoder file with a 2-layer body (every key filled; fp16, ~270 MB: the 32128 x 4096
    embedding is most of it). ComfyUI's stock DualCLIPLoader would build it at full size; the demo loader
    shrinks the model to this file's layout."""
    import torch
    from safetensors.torch import save_file
    sd = _fill(t5_layout(), torch.float16, seed)
    tmp = path + ".tmp"
    save_file(sd, tmp)
    os.replace(tmp, path)
    return path


def build_clip_l(path: str, seed: int = 0) -> str:
    """A full-size random CLIP-L text model (CLIPLoader type stable_diffusion detects it)."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                         hidden_act="quick_gelu")
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(cfg)
    sd = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()
          if not k.endswith("position_ids")}
    save_file(sd, path)
    return path


def build_demo_models(models_dir: str, comfyui_dir: str | None = None, force: bool = False,
                      log=print, reuse_from: str | None = None) -> dict:
    """Create every demo model under models_dir (skipping files that exist unless force), in this
    process: ComfyUI's ``comfy`` must be importable here (else use :func:`build_in_subprocess`).
    reuse_from: another models folder (e.g. built by another ComfyUI version) whose files are linked
    instead of built where they are the same: the FLUX and VAE files only when their keys and shapes
    equal the layout of this ComfyUI's classes, the rest (made without ComfyUI) always.
    Returns {what: path}."""
    import torch
    from thinkdiff_core.aligner import Aligner
    from thinkdiff_core.checkpoint import save_aligner
    from thinkdiff_core.tiny import build_tiny_aligner, build_tiny_blip2_vision, build_tiny_qwen2vl, find_tokenizer
    comfyui_dir = comfyui_dir or paths.comfyui_dir()
    out = {}

    def want(sub: str, name: str) -> tuple[str, bool]:
        d = os.path.join(models_dir, sub)
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, name)
        return p, force or not os.path.exists(p)

    steps = [
        ("flux", "diffusion_models", FLUX_FILE, build_flux),
        ("vae", "vae", VAE_FILE, build_taef1),
        ("clip", "clip", CLIP_FILE, build_clip_l),
        ("vlm", "LLM", VLM_DIR, lambda p: build_tiny_qwen2vl(p, find_tokenizer("qwen25_tokenizer", comfyui_dir),
                                                            hidden_size=VLM_HIDDEN)),
        ("aligner", "thinkdiff", ALIGNER_FILE,
         lambda p: torch.save({"model": build_tiny_aligner(VLM_HIDDEN, seed=1).state_dict()}, p)),
        ("wrong_aligner", "thinkdiff", WRONG_ALIGNER_FILE,
         lambda p: save_aligner(Aligner(3584, 4096, 32), p, source_vlm="(demo: random, 3584 wide)")),
        ("vision", "blip2", VISION_DIR, lambda p: build_tiny_blip2_vision(p, hidden_size=VISION_HIDDEN, full=True)),
        # the official release's layout: {"model": mm_projector.*, "optimizer", "config", "epoch"}
        ("clip_aligner", "thinkdiff", CLIP_ALIGNER_FILE,
         lambda p: torch.save({"model": build_tiny_aligner(VISION_HIDDEN, seed=2).state_dict(), "optimizer": None,
                               "config": {"vision_downsample_factor": 2}, "epoch": 4}, p)),
        ("t5xxl", "text_encoders", T5_FILE, build_t5xxl),
    ]
    layouts = {"flux": flux_layout, "vae": taef1_layout, "t5xxl": t5_layout}   # the files whose format is ComfyUI's
    for what, sub, name, fn in steps:
        path, build = want(sub, name)
        if build:
            t = time.time()
            src = os.path.join(reuse_from, sub, name) if reuse_from else None
            if src and os.path.exists(src) and (what not in layouts or file_layout(src) == layouts[what]()):
                if os.path.lexists(path):
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
                _link_or_copy(src, path)
                log(f"[demo-models] linked {path} to {src} (same layout)")
            else:
                fn(path)
                log(f"[demo-models] wrote {path} ({time.time() - t:.1f} s)")
        out[what] = path
    return out


def build_in_subprocess(models_dir: str, comfyui_dir: str | None = None, force: bool = False,
                        quiet: bool = False, reuse_from: str | None = None) -> dict:
    """:func:`build_demo_models` in a child process where ComfyUI imports (devtools.with_comfy).
    Its progress lines go to this process's stderr. Returns {what: path}."""
    comfyui_dir = os.path.abspath(comfyui_dir or paths.comfyui_dir())
    args = [os.path.abspath(models_dir), "--comfyui", comfyui_dir, "--json", *(["--force"] if force else []),
            *(["--reuse-from", os.path.abspath(reuse_from)] if reuse_from else [])]
    r = with_comfy.run_module("devtools.demo_models", args, comfyui_dir, stdout=subprocess.PIPE, text=True,
                              **({"stderr": subprocess.DEVNULL} if quiet else {}))
    return json.loads(r.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models_dir", help="ComfyUI models folder to fill (e.g. ComfyUI/models)")
    ap.add_argument("--comfyui", default=None, help="ComfyUI folder (default: $COMFYUI_DIR or .comfyui)")
    ap.add_argument("--force", action="store_true", help="rebuild files that already exist")
    ap.add_argument("--json", action="store_true", help="print the paths as JSON")
    ap.add_argument("--reuse-from", default=None, metavar="MODELS_DIR",
                    help="link files from another models folder where they have the same layout")
    a = ap.parse_args(argv)
    if not with_comfy.importable() and not with_comfy.in_child():
        # re-start in a process where ComfyUI's packages import (the import path is never edited)
        made = build_in_subprocess(a.models_dir, a.comfyui, a.force, reuse_from=a.reuse_from)
    else:
        made = build_demo_models(a.models_dir, a.comfyui, a.force, log=lambda m: print(m, file=sys.stderr),
                                 reuse_from=a.reuse_from)
    print(json.dumps(made, indent=2) if a.json else "\n".join(made.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
