"""Writes the small input images the example workflows load (example_inputs/*.jpg).

All come from scikit-image's bundled sample data (public domain / CC0, see skimage/data/README.txt):
coffee.png (a cup of coffee, Rachel Michetti), chelsea.png (Chelsea the cat, Stefan van der Walt),
rocket.jpg (a SpaceX Falcon 9 launch, public domain). The red/blue cups are hue-rotated copies of
coffee.png for the in-context color task. The ThinkDiff-mini inputs are two easy-vqa test images (MIT),
copied as they are: a red and a blue circle (MINI_INPUTS). Re-running gives the same files.

    python -m devtools.make_example_inputs
"""
import os

import numpy as np
from PIL import Image
from skimage import color, data

from devtools.paths import EXAMPLE_INPUTS as OUT

# ThinkDiff-mini's quick start: file name -> (colour, shape) of the first easy-vqa test image of that kind
MINI_INPUTS = {"thinkdiff_mini_red_circle.png": ("red", "circle"),
               "thinkdiff_mini_blue_circle.png": ("blue", "circle")}


def save(arr: np.ndarray, name: str, size: int = 192) -> None:
    im = Image.fromarray(arr)
    im.thumbnail((size, size), Image.LANCZOS)
    im.convert("RGB").save(os.path.join(OUT, name), quality=85, optimize=True)


def hue_shift(rgb: np.ndarray, target_hue: float) -> np.ndarray:
    """Recolor the saturated (cup/saucer-colored) pixels to target_hue (0..1)."""
    hsv = color.rgb2hsv(rgb)
    hsv[..., 0] = target_hue
    hsv[..., 1] = np.clip(hsv[..., 1] * 1.6, 0, 1)
    return (color.hsv2rgb(hsv) * 255).round().astype(np.uint8)


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    coffee = data.coffee()
    save(hue_shift(coffee, 0.0), "thinkdiff_cup_red.jpg")
    save(hue_shift(coffee, 0.62), "thinkdiff_cup_blue.jpg")
    save(data.chelsea(), "thinkdiff_cat.jpg")
    save(data.rocket(), "thinkdiff_rocket.jpg")
    from train.mini import data as mini_data
    items = mini_data.load("test")
    for name, key in MINI_INPUTS.items():
        src = next(it.path for it in items if (it.colour, it.shape) == key)
        with open(src, "rb") as fi, open(os.path.join(OUT, name), "wb") as fo:
            fo.write(fi.read())
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)), "bytes")


if __name__ == "__main__":
    main()
