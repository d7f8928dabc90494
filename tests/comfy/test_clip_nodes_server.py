"""ThinkDiff-CLIP in a real ComfyUI server, once per tested version: the three shipped CLIP workflows end to
end on the demo models (tiny BLIP-2, an official-layout thinkdiff_clip.pth, FLUX's text encoders with a
2-layer T5 through the stock CLIPTextEncodeFlux), 65 tokens per image, the images' order, and the messages
for the wrong aligner / missing files / missing inputs."""
from __future__ import annotations

import copy
import glob
import os
import time

import numpy as np
import pytest
import torch

from devtools import comfy_client, demo_models, paths, run_workflow
from thinkdiff_core import release

from .test_nodes_server import image_array, load_workflow, node_id, run_error, run_ok, to_api

CLIP_WORKFLOWS = sorted(glob.glob(os.path.join(paths.WORKFLOWS, "thinkdiff_clip_*.json")))
FAST = dict(steps=1, width=64, height=64, demo_models=True)
IMAGES = {"thinkdiff_clip_image_text.json": 1, "thinkdiff_clip_two_images.json": 2,
          "thinkdiff_clip_two_images_text.json": 2}


def clip_prompt(name, frontend, object_info, inputs=None) -> dict:
    return run_workflow.apply_overrides(to_api(load_workflow(name), frontend, object_info), **FAST, inputs=inputs)


def layout(entry, prompt) -> str:
    return entry["outputs"][node_id(prompt, "ThinkDiffConditioning")]["text"][0]


def test_three_clip_workflows_ship():
    assert sorted(os.path.basename(w) for w in CLIP_WORKFLOWS) == sorted(IMAGES)


@pytest.mark.parametrize("path", CLIP_WORKFLOWS, ids=[os.path.basename(w) for w in CLIP_WORKFLOWS])
def test_clip_workflow_runs_end_to_end(path, server, client, frontend, object_info):
    name = os.path.basename(path)
    prompt = clip_prompt(name, frontend, object_info)
    classes = {n["class_type"] for n in prompt.values()}
    assert classes >= {"ThinkDiffLoadVisionEncoder", "ThinkDiffEncodeImages", "ThinkDiffLoadAligner",
                       "ThinkDiffConditioning", "CLIPTextEncodeFlux", "UNETLoader", "VAELoader", "SaveImage"}
    assert "ThinkDiffLoadVLM" not in classes and "ThinkDiffVLMEncode" not in classes   # no VLM in this variant
    # the official-layout aligner file drives it: torch.load gives {"model": the five mm_projector tensors, ...}
    aligner = prompt[node_id(prompt, "ThinkDiffLoadAligner")]["inputs"]["aligner_name"]
    assert aligner == demo_models.CLIP_ALIGNER_FILE
    official = torch.load(os.path.join(server.base_dir, "models", "thinkdiff", aligner), weights_only=True)
    assert set(official) >= {"model", "optimizer"} and sorted(official["model"]) == [
        "mm_projector.0.bias", "mm_projector.0.weight", "mm_projector.2.bias", "mm_projector.2.weight",
        "mm_projector.3.weight"]
    t = time.time()
    entry = run_ok(client, prompt)
    print(f"\n{name}: {time.time() - t:.1f} s")
    img = image_array(client, entry)
    assert img.shape == (64, 64, 3) and img.std() > 0
    k = IMAGES[name]
    # 65 tokens per image, then the first 128 T5 tokens of the text (ComfyUI's T5 gives 256)
    assert layout(entry, prompt) == (f"ThinkDiff-CLIP: {k} image(s) x 65 tokens + 128 text tokens "
                                     f"= {65 * k + 128} tokens")
    assert f"encoded {k} image(s) into 65 tokens each" in server.log_tail(400)


def conditioning_info(client, prompt) -> dict:
    """What the graph's ThinkDiff Conditioning feeds FLUX, read by the test-only inspector node."""
    import json
    p = copy.deepcopy(prompt)
    p["cond_info"] = {"class_type": "ThinkDiffDemoConditioningInfo",
                      "inputs": {"conditioning": [node_id(p, "ThinkDiffConditioning"), 0]}}
    entry = run_ok(client, p)
    return json.loads(entry["outputs"]["cond_info"]["text"][0])


def expected_token_sums(server, image_files) -> torch.Tensor:
    """The same computation outside the server, from the same files: demo BLIP-2 tower -> 65 tokens per
    image -> the official-layout demo aligner; per token the sum of its 4096 values."""
    from PIL import Image

    from thinkdiff_core.checkpoint import load_aligner
    from thinkdiff_core.vision import VisionEncoder
    models = os.path.join(server.base_dir, "models")
    enc = VisionEncoder.from_pretrained(os.path.join(models, "blip2", demo_models.VISION_DIR), dtype="fp32")
    aligner, _ = load_aligner(os.path.join(models, "thinkdiff", demo_models.CLIP_ALIGNER_FILE), dtype=torch.float32)
    imgs = [Image.open(os.path.join(server.base_dir, "input", f)).convert("RGB") for f in image_files]
    with torch.no_grad():
        return aligner(enc.encode(imgs).tokens).reshape(-1, 4096).sum(-1)


def as_png(server, name: str) -> str:
    from PIL import Image
    png = os.path.splitext(name)[0] + "_lossless.png"
    Image.open(os.path.join(server.base_dir, "input", name)).convert("RGB").save(os.path.join(server.base_dir, "input", png))
    return png


def test_65_tokens_per_image_in_input_order(server, client, frontend, object_info):
    """The conditioning is [65 tokens of image 1 ; 65 of image 2 ; 128 text tokens], each block equal to the
    aligned tokens of that image computed outside the server; swapping image_1 and image_2 swaps the blocks.
    (FLUX itself gives every text token position 0, so the order does not change the picture.)"""
    base = clip_prompt("thinkdiff_clip_two_images_text.json", frontend, object_info)
    enc = base[node_id(base, "ThinkDiffEncodeImages")]["inputs"]
    names = sorted(k for k in enc if k.rsplit(".", 1)[-1].startswith("image_"))
    assert len(names) == 2, enc
    # lossless copies: ComfyUI 0.33.0's LoadImage decodes JPEG with PyAV, whose pixels differ slightly from PIL's
    files = [as_png(server, base[enc[n][0]]["inputs"]["image"]) for n in names]
    for n, f in zip(names, files):
        base[enc[n][0]]["inputs"]["image"] = f
    info = conditioning_info(client, base)
    assert info["shape"] == [1, 2 * 65 + 128, 4096] and info["pooled_shape"] == [1, 768] and info["guidance"] == 3.5
    want = expected_token_sums(server, files)
    got = torch.tensor(info["token_sums"][:130])
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    swapped = copy.deepcopy(base)
    s_enc = swapped[node_id(swapped, "ThinkDiffEncodeImages")]["inputs"]
    s_enc[names[0]], s_enc[names[1]] = enc[names[1]], enc[names[0]]
    got_swapped = torch.tensor(conditioning_info(client, swapped)["token_sums"][:130])
    torch.testing.assert_close(got_swapped, torch.cat([want[65:], want[:65]]), rtol=1e-3, atol=1e-3)
    assert (want[:65] - want[65:]).abs().max() > 0.05 * want.abs().max()   # the two images differ clearly
    # the text part is the same either way
    assert info["token_sums"][130:] == conditioning_info(client, swapped)["token_sums"][130:]


def test_image_tokens_reach_flux(client, frontend, object_info):
    """image_strength 0 (the image tokens zeroed) must change the image: the aligned tokens are used."""
    base = clip_prompt("thinkdiff_clip_image_text.json", frontend, object_info)
    zero = run_workflow.apply_overrides(base, inputs={"ThinkDiffConditioning": {"aligned_strength": 0.0}})
    a = image_array(client, run_ok(client, base))
    z = image_array(client, run_ok(client, zero))
    assert np.abs(a.astype(int) - z.astype(int)).mean() > 0.5, "the image tokens had no effect"


@pytest.fixture(scope="module")
def clip_base(client, frontend, object_info):
    return clip_prompt("thinkdiff_clip_two_images_text.json", frontend, object_info)


def test_error_lvlm_aligner_given_clip_embeds(client, clip_base):
    p = run_workflow.apply_overrides(clip_base, inputs={"ThinkDiffLoadAligner": {"aligner_name": demo_models.ALIGNER_FILE}})
    msg = run_error(client, p)
    assert "ThinkDiffConditioning (ValueError)" in msg, msg
    assert "these are ThinkDiff-CLIP image embeds (vision encoder 'thinkdiff-demo-blip2', 32-wide tokens)" in msg, msg
    assert f"Load a ThinkDiff-CLIP aligner ({release.ALIGNER_CLIP_FILE}" in msg, msg


def test_error_clip_aligner_given_vlm_embeds(client, frontend, object_info):
    p = run_workflow.apply_overrides(to_api(load_workflow("thinkdiff_image_text.json"), frontend, object_info),
                                     **FAST, inputs={"ThinkDiffVLMEncode": {"max_new_tokens": 4},
                                                     "ThinkDiffLoadAligner": {"aligner_name": demo_models.CLIP_ALIGNER_FILE}})
    msg = run_error(client, p)
    assert "the VLM 'thinkdiff-demo-qwen2vl' has hidden size 64" in msg and "expects 32" in msg, msg
    assert f"If it is a ThinkDiff-CLIP aligner ({release.ALIGNER_CLIP_FILE}), feed it the image tokens of " \
           "Encode Images (ThinkDiff-CLIP)" in msg, msg


def test_error_clip_embeds_without_text_conditioning(client, clip_base):
    p = copy.deepcopy(clip_base)
    del p[node_id(p, "ThinkDiffConditioning")]["inputs"]["conditioning"]
    msg = run_error(client, p)
    assert "no text conditioning is connected: connect CLIPTextEncodeFlux" in msg, msg


def test_error_encode_without_images(client, clip_base):
    p = copy.deepcopy(clip_base)
    enc = p[node_id(p, "ThinkDiffEncodeImages")]["inputs"]
    for k in [k for k in enc if k != "vision"]:
        del enc[k]
    msg = run_error(client, p)
    assert "Encode Images (ThinkDiff-CLIP) needs at least one image" in msg, msg


def test_error_missing_vision_folder(client, clip_base):
    p = run_workflow.apply_overrides(clip_base, inputs={
        "ThinkDiffLoadVisionEncoder": {"vision_name": release.CLIP_VISION_NAME}})
    answer = client.queue(p)
    assert "prompt_id" not in answer, "a missing vision encoder folder must be refused before running"
    msg = comfy_client.format_prompt_error(answer)
    assert (f"vision encoder folder '{release.CLIP_VISION_NAME}' not found in models/{release.CLIP_VISION_FOLDER}"
            in msg and "Put a BLIP-2 model folder" in msg), msg
