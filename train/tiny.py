"""tiny-models: everything a CPU-only quick start needs, built locally in seconds.

OUTDIR/qwen2vl  a random tiny Qwen2-VL (hidden 64) with the real Qwen2-VL tokenizer
OUTDIR/t5       a random tiny Flan-T5 layout (d_model 64) with the real T5 tokenizer
OUTDIR/blip2    a random tiny BLIP-2 (vision width 32, 224 px) for precompute --variant clip
OUTDIR/images   real photos (scikit-image sample data, CC0 / public domain) with one-line captions

The tokenizers come from ComfyUI (comfy/text_encoders/*): --comfyui, else $COMFYUI_DIR, else ./.comfyui
(relative to the current directory, where scripts/bootstrap.sh installs it in a checkout).
Random weights mean gibberish generations: the point is to exercise every step for real.
"""
from __future__ import annotations

import argparse
import os

from thinkdiff_core.tiny import build_tiny_blip2_vision, build_tiny_qwen2vl, build_tiny_t5, find_tokenizer

# scikit-image sample photos and captions written for them
PHOTOS = {
    "astronaut.png": "An astronaut in a white spacesuit poses in front of an American flag.",
    "chelsea.png": "A tabby cat looks to the side on a wooden floor.",
    "coffee.png": "A cup of coffee on a saucer with a spoon, seen from above.",
    "rocket.jpg": "A rocket stands on the launch pad against a blue sky.",
    "motorcycle_left.png": "A red motorcycle parked in a garage.",
    "horse.png": "The black silhouette of a horse on a white background.",
    "camera.png": "A black and white photo of a man with a camera on a tripod.",
    "coins.png": "Old coins laid out in rows on a dark background.",
    "moon.png": "A grey close-up of the surface of the moon with craters.",
    "hubble_deep_field.jpg": "Hundreds of galaxies in the Hubble deep field.",
    "retina.jpg": "A medical image of a human retina with blood vessels.",
    "page.png": "A scanned page of printed text.",
}


def default_comfyui(given: str | None = None) -> str:
    """The ComfyUI folder to take tokenizers from: `given`, else $COMFYUI_DIR, else ./.comfyui."""
    return given or os.environ.get("COMFYUI_DIR") or os.path.abspath(".comfyui")


def write_images(dst: str, size: int = 0, names=None) -> list[str]:
    """Copy scikit-image sample photos (optionally resized to size x size) with .txt captions."""
    import skimage
    from PIL import Image
    src = os.path.join(os.path.dirname(skimage.__file__), "data")
    os.makedirs(dst, exist_ok=True)
    out = []
    for name in names or PHOTOS:
        stem = os.path.splitext(name)[0]
        img = Image.open(os.path.join(src, name)).convert("RGB")
        if size:
            img = img.resize((size, size), Image.BICUBIC)
        img.save(os.path.join(dst, stem + ".png"))
        with open(os.path.join(dst, stem + ".txt"), "w") as fh:
            fh.write(PHOTOS[name] + "\n")
        out.append(os.path.join(dst, stem + ".png"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train tiny-models", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outdir")
    p.add_argument("--comfyui", default=None,
                   help="ComfyUI folder with comfy/text_encoders (default: $COMFYUI_DIR, else ./.comfyui)")
    p.add_argument("--image-size", type=int, default=128, help="resize the photos to this square size (0 = keep)")
    p.add_argument("--vlm-hidden", type=int, default=64)
    p.add_argument("--t5-dim", type=int, default=64)
    args = p.parse_args(argv)
    comfyui = default_comfyui(args.comfyui)
    try:
        qtok, ttok = find_tokenizer("qwen25_tokenizer", comfyui), find_tokenizer("t5_tokenizer", comfyui)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}")
    print("built", build_tiny_qwen2vl(os.path.join(args.outdir, "qwen2vl"), qtok, hidden_size=args.vlm_hidden))
    print("built", build_tiny_t5(os.path.join(args.outdir, "t5"), ttok, d_model=args.t5_dim))
    print("built", build_tiny_blip2_vision(os.path.join(args.outdir, "blip2"), full=True))
    imgs = write_images(os.path.join(args.outdir, "images"), args.image_size)
    print(f"wrote {len(imgs)} photos with captions to {os.path.join(args.outdir, 'images')}")
    return 0
