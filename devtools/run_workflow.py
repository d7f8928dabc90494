"""Run one of the pack's UI workflows headless on a real ComfyUI and collect the image and VLM text.

    python -m devtools.run_workflow workflows/thinkdiff_in_context_reasoning.json out/ \
        [--comfyui .comfyui] [--models DIR | --demo-models] [--url http://127.0.0.1:8188] \
        [--steps 4 --width 256 --height 256 --seed 1] [--converter auto|browser|python]

It installs the pack into <ComfyUI>/custom_nodes (a symlink), starts ComfyUI (--cpu unless --gpu)
or reuses a running one (--url), converts the workflow to an API prompt with the real frontend in
headless Chromium (or, without Chromium, the pure-Python converter), queues it, waits, and copies the
saved image(s) and the VLM's text (<name>.txt) into the output folder.

Run it from the repository root. --demo-models builds random-weight stand-ins for all models
(devtools.demo_models, in a child process where ComfyUI imports) under <base>/models and points the
loaders at them: the pipeline runs end to end, the image is noise. --width/--height set the image
size where the workflow keeps it (the Int nodes that feed both the latent and ModelSamplingFlux).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import sys
import tempfile
import time

from devtools import comfy_client, comfy_server, paths, ui_to_api
from devtools.demo_models import DEMO_CLASSES, build_in_subprocess as build_demo_models, demo_name

SAMPLER_STEP_NODES = {"KSampler": "steps", "KSamplerAdvanced": "steps", "BasicScheduler": "steps"}
# nodes whose width/height is the image size; where an input is linked (to the shared Int nodes),
# the override goes to the node it comes from
SIZE_NODES = ("EmptySD3LatentImage", "EmptyLatentImage", "ModelSamplingFlux")
SIZE_SOURCES = {"PrimitiveInt": "value", "PrimitiveFloat": "value"}


def convert(workflow: dict, url: str, converter: str = "auto", frontend=None) -> tuple[dict, str]:
    """UI workflow -> (API prompt, converter used)."""
    if converter in ("auto", "browser"):
        ok, why = ui_to_api.browser_available()
        if ok:
            if frontend is not None:
                return frontend.to_api(workflow), "browser"
            with ui_to_api.BrowserFrontend(url) as fe:
                return fe.to_api(workflow), "browser"
        if converter == "browser":
            raise RuntimeError(f"the real-frontend converter is not available: {why}")
        print(f"[run_workflow] {why}; using the pure-Python converter", file=sys.stderr)
    return ui_to_api.python_convert(workflow, comfy_client.ComfyClient(url).object_info()), "python"


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def resolve(prompt: dict, value):
    """The literal an API-prompt input has: follows links through PrimitiveInt-style value nodes.
    Returns (value, [ids of the nodes it passed through]); a link to any other node stays a link."""
    seen = []
    while is_link(value) and value[0] in prompt and prompt[value[0]]["class_type"] in SIZE_SOURCES:
        node = prompt[value[0]]
        seen.append(value[0])
        value = node["inputs"][SIZE_SOURCES[node["class_type"]]]
    return value, seen


def _set_size(prompt: dict, node: dict, name: str, value: int) -> None:
    v = node["inputs"].get(name)
    if is_link(v):
        _, through = resolve(prompt, v)
        if not through:
            raise ValueError(f"{node['class_type']}.{name} comes from a {prompt[v[0]]['class_type']} node; "
                             f"cannot override it")
        src = prompt[through[-1]]
        src["inputs"][SIZE_SOURCES[src["class_type"]]] = value
    else:
        node["inputs"][name] = value


def apply_overrides(prompt: dict, *, steps: int | None = None, width: int | None = None,
                    height: int | None = None, seed: int | None = None, demo_models: bool = False,
                    inputs: dict | None = None, images: list[str] | None = None, text: str | None = None) -> dict:
    """A copy of the prompt with sampler steps, image size, VLM seed and text, demo model names (and the
    demo-only loader classes, devtools/demo_nodes), input images and any {class_type: {input: value}}
    overrides applied. The size goes where the workflow keeps it: into
    the Int nodes feeding the latent and ModelSamplingFlux (or into their own inputs when unlinked)."""
    p = copy.deepcopy(prompt)
    for node in p.values():
        ct, ins = node["class_type"], node["inputs"]
        if steps is not None and ct in SAMPLER_STEP_NODES:
            ins[SAMPLER_STEP_NODES[ct]] = steps
        if ct in SIZE_NODES:
            for name, value in (("width", width), ("height", height)):
                if value is not None:
                    _set_size(p, node, name, value)
        if seed is not None and ct == "ThinkDiffVLMEncode":
            ins["seed"] = seed
        if text is not None and ct == "ThinkDiffVLMEncode":
            ins["text"] = text
        if demo_models:
            for name in list(ins):
                value = demo_name(ct, name, ins[name])
                if value is not None:
                    ins[name] = value
            if ct in DEMO_CLASSES:        # a stock loader too heavy for the demo files (DualCLIPLoader's T5)
                node["class_type"] = ct = DEMO_CLASSES[ct]
        for name, value in (inputs or {}).get(ct, {}).items():
            ins[name] = value
    return set_images(p, images) if images else p


_IMAGE_INPUT = re.compile(r"^(?:images\.)?image_([0-9]+)$")


def set_images(prompt: dict, names: list[str]) -> dict:
    """Feed these input-folder images, in order, to the workflow's VLM Encode Multimodal node: the
    LoadImage nodes wired to it are replaced by one per name (the image_k inputs are renamed to this
    ComfyUI's form by the pack's prompt migration)."""
    enc_id = next((k for k, n in prompt.items() if n["class_type"] == "ThinkDiffVLMEncode"), None)
    if enc_id is None:
        raise ValueError("the workflow has no VLM Encode Multimodal node to give the images to")
    ins = prompt[enc_id]["inputs"]
    old = {k: v for k, v in ins.items() if _IMAGE_INPUT.match(k)}
    template = {"image": "", "upload": "image"}
    for k, v in old.items():
        del ins[k]
        if is_link(v) and prompt.get(v[0], {}).get("class_type") == "LoadImage":
            template = copy.deepcopy(prompt.pop(v[0])["inputs"])
    for i, name in enumerate(names, 1):
        node_id = f"thinkdiff_input_{i}"
        prompt[node_id] = {"class_type": "LoadImage", "inputs": {**template, "image": name}}
        ins[f"image_{i}"] = [node_id, 0]
    return prompt


def collect(entry: dict, client: comfy_client.ComfyClient, out_dir: str, name: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for i, img in enumerate(comfy_client.output_images(entry)):
        dst = os.path.join(out_dir, f"{name}{'' if i == 0 else f'_{i}'}.png")
        with open(dst, "wb") as f:
            f.write(client.image(img))
        written.append(dst)
    texts = comfy_client.output_texts(entry)
    if texts:
        dst = os.path.join(out_dir, f"{name}.txt")
        with open(dst, "w") as f:
            f.write(texts[0] + "\n")
        written.append(dst)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("workflow", help="UI-format workflow JSON (e.g. workflows/thinkdiff_image_text.json)")
    ap.add_argument("out_dir", help="folder for the image(s) and the VLM text")
    ap.add_argument("--comfyui", default=paths.comfyui_dir(), help="ComfyUI folder (default %(default)s)")
    ap.add_argument("--url", help="use this running ComfyUI (the pack must be installed in it) instead of starting one")
    ap.add_argument("--base-dir", help="ComfyUI --base-directory for a started server (models/, input/, output/); "
                                       "default: the ComfyUI folder itself, or a temp folder with --demo-models")
    ap.add_argument("--models", help="a models folder to use (symlinked as <base-dir>/models)")
    ap.add_argument("--demo-models", action="store_true", help="build and use random-weight demo models")
    ap.add_argument("--steps", type=int, help="override the sampler steps")
    ap.add_argument("--width", type=int, help="override the image width (latent and ModelSamplingFlux)")
    ap.add_argument("--height", type=int, help="override the image height (latent and ModelSamplingFlux)")
    ap.add_argument("--seed", type=int, help="override the VLM seed")
    ap.add_argument("--images", nargs="+", metavar="IMAGE",
                    help="your images, in order, instead of the workflow's (copied into ComfyUI's input folder)")
    ap.add_argument("--text", help="the text of the VLM Encode Multimodal node (e.g. 'red, blue, green')")
    ap.add_argument("--converter", choices=["auto", "browser", "python"], default="auto")
    ap.add_argument("--gpu", action="store_true", help="start ComfyUI without --cpu")
    ap.add_argument("--timeout", type=float, default=3600)
    a = ap.parse_args(argv)
    missing = [i for i in a.images or () if not os.path.isfile(i)]
    if missing:
        ap.error(f"--images: no such file: {', '.join(missing)}")

    with open(a.workflow) as f:
        workflow = json.load(f)
    name = os.path.splitext(os.path.basename(a.workflow))[0]
    server = None
    tmp = None
    try:
        if a.url:
            client = comfy_client.ComfyClient(a.url)
        else:
            base = a.base_dir or (tempfile.mkdtemp(prefix="thinkdiff-demo-") if a.demo_models and not a.models
                                  else a.comfyui)
            tmp = base if base != a.comfyui and not a.base_dir else None
            os.makedirs(base, exist_ok=True)
            if a.models:
                link = os.path.join(base, "models")
                if not os.path.exists(link):
                    os.symlink(os.path.abspath(a.models), link)
            if a.demo_models:
                build_demo_models(os.path.join(base, "models"), a.comfyui)
                comfy_server.install_demo_nodes(base)
            comfy_server.install_pack(base)
            comfy_server.copy_example_inputs(base)
            for src in a.images or ():
                shutil.copy2(src, os.path.join(base, "input", os.path.basename(src)))
            server = comfy_server.ComfyServer(base, comfy_dir=a.comfyui, cpu=not a.gpu)
            print(f"[run_workflow] starting ComfyUI on {server.url} (log: {server.log_path})", file=sys.stderr)
            server.start()
            client = server.client()
        prompt, used = convert(workflow, client.url, a.converter)
        prompt = apply_overrides(prompt, steps=a.steps, width=a.width, height=a.height, seed=a.seed,
                                 demo_models=a.demo_models, text=a.text,
                                 images=[os.path.basename(i) for i in a.images] if a.images else None)
        print(f"[run_workflow] converted with the {used} converter; queueing", file=sys.stderr)
        t = time.time()
        entry = client.run(prompt, workflow, timeout=a.timeout)
        err = comfy_client.execution_error(entry)
        if err:
            print(f"[run_workflow] execution error in node {err.get('node_id')} ({err.get('node_type')}): "
                  f"{err.get('exception_message')}", file=sys.stderr)
            return 1
        files = collect(entry, client, a.out_dir, name)
        print(f"[run_workflow] done in {time.time() - t:.1f} s: {', '.join(files)}", file=sys.stderr)
        print(os.path.abspath(a.out_dir))
        return 0
    except comfy_client.PromptRejected as e:
        print(f"[run_workflow] ComfyUI rejected the prompt:\n{e}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
        if tmp and os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
