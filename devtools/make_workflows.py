"""Regenerates workflows/*.json (UI format) with the real ComfyUI frontend.

The graphs are described below as node specs; the frontend creates the nodes, sets the widgets,
connects the links and serializes the graph exactly as ComfyUI's Save does. Needs a server with
the pack installed: --url of a running one, or one is started on a temporary base directory.

    python -m devtools.make_workflows [--url http://127.0.0.1:8188] [--screenshot docs/reasoning_workflow.png]

Every graph samples FLUX.1-dev as the official diffusers FluxPipeline does: ModelSamplingFlux (max_shift
1.15, base_shift 0.5) shifts the noise schedule for the image size, and one pair of Int nodes
("width", "height") feeds both the latent and ModelSamplingFlux, as in ComfyUI's own FLUX templates.

Registry metadata, as in ComfyUI's own templates: our nodes carry properties.cnr_id / ver = [project].name /
version of pyproject.toml (the pack's registry id, which "install missing nodes" looks up), and the stock
loaders carry properties.models = [{name, url, directory}] from thinkdiff_core.release.FLUX_DOWNLOADS (the
frontend's missing-models dialog offers those downloads).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import tomllib
import uuid

from devtools import comfy_server, paths
from devtools.ui_to_api import BrowserFrontend
from thinkdiff_core import release
from train.mini import evaluate as mini_eval

OUT = paths.WORKFLOWS
WIDTH = HEIGHT = 512
STEPS = 28
# FluxPipeline's schedule shift (diffusers' calculate_shift): mu goes from base_shift at 256 image
# tokens to max_shift at 4096, linear in the token count (W/16)*(H/16)
MAX_SHIFT, BASE_SHIFT = 1.15, 0.5
FLUX = release.FLUX_FILES
NOTE = """ThinkDiff + FLUX.1-dev ({{title}})

Files (ComfyUI/models/...):
- {vlm_folder}/{vlm}/  (the whole Hugging Face folder: config.json, *.safetensors, tokenizer and preprocessor files)
- {aligner_folder}/{aligner}  (ThinkDiff LVLM aligner; .safetensors converted with `python -m thinkdiff_core convert` also works)
- diffusion_models/{unet}
- text_encoders/{clip}  (or clip/; only its pooled output of the empty prompt is used; no T5 needed)
- vae/{vae}
Input images: copy example_inputs/*.jpg of the pack into ComfyUI/input/.

{{how}}
Sampling: FLUX-dev distilled guidance 3.5 in the ThinkDiff Conditioning node, cfg 1 in the sampler
(negative = ConditioningZeroOut), {steps} steps. Image size: the "width" and "height" Int nodes feed
both the latent and ModelSamplingFlux, which shifts the noise schedule for that size as the official
FluxPipeline does (max_shift {max_shift}, base_shift {base_shift}). The VLM's text is shown in the Preview node.""".format(
    vlm_folder=release.VLM_FOLDER, vlm=release.VLM_NAME, aligner_folder=release.ALIGNER_FOLDER,
    aligner=release.ALIGNER_LVLM_FILE, unet=FLUX["diffusion_models"], clip=FLUX["clip"], vae=FLUX["vae"],
    steps=STEPS, max_shift=MAX_SHIFT, base_shift=BASE_SHIFT)



NOTE_CLIP = """ThinkDiff-CLIP + FLUX.1-dev ({{title}})

No VLM: BLIP-2's vision tower turns each image into 65 tokens, the ThinkDiff-CLIP aligner maps them into
FLUX's T5 space, and FLUX reads [tokens of image 1 ; image 2 ; ... ; FLUX's own T5 encoding of the text].
Files (ComfyUI/models/...):
- {vision_folder}/{vision}/  (the Hugging Face folder {vision_repo}: config.json, preprocessor_config.json,
  *.safetensors; only its vision tower is read)
- {aligner_folder}/{aligner}  (ThinkDiff-CLIP aligner; .safetensors converted with `python -m thinkdiff_core convert` also works)
- diffusion_models/{unet}
- text_encoders/{clip} and text_encoders/{t5}  (DualCLIPLoader, type flux: CLIPTextEncodeFlux encodes the text)
- vae/{vae}
Input images: copy example_inputs/*.jpg of the pack into ComfyUI/input/.

{{how}}
Sampling: FLUX-dev distilled guidance 3.5 in the ThinkDiff Conditioning node (it overrides the text
node's), cfg 1 in the sampler (negative = ConditioningZeroOut), {steps} steps; the first 128 T5 tokens of
the text are kept, as in the paper (clip_text_tokens). The "width" and "height" Int nodes feed both the
latent and ModelSamplingFlux (max_shift {max_shift}, base_shift {base_shift}).""".format(
    vision_folder=release.CLIP_VISION_FOLDER, vision=release.CLIP_VISION_NAME, vision_repo=release.CLIP_VISION_REPO,
    aligner_folder=release.ALIGNER_FOLDER, aligner=release.ALIGNER_CLIP_FILE, unet=FLUX["diffusion_models"],
    clip=FLUX["clip"], t5=release.FLUX_T5_FILE, vae=FLUX["vae"], steps=STEPS, max_shift=MAX_SHIFT,
    base_shift=BASE_SHIFT)


def pack_id() -> tuple[str, str]:
    """([project].name, [project].version) of pyproject.toml: the registry id and version of the pack."""
    with open(os.path.join(paths.ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    return project["name"], project["version"]


CNR_ID, VERSION = pack_id()
PROPS = {"cnr_id": CNR_ID, "ver": VERSION}
OURS = {"color": "#335", "bgcolor": "#446", "properties": PROPS}


def models(*folders: str) -> dict:
    """properties of a stock loader: the file(s) it loads, where they are published, the folder they go to."""
    ds = [release.FLUX_DOWNLOADS[f] for f in folders]
    return {"properties": {"models": [{"name": d["name"], "url": d["url"], "directory": d["directory"]} for d in ds]}}


def loaders() -> list[dict]:
    return [
        {"key": "unet", "type": "UNETLoader", "pos": [20, 440],
         "widgets": {"unet_name": FLUX["diffusion_models"], "weight_dtype": "default"}, **models("diffusion_models")},
        {"key": "clip", "type": "CLIPLoader", "pos": [20, 580],
         "widgets": {"clip_name": FLUX["clip"], "type": "stable_diffusion"}, **models("clip")},
        {"key": "vae", "type": "VAELoader", "pos": [20, 740], "widgets": {"vae_name": FLUX["vae"]},
         **models("vae")},
        {"key": "vlm", "type": "ThinkDiffLoadVLM", "pos": [20, 20],
         "widgets": {"vlm_name": release.VLM_NAME, "dtype": "auto", "keep_loaded": True}, **OURS},
        {"key": "aligner", "type": "ThinkDiffLoadAligner", "pos": [20, 180],
         "widgets": {"aligner_name": release.ALIGNER_LVLM_FILE, "dtype": "fp32"}, **OURS},
    ]


def clip_loaders() -> list[dict]:
    """ThinkDiff-CLIP: FLUX, its two text encoders (CLIPTextEncodeFlux needs T5 and CLIP-L), the VAE, BLIP-2's
    vision tower and the CLIP aligner."""
    return [
        {"key": "unet", "type": "UNETLoader", "pos": [20, 440],
         "widgets": {"unet_name": FLUX["diffusion_models"], "weight_dtype": "default"}, **models("diffusion_models")},
        {"key": "clip", "type": "DualCLIPLoader", "pos": [20, 580],
         "widgets": {"clip_name1": FLUX["clip"], "clip_name2": release.FLUX_T5_FILE, "type": "flux"},
         **models("clip", "t5xxl")},
        {"key": "vae", "type": "VAELoader", "pos": [20, 760], "widgets": {"vae_name": FLUX["vae"]},
         **models("vae")},
        {"key": "vision", "type": "ThinkDiffLoadVisionEncoder", "pos": [20, 20],
         "widgets": {"vision_name": release.CLIP_VISION_NAME, "dtype": "auto", "keep_loaded": True}, **OURS},
        {"key": "aligner", "type": "ThinkDiffLoadAligner", "pos": [20, 200],
         "widgets": {"aligner_name": release.ALIGNER_CLIP_FILE, "dtype": "fp32"}, **OURS},
    ]


def images(names: list[str]) -> list[dict]:
    return [{"key": f"img{i + 1}", "type": "LoadImage", "pos": [360 + 250 * i, 20], "widgets": {"image": n}}
            for i, n in enumerate(names)]


def middle(n_images: int, preset: str, text: str, prefix: str) -> list[dict]:
    links = {"vlm": ["vlm", 0], **{f"image_{i + 1}": [f"img{i + 1}", 0] for i in range(n_images)}}
    return [
        {"key": "enc", "type": "ThinkDiffVLMEncode", "pos": [360, 400], "size": [400, 420],
         "widgets": {"preset": preset, "text": text, "max_new_tokens": 128, "seed": 0,
                     "control_after_generate": "fixed", "temperature": 0.6, "top_p": 0.9, "stop_at_eos": False},
         "links": links, **OURS},
        {"key": "show", "type": "PreviewAny", "pos": [800, 920], "size": [400, 200], "title": "VLM text",
         "links": {"source": ["enc", 1]}},
        {"key": "cond", "type": "ThinkDiffConditioning", "pos": [800, 280],
         "widgets": {"mode": "replace", "aligned_strength": 1.0, "text_strength": 1.0, "guidance": 3.5},
         "links": {"aligner": ["aligner", 0], "embeds": ["enc", 0], "clip": ["clip", 0]}, **OURS},
        # one source for the image size: the latent and ModelSamplingFlux read the same two Int nodes
        {"key": "width", "type": "PrimitiveInt", "pos": [800, 700], "title": "width",
         "widgets": {"value": WIDTH, "control_after_generate": "fixed"}},
        {"key": "height", "type": "PrimitiveInt", "pos": [800, 810], "title": "height",
         "widgets": {"value": HEIGHT, "control_after_generate": "fixed"}},
        {"key": "latent", "type": "EmptySD3LatentImage", "pos": [800, 560],
         "widgets": {"width": WIDTH, "height": HEIGHT, "batch_size": 1},
         "links": {"width": ["width", 0], "height": ["height", 0]}},
        {"key": "msf", "type": "ModelSamplingFlux", "pos": [1040, 560],
         "widgets": {"max_shift": MAX_SHIFT, "base_shift": BASE_SHIFT, "width": WIDTH, "height": HEIGHT},
         "links": {"model": ["unet", 0], "width": ["width", 0], "height": ["height", 0]}},
        {"key": "decode", "type": "VAEDecode", "pos": [1680, 280],
         "links": {"samples": ["sampler", 0], "vae": ["vae", 0]}},
        {"key": "save", "type": "SaveImage", "pos": [1680, 400], "size": [400, 440],
         "widgets": {"filename_prefix": f"ThinkDiff/{prefix}"}, "links": {"images": ["decode", 0]}},
    ]


def clip_middle(n_images: int, text: str, prefix: str) -> list[dict]:
    links = {"vision": ["vision", 0], **{f"image_{i + 1}": [f"img{i + 1}", 0] for i in range(n_images)}}
    return [
        {"key": "enc", "type": "ThinkDiffEncodeImages", "pos": [360, 400], "size": [320, 200], "links": links, **OURS},
        {"key": "text", "type": "CLIPTextEncodeFlux", "pos": [360, 640], "size": [400, 260],
         "widgets": {"clip_l": text, "t5xxl": text, "guidance": 3.5}, "links": {"clip": ["clip", 0]}},
        {"key": "cond", "type": "ThinkDiffConditioning", "pos": [800, 280],
         "widgets": {"mode": "replace", "aligned_strength": 1.0, "text_strength": 1.0, "guidance": 3.5,
                     "clip_text_tokens": 128},
         "links": {"aligner": ["aligner", 0], "embeds": ["enc", 0], "conditioning": ["text", 0]}, **OURS},
        *[n for n in middle(0, "custom", "", prefix) if n["key"] not in ("enc", "show", "cond")],
    ]


def ksampler() -> list[dict]:
    return [
        {"key": "neg", "type": "ConditioningZeroOut", "pos": [1300, 180], "links": {"conditioning": ["cond", 0]}},
        {"key": "sampler", "type": "KSampler", "pos": [1300, 280],
         "widgets": {"seed": 0, "control_after_generate": "fixed", "steps": STEPS, "cfg": 1.0,
                     "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0},
         "links": {"model": ["msf", 0], "positive": ["cond", 0], "negative": ["neg", 0],
                   "latent_image": ["latent", 0]}},
    ]


def custom_advanced() -> list[dict]:
    return [
        {"key": "guider", "type": "BasicGuider", "pos": [1300, 100],
         "links": {"model": ["msf", 0], "conditioning": ["cond", 0]}},
        {"key": "noise", "type": "RandomNoise", "pos": [1300, 200],
         "widgets": {"noise_seed": 0, "control_after_generate": "fixed"}},
        {"key": "ksel", "type": "KSamplerSelect", "pos": [1300, 330], "widgets": {"sampler_name": "euler"}},
        {"key": "sched", "type": "BasicScheduler", "pos": [1300, 420],
         "widgets": {"scheduler": "simple", "steps": STEPS, "denoise": 1.0}, "links": {"model": ["msf", 0]}},
        {"key": "sampler", "type": "SamplerCustomAdvanced", "pos": [1300, 580],
         "links": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["ksel", 0],
                   "sigmas": ["sched", 0], "latent_image": ["latent", 0]}},
    ]


WORKFLOWS = {
    "thinkdiff_in_context_reasoning": dict(
        title="in-context reasoning", images=["thinkdiff_cup_red.jpg", "thinkdiff_cup_blue.jpg"],
        preset="in_context", text="red, blue, green", sampler=ksampler,
        how="Preset in_context: the paper's reasoning prompt. Text = one word per image, then the query word\n"
            "(red + red cup, blue + blue cup, green -> the VLM reasons that a green cup comes next)."),
    "thinkdiff_image_text": dict(
        title="one image + text", images=["thinkdiff_cat.jpg"], preset="image_text",
        text="Create a detailed diffusion prompt for this cat as an astronaut floating in space, "
             "keep its fur colors.", sampler=ksampler,
        how="Preset image_text: the image, then your instruction; the VLM writes the prompt it reasons out."),
    "thinkdiff_two_images": dict(
        title="two images", images=["thinkdiff_cat.jpg", "thinkdiff_rocket.jpg"], preset="two_images", text="",
        sampler=custom_advanced,
        how="Preset two_images: the VLM describes one new picture combining the subject of image 1 with image 2.\n"
            "This graph samples with BasicGuider + SamplerCustomAdvanced (no negative needed)."),
    # ThinkDiff-CLIP (docs/method.md §4.2): the official README's three compositions
    "thinkdiff_clip_image_text": dict(
        variant="clip", title="ThinkDiff-CLIP: one image + text", images=["thinkdiff_cat.jpg"],
        text="a cat made of colorful paper, floating in space", sampler=ksampler,
        how="One image + text: the image's 65 tokens, then the text's T5 tokens (type the same text in both\n"
            "boxes of CLIPTextEncodeFlux)."),
    "thinkdiff_clip_two_images": dict(
        variant="clip", title="ThinkDiff-CLIP: two images", images=["thinkdiff_cat.jpg", "thinkdiff_rocket.jpg"],
        text="", sampler=ksampler,
        how="Two images, no text: 65 tokens per image in input order, then the T5 encoding of an empty text\n"
            "(as the official script). Connecting image_2 adds an image_3 slot."),
    "thinkdiff_clip_two_images_text": dict(
        variant="clip", title="ThinkDiff-CLIP: two images + text",
        images=["thinkdiff_cup_red.jpg", "thinkdiff_cup_blue.jpg"], text="two cups on a wooden table, watercolor",
        sampler=ksampler,
        how="Two images + text: [image 1 ; image 2 ; text]. The order of the images is kept."),
}


MINI = release.MINI_FILES
# the evaluation's settings (train/mini/evaluate.py), so that the workflow computes what RESULTS.md reports
MINI_STEPS, MINI_CFG, MINI_SIZE, MINI_VLM = mini_eval.STEPS, mini_eval.CFG, mini_eval.IMAGE_SIZE, mini_eval.VLM_SETTINGS
MINI_NOTE = f"""ThinkDiff-mini: the method at a scale a laptop CPU runs (in-context reasoning)

Tiny models trained on easy-vqa shapes by `python -m train mini build` and put in place by
`python -m train mini install --models ComfyUI/models` (the README's first command does both):
- {release.VLM_FOLDER}/{MINI[release.VLM_FOLDER]}/  (a tiny Qwen2-VL with the real Qwen tokenizer)
- {release.ALIGNER_FOLDER}/{MINI[release.ALIGNER_FOLDER]}  (trained only through a tiny flan-T5 *decoder*)
- diffusion_models/{MINI["diffusion_models"]}  (a tiny SD3-layout MMDiT trained only on the tiny T5 *encoder*)
- vae/{MINI["vae"]}  (TAESD layout)
Input images: example_inputs/thinkdiff_mini_*.png of the pack, copied into ComfyUI/input/.

Text = one word per image, then the query word: "red, blue, green" with a red and a blue circle asks for
a green circle; "circle, triangle, rectangle" with two shapes of one colour asks for a rectangle of it.
The VLM's answer is shown in the Preview node; the aligner maps its tokens into the T5 space the image
model reads. {MINI_STEPS} euler steps, cfg {MINI_CFG} against a zeroed conditioning, {MINI_SIZE}x{MINI_SIZE} pixels
(scaled x{256 // MINI_SIZE} for viewing). No CLIP is needed: the mini image model ignores the pooled vector."""


def mini_spec() -> list[dict]:
    """The mini graph: the stock SD3 loaders and sampler around the ThinkDiff nodes, wired as for real models."""
    return [
        {"key": "note", "type": "Note", "pos": [20, 700], "size": [760, 330], "widgets": {"text": MINI_NOTE}},
        {"key": "vlm", "type": "ThinkDiffLoadVLM", "pos": [20, 20],
         "widgets": {"vlm_name": MINI[release.VLM_FOLDER], "dtype": "auto", "keep_loaded": True}, **OURS},
        {"key": "aligner", "type": "ThinkDiffLoadAligner", "pos": [20, 180],
         "widgets": {"aligner_name": MINI[release.ALIGNER_FOLDER], "dtype": "fp32"}, **OURS},
        {"key": "unet", "type": "UNETLoader", "pos": [20, 440],
         "widgets": {"unet_name": MINI["diffusion_models"], "weight_dtype": "default"}},
        {"key": "vae", "type": "VAELoader", "pos": [20, 580], "widgets": {"vae_name": MINI["vae"]}},
        *images(["thinkdiff_mini_red_circle.png", "thinkdiff_mini_blue_circle.png"]),
        {"key": "enc", "type": "ThinkDiffVLMEncode", "pos": [360, 400], "size": [400, 420],
         "widgets": {"preset": "in_context", "text": "red, blue, green", "max_new_tokens": MINI_VLM["max_new_tokens"],
                     "seed": 0, "control_after_generate": "fixed", "temperature": MINI_VLM["temperature"],
                     "top_p": MINI_VLM["top_p"], "stop_at_eos": MINI_VLM["stop_at_eos"]},
         "links": {"vlm": ["vlm", 0], "image_1": ["img1", 0], "image_2": ["img2", 0]}, **OURS},
        {"key": "show", "type": "PreviewAny", "pos": [800, 700], "size": [400, 160], "title": "VLM text",
         "links": {"source": ["enc", 1]}},
        {"key": "cond", "type": "ThinkDiffConditioning", "pos": [800, 280],
         "widgets": {"mode": "replace", "aligned_strength": 1.0, "text_strength": 1.0, "guidance": 3.5},
         "links": {"aligner": ["aligner", 0], "embeds": ["enc", 0]}, **OURS},
        {"key": "latent", "type": "EmptySD3LatentImage", "pos": [800, 540],
         "widgets": {"width": MINI_SIZE, "height": MINI_SIZE, "batch_size": 1}},
        {"key": "neg", "type": "ConditioningZeroOut", "pos": [1100, 180], "links": {"conditioning": ["cond", 0]}},
        {"key": "sampler", "type": "KSampler", "pos": [1100, 280],
         "widgets": {"seed": 0, "control_after_generate": "fixed", "steps": MINI_STEPS, "cfg": MINI_CFG,
                     "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0},
         "links": {"model": ["unet", 0], "positive": ["cond", 0], "negative": ["neg", 0],
                   "latent_image": ["latent", 0]}},
        {"key": "decode", "type": "VAEDecode", "pos": [1420, 280],
         "links": {"samples": ["sampler", 0], "vae": ["vae", 0]}},
        {"key": "scale", "type": "ImageScaleBy", "pos": [1420, 380],
         "widgets": {"upscale_method": "nearest-exact", "scale_by": float(256 // MINI_SIZE)}, "links": {"image": ["decode", 0]}},
        {"key": "save", "type": "SaveImage", "pos": [1680, 280], "size": [300, 340],
         "widgets": {"filename_prefix": "ThinkDiff/thinkdiff_mini_in_context"}, "links": {"images": ["scale", 0]}},
    ]


def spec(name: str) -> list[dict]:
    if name in MINI_WORKFLOWS:
        nodes = MINI_WORKFLOWS[name]()
    else:
        w = WORKFLOWS[name]
        clip = w.get("variant") == "clip"
        note = {"key": "note", "type": "Note", "pos": [20, 900 if clip else 880], "size": [760, 360 if clip else 330],
                "widgets": {"text": (NOTE_CLIP if clip else NOTE).format(title=w["title"], how=w["how"])}}
        if clip:
            nodes = [note, *clip_loaders(), *images(w["images"]), *clip_middle(len(w["images"]), w["text"], name),
                     *w["sampler"]()]
        else:
            nodes = [note, *loaders(), *images(w["images"]), *middle(len(w["images"]), w["preset"], w["text"], name),
                     *w["sampler"]()]
    for n in nodes:   # margin for the frontend's side bar and tabs
        n["pos"] = [n["pos"][0] + 60, n["pos"][1] + 80]
    return nodes


MINI_WORKFLOWS = {"thinkdiff_mini_in_context": mini_spec}


def screenshot(url: str, path: str, name: str = "thinkdiff_in_context_reasoning") -> str:
    """PNG of a shipped workflow loaded in the real frontend (for the README)."""
    with open(os.path.join(OUT, name + ".json")) as f:
        wf = json.load(f)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with BrowserFrontend(url, width=1800, height=1150) as fe:
        return fe.screenshot(wf, path, scale=0.72, offset=(40, 120))


def generate(url: str, out_dir: str = OUT) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    with BrowserFrontend(url) as fe:
        for name in [*WORKFLOWS, *MINI_WORKFLOWS]:
            wf = fe.build(spec(name))
            wf["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, "thinkdiff/" + name))
            path = os.path.join(out_dir, name + ".json")
            with open(path, "w") as f:
                json.dump(wf, f, indent=2)
                f.write("\n")
            written.append(path)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running ComfyUI with the pack installed")
    ap.add_argument("--screenshot", help="also write a PNG of the reasoning workflow in the frontend")
    a = ap.parse_args()

    def work(url: str) -> list[str]:
        paths = generate(url)
        if a.screenshot:
            paths.append(screenshot(url, a.screenshot))
        return paths

    if a.url:
        paths = work(a.url)
    else:
        with tempfile.TemporaryDirectory() as base:
            comfy_server.install_pack(base)
            comfy_server.copy_example_inputs(base)   # the screenshot shows the input images
            with comfy_server.ComfyServer(base) as server:   # no models needed to build graphs
                paths = work(server.url)
    print("\n".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
