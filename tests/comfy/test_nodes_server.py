"""The ThinkDiff nodes in a real ComfyUI server, once per tested version (0.3.75, 0.33.0): registration,
the shipped workflows end to end, caching, progress, that the conditioning reaches FLUX,
API prompts saved with either form of the image inputs, and readable errors."""
from __future__ import annotations

import copy
import glob
import io
import json
import os
import re
import time

import numpy as np
import pytest
from PIL import Image

from devtools import comfy_client, comfy_server, paths, run_workflow, ui_to_api
from devtools.make_workflows import MINI_WORKFLOWS

ROOT = paths.ROOT
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

WORKFLOWS = sorted(glob.glob(os.path.join(paths.WORKFLOWS, "*.json")))
# run here on the random-weight demo FLUX: the ThinkDiff-LVLM graphs (the ThinkDiff-CLIP ones run in
# test_clip_nodes_server.py; ThinkDiff-mini's runs on its trained models in tests/mini)
FLUX_WORKFLOWS = [w for w in WORKFLOWS if os.path.splitext(os.path.basename(w))[0] not in MINI_WORKFLOWS
                  and not os.path.basename(w).startswith("thinkdiff_clip_")]
FAST = dict(steps=1, width=64, height=64, demo_models=True)
FAST_VLM = {"ThinkDiffVLMEncode": {"max_new_tokens": 8}}
NODES = {
    "ThinkDiffLoadAligner": ("Load ThinkDiff Aligner", {"aligner_name", "dtype"}),
    "ThinkDiffLoadVLM": ("Load ThinkDiff VLM", {"vlm_name", "dtype", "keep_loaded"}),
    "ThinkDiffVLMEncode": ("VLM Encode Multimodal",
                           {"vlm", "preset", "text", "max_new_tokens", "seed", "temperature", "top_p",
                            "stop_at_eos"}),    # + the image inputs: IMAGE_NAMES, or one Autogrow group
    "ThinkDiffConditioning": ("ThinkDiff Conditioning",
                              {"aligner", "embeds", "clip", "conditioning", "mode", "aligned_strength",
                               "text_strength", "guidance", "clip_text_tokens"}),
    "ThinkDiffLoadVisionEncoder": ("Load ThinkDiff-CLIP Vision Encoder", {"vision_name", "dtype", "keep_loaded"}),
    "ThinkDiffEncodeImages": ("Encode Images (ThinkDiff-CLIP)", {"vision"}),   # + the image inputs
}
IMAGE_NODES = {"ThinkDiffVLMEncode", "ThinkDiffEncodeImages"}


IMAGE_NAMES = [f"image_{i}" for i in range(1, 7)]
IMAGE_INPUT = re.compile(r"^(?:images\.)?image_\d+$")   # image_2 (0.3.75) or images.image_2 (Autogrow, 0.33.0)


def image_inputs(inputs: dict) -> list[str]:
    return [k for k in inputs if IMAGE_INPUT.match(k)]


def other_form(name: str) -> str:
    """An image input's name as the other ComfyUI form spells it (image_2 <-> images.image_2)."""
    return name.split(".", 1)[1] if name.startswith("images.") else f"images.{name}"


def load_workflow(name: str) -> dict:
    with open(os.path.join(paths.WORKFLOWS, name)) as f:
        return json.load(f)


def to_api(workflow, frontend, object_info) -> dict:
    if frontend is not None:
        return frontend.to_api(workflow)
    return ui_to_api.python_convert(workflow, object_info)


def prompt_for(name, frontend, object_info, inputs=None, **kw) -> dict:
    api = to_api(load_workflow(name), frontend, object_info)
    return run_workflow.apply_overrides(api, **{**FAST, **kw}, inputs={**FAST_VLM, **(inputs or {})})


def node_id(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def image_array(client, entry) -> np.ndarray:
    imgs = comfy_client.output_images(entry)
    assert imgs, f"no output image; status: {entry.get('status')}"
    return np.asarray(Image.open(io.BytesIO(client.image(imgs[0]))).convert("RGB"))


def run_ok(client, prompt) -> dict:
    entry = client.run(prompt, timeout=600)
    err = comfy_client.execution_error(entry)
    assert err is None, f"execution error: {err and err.get('exception_message')}\n{client.describe()}"
    assert entry["status"]["status_str"] == "success"
    return entry


def run_error(client, prompt) -> str:
    entry = client.run(prompt, timeout=600)
    err = comfy_client.execution_error(entry)
    assert err is not None, f"expected an execution error, got status {entry['status']}"
    return f"{err['node_type']} ({err['exception_type']}): {err['exception_message']}"


# --- registration ----------------------------------------------------------------------------------

def test_object_info_lists_the_four_nodes(object_info, comfy_features):
    images = {"images"} if comfy_features["autogrow"] else set(IMAGE_NAMES)
    for node_id_, (display, inputs) in NODES.items():
        assert node_id_ in object_info, f"{node_id_} not registered"
        info = object_info[node_id_]
        assert info["display_name"] == display
        assert info["category"] == "ThinkDiff"
        specs = {**info["input"]["required"], **info["input"].get("optional", {})}
        assert set(specs) == (inputs | images if node_id_ in IMAGE_NODES else inputs)
        for name, spec in specs.items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id_}.{name} has no tooltip"
    # the image inputs: optional, in reading order; one growing group where ComfyUI has io.Autogrow
    optional = object_info["ThinkDiffVLMEncode"]["input"]["optional"]
    if comfy_features["autogrow"]:
        kind, opts = optional["images"]
        assert kind == "COMFY_AUTOGROW_V3"
        assert opts["template"]["names"] == IMAGE_NAMES and opts["template"]["min"] == 0
        assert list(opts["template"]["input"]["required"].values())[0][0] == "IMAGE"
    else:
        assert [k for k in optional if k.startswith("image_")] == IMAGE_NAMES
        assert all(optional[k][0] == "IMAGE" for k in IMAGE_NAMES)
    enc = object_info["ThinkDiffVLMEncode"]["input"]["required"]
    assert enc["max_new_tokens"][1]["default"] == 128
    assert enc["temperature"][1]["default"] == pytest.approx(0.6)
    assert enc["top_p"][1]["default"] == pytest.approx(0.9)
    assert enc["stop_at_eos"][1]["default"] is False
    assert enc["preset"][1]["options"] == ["in_context", "image_text", "two_images", "custom"]
    assert object_info["ThinkDiffConditioning"]["input"]["required"]["guidance"][1]["default"] == 3.5
    vlm_dtypes = object_info["ThinkDiffLoadVLM"]["input"]["required"]["dtype"][1]["options"]
    assert vlm_dtypes[0] == "auto" and sorted(vlm_dtypes) == ["auto", "bf16", "fp16", "fp32"]
    assert object_info["ThinkDiffVLMEncode"]["output"] == ["THINKDIFF_EMBEDS", "STRING"]
    assert object_info["ThinkDiffConditioning"]["output"] == ["CONDITIONING"]
    # the demo model folders/files are listed
    assert "thinkdiff-demo-qwen2vl" in object_info["ThinkDiffLoadVLM"]["input"]["required"]["vlm_name"][1]["options"]
    assert "thinkdiff-demo-aligner.pth" in object_info["ThinkDiffLoadAligner"]["input"]["required"]["aligner_name"][1]["options"]


def test_workflows_are_served_as_templates(client):
    templates = client.get("/workflow_templates")
    assert sorted(templates.get(comfy_server.PACK_NAME, [])) == sorted(
        os.path.splitext(os.path.basename(w))[0] for w in WORKFLOWS)


# --- the shipped workflows ---------------------------------------------------------------------------

def test_at_least_three_workflows():
    assert len(WORKFLOWS) >= 3


@pytest.mark.parametrize("path", WORKFLOWS, ids=[os.path.basename(w) for w in WORKFLOWS])
def test_frontend_and_python_converters_agree(path, frontend, object_info):
    if frontend is None:
        msg = "Chromium + playwright are needed to check the conversion against the real frontend"
        if IN_CI:
            pytest.fail(msg + " (CI must install them: apt-get install chromium; pip install playwright)")
        pytest.skip(msg)
    wf = json.load(open(path))
    assert frontend.load_errors(wf) == [], "the frontend complains when loading the workflow"
    browser, python = frontend.to_api(wf), ui_to_api.python_convert(wf, object_info)
    for nid, node in browser.items():   # frontend-only widgets (e.g. PreviewAny's display) are not inputs
        known = {**object_info[node["class_type"]]["input"].get("required", {}),
                 **object_info[node["class_type"]]["input"].get("optional", {})}
        # (an Autogrow group's slots are "<group>.<slot>")
        node["inputs"] = {k: v for k, v in node["inputs"].items() if k in known or k.split(".")[0] in known}
        node.pop("_meta", None)
        python[nid].pop("_meta", None)
    assert browser == python


@pytest.mark.parametrize("path", FLUX_WORKFLOWS, ids=[os.path.basename(w) for w in FLUX_WORKFLOWS])
def test_workflow_runs_end_to_end(path, client, frontend, object_info):
    prompt = prompt_for(os.path.basename(path), frontend, object_info)
    assert {n["class_type"] for n in prompt.values()} >= {
        "ThinkDiffLoadAligner", "ThinkDiffLoadVLM", "ThinkDiffVLMEncode", "ThinkDiffConditioning",
        "UNETLoader", "CLIPLoader", "VAELoader", "LoadImage", "VAEDecode", "SaveImage"}
    t = time.time()
    entry = run_ok(client, prompt)
    print(f"\n{os.path.basename(path)}: {time.time() - t:.1f} s")
    img = image_array(client, entry)
    assert img.shape == (64, 64, 3) and img.std() > 0
    enc = node_id(prompt, "ThinkDiffVLMEncode")
    text = entry["outputs"][enc]["text"][0]
    assert isinstance(text, str) and text
    previews = [o["text"][0] for k, o in entry["outputs"].items() if prompt[k]["class_type"] == "PreviewAny"]
    assert previews == [text]


# --- caching -----------------------------------------------------------------------------------------

def test_requeue_does_not_run_the_vlm_again(client, frontend, object_info):
    prompt = prompt_for("thinkdiff_image_text.json", frontend, object_info, seed=4242)
    enc = node_id(prompt, "ThinkDiffVLMEncode")
    first = run_ok(client, prompt)
    second = run_ok(client, copy.deepcopy(prompt))
    cached = [set(d["nodes"]) for k, d in comfy_client.history_messages(second) if k == "execution_cached"]
    assert cached and enc in cached[0], f"the VLM node was not served from the cache: {cached}"
    show = node_id(prompt, "PreviewAny")   # an output node: its (cached) ui is in every history entry
    assert second["outputs"][show]["text"] == first["outputs"][show]["text"] == first["outputs"][enc]["text"]
    # and a changed seed does run it again
    third = run_ok(client, run_workflow.apply_overrides(prompt, seed=4243))
    cached3 = [set(d["nodes"]) for k, d in comfy_client.history_messages(third) if k == "execution_cached"]
    assert enc not in (cached3[0] if cached3 else set())


# --- progress ----------------------------------------------------------------------------------------

def test_progress_bar_advances_per_generated_token(client, frontend, object_info, comfy_features):
    """The UI's progress bar for VLM Encode Multimodal follows the generated tokens, as the frontend
    receives it over the /ws websocket: one update per token where ComfyUI sends every update (0.3.75);
    where it throttles them (0.33.0: at most one per 100 ms, the first and the last always) fewer, but
    starting at the first token, rising, and ending at n/n."""
    import asyncio
    import uuid

    import aiohttp
    prompt = run_workflow.apply_overrides(prompt_for("thinkdiff_image_text.json", frontend, object_info),
                                          seed=5151, inputs={"ThinkDiffVLMEncode": {"max_new_tokens": 12}})
    enc = node_id(prompt, "ThinkDiffVLMEncode")
    client_id = f"thinkdiff-test-{uuid.uuid4().hex[:8]}"

    async def collect() -> list[dict]:
        events = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{client.url}/ws?clientId={client_id}") as ws:
                async with session.post(f"{client.url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
                    prompt_id = (await r.json())["prompt_id"]
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    m = msg.json()
                    if m["type"] == "progress" and m["data"].get("node") == enc:
                        events.append(m["data"])
                    if (m["type"] == "executing" and m["data"].get("node") is None
                            and m["data"].get("prompt_id") == prompt_id) or m["type"] == "execution_error":
                        return events
        return events

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:   # its own event loop: playwright's sync API holds this thread's
        events = pool.submit(lambda: asyncio.run(asyncio.wait_for(collect(), timeout=600))).result()
    got = [(e["value"], e["max"]) for e in events]
    if comfy_features["progress_throttle_s"] is None:
        assert got == [(k, 12) for k in range(1, 13)], events
    else:
        assert got and got[0] == (1, 12) and got[-1] == (12, 12), events
        assert all(m == 12 for _, m in got), events
        assert all(a < b for (a, _), (b, _) in zip(got, got[1:])), f"the bar does not advance monotonically: {got}"


# --- the conditioning reaches FLUX -------------------------------------------------------------------

def test_vlm_output_changes_the_image(client, frontend, object_info):
    """Fails if the ThinkDiff conditioning were replaced by zeros (or did not depend on the VLM)."""
    base = prompt_for("thinkdiff_in_context_reasoning.json", frontend, object_info)
    a = image_array(client, run_ok(client, run_workflow.apply_overrides(base, seed=11)))
    b = image_array(client, run_ok(client, run_workflow.apply_overrides(base, seed=12)))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.5, "two different VLM generations gave the same image"
    # the same graph with the positive conditioning zeroed out (ConditioningZeroOut) differs too
    zeroed = copy.deepcopy(run_workflow.apply_overrides(base, seed=11))
    cond = node_id(zeroed, "ThinkDiffConditioning")
    zeroed["zero_pos"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": [cond, 0]}}
    zeroed[node_id(zeroed, "KSampler")]["inputs"]["positive"] = ["zero_pos", 0]
    z = image_array(client, run_ok(client, zeroed))
    assert np.abs(a.astype(int) - z.astype(int)).mean() > 0.5, "the ThinkDiff conditioning had no effect"


def test_clip_pooled_vector_reaches_flux(server, client, frontend, object_info):
    """With CLIP connected the pooled vector is CLIP-L's output of "" (the paper); without it, zeros
    and a warning in the log. The two must give different images."""
    with_clip = run_workflow.apply_overrides(prompt_for("thinkdiff_in_context_reasoning.json", frontend,
                                                        object_info), seed=21)
    without = copy.deepcopy(with_clip)
    del without[node_id(without, "ThinkDiffConditioning")]["inputs"]["clip"]
    a = image_array(client, run_ok(client, with_clip))
    b = image_array(client, run_ok(client, without))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 0.5, "the CLIP pooled vector had no effect"
    assert "no CLIP-L pooled vector given, using zeros" in server.log_tail(200)


# --- readable errors (the bad-input matrix is tests/comfy/test_bad_inputs.py) -------------------------

@pytest.fixture(scope="module")
def base_prompt(client, frontend, object_info):
    return prompt_for("thinkdiff_in_context_reasoning.json", frontend, object_info, seed=777)


def test_error_words_do_not_match_images(client, base_prompt):
    p = run_workflow.apply_overrides(base_prompt, inputs={"ThinkDiffVLMEncode": {"text": "red, blue"}})
    msg = run_error(client, p)
    assert "2 image(s) need 3 words" in msg, msg


def test_api_prompt_with_the_other_form_of_the_image_inputs(client, base_prompt):
    """An API prompt saved with the other ComfyUI form of the image inputs (image_1 from 0.3.75 posted to
    0.33.0, or images.image_1 the other way) still reaches the node with all its images: the pack
    renames them when the prompt is posted. Two images with two words: the node counts both."""
    p = run_workflow.apply_overrides(base_prompt, inputs={"ThinkDiffVLMEncode": {"text": "red, blue"}})
    enc = p[node_id(p, "ThinkDiffVLMEncode")]["inputs"]
    names = image_inputs(enc)
    assert len(names) == 2, names
    for k in names:
        enc[other_form(k)] = enc.pop(k)
    msg = run_error(client, p)
    assert "2 image(s) need 3 words" in msg, msg
