"""Run one of the pack's UI workflows headless on a real ComfyUI and collect the image and VLM text.

    python scripts/run_workflow.py workflows/thinkdiff_in_context_reasoning.json out/ \
        [--comfyui .comfyui] [--models DIR | --demo-models] [--url http://127.0.0.1:8188] \
        [--steps 4 --width 256 --height 256 --seed 1] [--converter auto|browser|python]

It installs the pack into <ComfyUI>/custom_nodes (a symlink), starts ComfyUI (--cpu unless --gpu)
or reuses a running one (--url), converts the workflow to an API prompt with the real frontend in
headless Chromium (or, without Chromium, the pure-Python converter), queues it, waits, and copies the
saved image(s) and the VLM's text (<name>.txt) into the output folder.

--demo-models builds random-weight stand-ins for all models (scripts/demo_models.py) under
<base>/models and points the loaders at them: the pipeline runs end to end, the image is noise.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import comfy_server  # noqa: E402
import ui_to_api  # noqa: E402

SAMPLER_STEP_NODES = {"KSampler": "steps", "KSamplerAdvanced": "steps", "BasicScheduler": "steps"}
LATENT_NODES = ("EmptySD3LatentImage", "EmptyLatentImage")


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
    with urllib.request.urlopen(url + "/object_info", timeout=60) as r:
        object_info = json.loads(r.read())
    return ui_to_api.python_convert(workflow, object_info), "python"


def apply_overrides(prompt: dict, *, steps: int | None = None, width: int | None = None,
                    height: int | None = None, seed: int | None = None, demo_models: bool = False,
                    inputs: dict | None = None) -> dict:
    """A copy of the prompt with sampler steps, latent size, VLM seed, demo model names and any
    {class_type: {input: value}} overrides applied."""
    from demo_models import DEMO_NAMES
    p = copy.deepcopy(prompt)
    for node in p.values():
        ct, ins = node["class_type"], node["inputs"]
        if steps is not None and ct in SAMPLER_STEP_NODES:
            ins[SAMPLER_STEP_NODES[ct]] = steps
        if ct in LATENT_NODES:
            if width is not None:
                ins["width"] = width
            if height is not None:
                ins["height"] = height
        if seed is not None and ct == "ThinkDiffVLMEncode":
            ins["seed"] = seed
        if demo_models:
            for (cls, name), value in DEMO_NAMES.items():
                if ct == cls and name in ins:
                    ins[name] = value
        for name, value in (inputs or {}).get(ct, {}).items():
            ins[name] = value
    return p


def fetch_image(url: str, img: dict) -> bytes:
    q = urllib.parse.urlencode({"filename": img["filename"], "subfolder": img.get("subfolder", ""),
                                "type": img.get("type", "output")})
    with urllib.request.urlopen(f"{url}/view?{q}", timeout=60) as r:
        return r.read()


def collect(entry: dict, url: str, out_dir: str, name: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for i, img in enumerate(comfy_server.output_images(entry)):
        dst = os.path.join(out_dir, f"{name}{'' if i == 0 else f'_{i}'}.png")
        with open(dst, "wb") as f:
            f.write(fetch_image(url, img))
        written.append(dst)
    texts = comfy_server.output_texts(entry)
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
    ap.add_argument("--comfyui", default=comfy_server.comfyui_dir(), help="ComfyUI folder (default %(default)s)")
    ap.add_argument("--url", help="use this running ComfyUI (the pack must be installed in it) instead of starting one")
    ap.add_argument("--base-dir", help="ComfyUI --base-directory for a started server (models/, input/, output/); "
                                       "default: the ComfyUI folder itself, or a temp folder with --demo-models")
    ap.add_argument("--models", help="a models folder to use (symlinked as <base-dir>/models)")
    ap.add_argument("--demo-models", action="store_true", help="build and use random-weight demo models")
    ap.add_argument("--steps", type=int, help="override the sampler steps")
    ap.add_argument("--width", type=int, help="override the latent width")
    ap.add_argument("--height", type=int, help="override the latent height")
    ap.add_argument("--seed", type=int, help="override the VLM seed")
    ap.add_argument("--converter", choices=["auto", "browser", "python"], default="auto")
    ap.add_argument("--gpu", action="store_true", help="start ComfyUI without --cpu")
    ap.add_argument("--timeout", type=float, default=3600)
    a = ap.parse_args(argv)

    with open(a.workflow) as f:
        workflow = json.load(f)
    name = os.path.splitext(os.path.basename(a.workflow))[0]
    server = None
    tmp = None
    try:
        if a.url:
            url = a.url.rstrip("/")
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
                import demo_models
                demo_models.build_demo_models(os.path.join(base, "models"), a.comfyui,
                                              log=lambda m: print(m, file=sys.stderr))
            comfy_server.install_pack(base)
            comfy_server.copy_example_inputs(base)
            server = comfy_server.ComfyServer(base, comfy_dir=a.comfyui, cpu=not a.gpu)
            print(f"[run_workflow] starting ComfyUI on {server.url} (log: {server.log_path})", file=sys.stderr)
            server.start()
            url = server.url
        prompt, used = convert(workflow, url, a.converter)
        prompt = apply_overrides(prompt, steps=a.steps, width=a.width, height=a.height, seed=a.seed,
                                 demo_models=a.demo_models)
        print(f"[run_workflow] converted with the {used} converter; queueing", file=sys.stderr)
        client = server or comfy_server.ComfyServer.__new__(comfy_server.ComfyServer)
        if server is None:
            client.url, client.proc = url, None
        t = time.time()
        entry = client.run(prompt, workflow, timeout=a.timeout)
        err = comfy_server.execution_error(entry)
        if err:
            print(f"[run_workflow] execution error in node {err.get('node_id')} ({err.get('node_type')}): "
                  f"{err.get('exception_message')}", file=sys.stderr)
            return 1
        files = collect(entry, url, a.out_dir, name)
        print(f"[run_workflow] done in {time.time() - t:.1f} s: {', '.join(files)}", file=sys.stderr)
        print(os.path.abspath(a.out_dir))
        return 0
    except comfy_server.PromptRejected as e:
        print(f"[run_workflow] ComfyUI rejected the prompt:\n{e}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()
        if tmp and os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
