"""The bad-input matrix: odd or broken inputs submitted to a real ComfyUI server the way a user (or an API
client) would, each with the exact message the user sees, and the next good prompt working.

One table, :data:`CASES`: an id, how the prompt is broken, and what the user sees: ``refused`` (POST
/prompt answers 400; the frontend's dialog shows the answer's error and node_errors), ``outlined`` (ComfyUI
refuses one branch and runs the rest, here the VLM text preview: the answer is 200 with node_errors, the
frontend outlines the node in red and shows the message on it; the image branch does not run), ``error``
(the prompt runs and stops with an execution_error; the frontend's dialog shows its exception type and
message) or ``ok`` (it runs; the input is handled). Messages are patterns in which ``…`` stands for any text; the
README's Troubleshooting section lists every one of them (test_readme_lists_every_message), with what it
means and what to do. After every case a good prompt (a fresh VLM seed, so the VLM, the conditioning, the
sampler and the decoder run again) must succeed.

The whole table runs on the first tested ComfyUI (0.3.75); the cases marked ``both`` run on 0.33.0 too
(they cover each kind: a refused number, a run-time error, a file, the image inputs' migration).
"""
from __future__ import annotations

import copy
import itertools
import os
import pickle
import re
import shutil
from dataclasses import dataclass
from typing import Callable

import pytest

from devtools import comfy_client, demo_models, paths, run_workflow
from tests.comfy.conftest import VERSIONS
from tests.comfy.test_nodes_server import FAST, FAST_VLM, image_inputs, load_workflow, node_id, to_api
from thinkdiff_core import release

ENC, COND = "ThinkDiffVLMEncode", "ThinkDiffConditioning"
LOAD_ALIGNER, LOAD_VLM = "ThinkDiffLoadAligner", "ThinkDiffLoadVLM"
MARKER = "thinkdiff_pickle_ran.txt"   # what the code-running pickles would create (in the server's base folder)


# --- editing the base prompt (thinkdiff_in_context_reasoning.json: two images, "red, blue, green") ------------

def inputs_of(p: dict, class_type: str) -> dict:
    return p[node_id(p, class_type)]["inputs"]


def setting(class_type: str, **values) -> Callable:
    def edit(p, env):
        inputs_of(p, class_type).update(values)
        return p
    return edit


def aligner(name: str) -> Callable:
    return setting(LOAD_ALIGNER, aligner_name=name)


def vlm(name: str) -> Callable:
    return setting(LOAD_VLM, vlm_name=name)


def images(*files: str, preset: str | None = None, text: str | None = None) -> Callable:
    """The encoder's images replaced by LoadImage nodes of these files (in the server's input folder)."""
    def edit(p, env):
        enc = inputs_of(p, ENC)
        for k in image_inputs(enc):
            del enc[k]
        names = env.image_names
        for i, f in enumerate(files, 1):
            p[f"img{i}"] = {"class_type": "LoadImage", "inputs": {"image": f}}
            enc[names[i - 1]] = [f"img{i}", 0]
        if preset is not None:
            enc["preset"] = preset
        if text is not None:
            enc["text"] = text
        return p
    return edit


def rgba(p, env):
    """image_1 becomes a 4-channel (RGBA) IMAGE: JoinImageWithAlpha of the photo and its mask."""
    enc = inputs_of(p, ENC)
    first = sorted(image_inputs(enc))[0]
    load = enc[first][0]
    p["alpha"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": [load, 0], "alpha": [load, 1]}}
    enc[first] = ["alpha", 0]
    return p


def mixed_batch(p, env):
    """image_1 is a batch of two images of different sizes (ImageBatch scales the second to the first)."""
    enc = inputs_of(p, ENC)
    a, b = (enc[k][0] for k in sorted(image_inputs(enc)))
    p["wide"] = {"class_type": "LoadImage", "inputs": {"image": "td_wide.png"}}
    p["batch"] = {"class_type": "ImageBatch", "inputs": {"image1": [a, 0], "image2": ["wide", 0]}}
    enc[sorted(image_inputs(enc))[0]] = ["batch", 0]
    enc[sorted(image_inputs(enc))[1]] = [b, 0]
    enc["text"] = "red, blue, green, yellow"     # 3 images: the batch counts as two
    return p


def no_images(preset: str, text: str) -> Callable:
    def edit(p, env):
        enc = inputs_of(p, ENC)
        for k in image_inputs(enc):
            del enc[k]
        enc.update(preset=preset, text=text)
        return p
    return edit


def renamed_images(*names: str) -> Callable:
    """The image inputs saved under other names (an older version of the node, or one that does not exist)."""
    def edit(p, env):
        enc = inputs_of(p, ENC)
        for old, new in zip(sorted(image_inputs(enc)), names):
            enc[new] = enc.pop(old)
        return p
    return edit


def seventh_image(p, env):
    enc = inputs_of(p, ENC)
    link = enc[sorted(image_inputs(enc))[0]]
    enc["image_7" if not env.autogrow else "images.image_7"] = link
    return p


def seven_in_a_batch(p, env):
    """More images than there are slots, as a batch of 7 on image_1 (a batch counts as several images)."""
    enc = inputs_of(p, ENC)
    first, *rest = sorted(image_inputs(enc))
    p["seven"] = {"class_type": "RepeatImageBatch", "inputs": {"image": enc[first], "amount": 7}}
    enc[first] = ["seven", 0]
    for k in rest:
        del enc[k]
    enc.update(preset="custom", text="seven photos")
    return p


def missing_flux(p, env):
    inputs_of(p, "UNETLoader")["unet_name"] = release.FLUX_FILES["diffusion_models"]
    return p


# --- the matrix ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    edit: Callable[[dict, "Env"], dict]
    stage: str                 # "refused" (400), "outlined" (200 + node_errors), "error" (execution_error), "ok"
    message: str = ""          # what the user sees ("…" = any text); README's Troubleshooting lists it
    node: str | None = None    # the node the error is reported on, where that matters
    both: bool = False         # also on the other tested ComfyUI versions


NAN, INF = float("nan"), float("inf")
SMALLER = "Value … smaller than min of …"
BIGGER = "Value … bigger than max of …"
NOT_FINITE = "… is nan: give a finite number"
NOT_IN_LIST = "Value not in list: …"

CASES = [
    # numbers: every numeric input of our nodes, non-finite and out of range (ComfyUI refuses out-of-range
    # values itself; NaN passes its min/max checks, so the nodes refuse it)
    Case("max_new_tokens_0", setting(ENC, max_new_tokens=0), "refused", SMALLER, both=True),
    Case("max_new_tokens_4097", setting(ENC, max_new_tokens=4097), "refused", BIGGER),
    Case("max_new_tokens_nan", setting(ENC, max_new_tokens=NAN), "refused", "Failed to convert an input value to a INT value"),
    Case("seed_negative", setting(ENC, seed=-1), "refused", SMALLER),
    Case("temperature_nan", setting(ENC, temperature=NAN), "error", "temperature is nan: give a finite number above 0", both=True),
    Case("temperature_inf", setting(ENC, temperature=INF), "refused", BIGGER),
    Case("temperature_negative", setting(ENC, temperature=-0.5), "refused", SMALLER),
    Case("top_p_nan", setting(ENC, top_p=NAN), "error", "top_p is nan: give a number in (0, 1]"),
    Case("top_p_0", setting(ENC, top_p=0.0), "refused", SMALLER),
    Case("top_p_2", setting(ENC, top_p=2.0), "refused", BIGGER),
    Case("aligned_strength_nan", setting(COND, aligned_strength=NAN), "error", NOT_FINITE),
    Case("aligned_strength_inf", setting(COND, aligned_strength=INF), "outlined", BIGGER),
    Case("aligned_strength_negative", setting(COND, aligned_strength=-1.0), "outlined", SMALLER),
    Case("text_strength_nan", setting(COND, text_strength=NAN), "error", NOT_FINITE),
    Case("text_strength_minus_inf", setting(COND, text_strength=-INF), "outlined", SMALLER),
    Case("guidance_nan", setting(COND, guidance=NAN), "error", NOT_FINITE, both=True),
    Case("guidance_inf", setting(COND, guidance=INF), "outlined", BIGGER, both=True),
    Case("guidance_negative", setting(COND, guidance=-1.0), "outlined", SMALLER),
    Case("guidance_101", setting(COND, guidance=101.0), "outlined", BIGGER),
    Case("vlm_dtype_fp8", setting(LOAD_VLM, dtype="fp8"), "error", "unknown dtype 'fp8'; use one of …"),
    Case("aligner_dtype_fp8", setting(LOAD_ALIGNER, dtype="fp8"), "error", "unknown dtype 'fp8'; use one of …"),
    # missing model files
    Case("missing_aligner", aligner(release.ALIGNER_LVLM_FILE), "error",
         "aligner file '…' not found in models/thinkdiff", both=True),
    Case("missing_vlm", vlm(release.VLM_NAME), "refused", "VLM folder '…' not found in models/LLM", both=True),
    Case("missing_flux", missing_flux, "outlined", NOT_IN_LIST),
    # broken aligner files
    Case("aligner_zero_byte_pth", aligner("td-empty.pth"), "error", "…: file is empty"),
    Case("aligner_zero_byte_safetensors", aligner("td-empty.safetensors"), "error", "…: file is empty"),
    Case("aligner_truncated_pth", aligner("td-truncated.pth"), "error", "…: not a PyTorch checkpoint", both=True),
    Case("aligner_truncated_safetensors", aligner("td-truncated.safetensors"), "error",
         "…: not a readable safetensors file (truncated or corrupt?)"),
    Case("aligner_corrupt_safetensors", aligner("td-corrupt.safetensors"), "error",
         "…: not a readable safetensors file (truncated or corrupt?)"),
    Case("aligner_text_file", aligner("broken_aligner.pth"), "error", "…: not a PyTorch checkpoint"),
    Case("aligner_code_running_pickle", aligner("td-evil.pth"), "error",
         "refused: besides tensors the file holds a pickled Python object (…), and unpickling it could run code",
         both=True),
    Case("aligner_code_running_legacy_pickle", aligner("td-evil-legacy.pth"), "error",
         "refused: besides tensors the file holds a pickled Python object (…), and unpickling it could run code"),
    Case("aligner_legacy_torch_save", aligner("td-legacy.pth"), "ok"),
    Case("aligner_other_model", aligner("td-other-model.safetensors"), "error",
         "not a ThinkDiff aligner: expected exactly the tensors …"),
    Case("aligner_for_another_vlm", aligner(demo_models.WRONG_ALIGNER_FILE), "error",
         "the VLM '…' has hidden size … but the aligner '…' expects …", node=ENC, both=True),
    Case("aligner_clip_variant", aligner("td-clip.safetensors"), "error",
         "the VLM '…' has hidden size … but the aligner '…' expects …", node=ENC),
    Case("aligner_wrong_output_width", aligner("td-wide-out.safetensors"), "error",
         "the aligner '…' outputs …-wide tokens, but FLUX reads T5-XXL states (4096 wide)", node=ENC),
    # VLM folders that are not a Qwen2-VL model
    Case("vlm_text_only_llm", vlm("td-text-only-llm"), "error", "model_type '…' is not supported"),
    Case("vlm_broken_config", vlm("td-broken-config"), "error", "…/config.json is not valid JSON"),
    Case("vlm_truncated_weights", vlm("td-truncated-weights"), "error",
         "the weights could not be read … probably truncated"),
    Case("vlm_no_config", vlm("td-no-config"), "error", "… has no config.json, so it is not a transformers model folder"),
    Case("vlm_no_weights", vlm("td-no-weights"), "error", "… has no *.safetensors weights"),
    # images
    Case("in_context_without_images", no_images("in_context", "red, blue, green"), "error",
         "the in-context preset needs at least one example image"),
    Case("two_images_without_images", no_images("two_images", ""), "error", "the two-images preset needs exactly 2 images, got …"),
    Case("seventh_image_input", seventh_image, "error",
         "VLM Encode Multimodal takes at most 6 image inputs (image_1 .. image_6); … would be ignored", both=True),
    Case("image_1x1", images("td_1x1.png", "thinkdiff_cup_blue.jpg"), "ok"),
    Case("image_rgba", rgba, "ok"),
    Case("image_grayscale", images("td_gray.png", "thinkdiff_cup_blue.jpg"), "ok"),
    Case("image_batch_mixed_sizes", mixed_batch, "ok"),
    Case("image_4096x4096", images("td_4096.png", preset="image_text", text="describe it"), "ok"),
    Case("image_4000x10", images("td_thin.png", "thinkdiff_cup_blue.jpg"), "error",
         "image … is … pixels (aspect ratio …:1); Qwen2-VL takes images up to 200:1: crop or pad it"),
    Case("image_seven_in_one_batch", seven_in_a_batch, "ok"),
    # text and tokens
    Case("empty_text_in_context", setting(ENC, text=""), "error",
         "the in-context preset needs one word per image plus the query word"),
    Case("empty_text_image_text", setting(ENC, preset="image_text", text=""), "error",
         "the image + text preset needs an instruction text"),
    Case("max_new_tokens_1", setting(ENC, max_new_tokens=1), "ok"),
    # a workflow saved by an older version of the node: its image inputs were called image, image2
    Case("old_image_input_names", renamed_images("image", "image2"), "ok", both=True),
    Case("combining_mode_without_text", setting(COND, mode="aligned_first"), "error",
         "mode … combines the aligned tokens with a text conditioning, but none is connected"),
]
assert len({c.id for c in CASES}) == len(CASES)


# --- the server side: bad files and images, the base prompt -------------------------------------------------

class _Evil:
    """Unpickling this would create MARKER (a stand-in for any code a malicious checkpoint runs)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@dataclass
class Env:
    base: dict
    image_names: list
    autogrow: bool
    marker: str
    seeds: itertools.count


def make_bad_files(base_dir: str, marker: str) -> None:
    """Broken aligner files, VLM folders that are not Qwen2-VL models and odd images, beside the demo models."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from thinkdiff_core.aligner import Aligner
    from thinkdiff_core.checkpoint import save_aligner
    models, inp = os.path.join(base_dir, "models"), os.path.join(base_dir, "input")
    al = os.path.join(models, "thinkdiff")
    good = os.path.join(al, demo_models.ALIGNER_FILE)

    def write(name, data: bytes):
        with open(os.path.join(al, name), "wb") as f:
            f.write(data)
    write("td-empty.pth", b"")
    write("td-empty.safetensors", b"")
    blob = open(good, "rb").read()
    write("td-truncated.pth", blob[: len(blob) // 2])
    save_aligner(Aligner(64, 4096, 16), os.path.join(al, "td-small.safetensors"))
    small = open(os.path.join(al, "td-small.safetensors"), "rb").read()
    os.remove(os.path.join(al, "td-small.safetensors"))
    write("td-truncated.safetensors", small[: len(small) // 2])
    write("td-corrupt.safetensors", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    torch.save({"model": {"mm_projector.0.weight": torch.zeros(2, 2), "hook": _Evil(marker)}},
               os.path.join(al, "td-evil.pth"))
    write("td-evil-legacy.pth", pickle.dumps({"model": _Evil(marker)}, protocol=2))
    sd = torch.load(good, map_location="cpu", weights_only=True)
    torch.save(sd, os.path.join(al, "td-legacy.pth"), _use_new_zipfile_serialization=False)
    save_file({"weight": torch.zeros(4, 4)}, os.path.join(al, "td-other-model.safetensors"))
    save_aligner(Aligner(1408, 4096, 16), os.path.join(al, "td-clip.safetensors"), variant="clip")
    save_aligner(Aligner(demo_models.VLM_HIDDEN, 128, 16), os.path.join(al, "td-wide-out.safetensors"))

    llm = os.path.join(models, "LLM")
    demo = os.path.join(llm, demo_models.VLM_DIR)

    def copy_demo(name: str) -> str:
        dst = os.path.join(llm, name)
        shutil.copytree(demo, dst, dirs_exist_ok=True)
        return dst
    d = copy_demo("td-broken-config")
    with open(os.path.join(d, "config.json"), "w") as f:
        f.write('{"model_type": "qwen2_vl", "text_config": {')
    d = copy_demo("td-truncated-weights")
    w = os.path.join(d, "model.safetensors")
    data = open(w, "rb").read()
    with open(w, "wb") as f:
        f.write(data[: len(data) // 3])
    d = copy_demo("td-no-weights")
    for f in os.listdir(d):
        if f.endswith(".safetensors"):
            os.remove(os.path.join(d, f))
    d = copy_demo("td-no-config")
    os.remove(os.path.join(d, "config.json"))
    d = copy_demo("td-text-only-llm")   # a text-only LLM's config: Qwen2 without the vision tower
    from transformers import Qwen2Config, Qwen2ForCausalLM
    for f in os.listdir(d):
        if f.endswith(".safetensors") or f == "config.json":
            os.remove(os.path.join(d, f))
    Qwen2ForCausalLM(Qwen2Config(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(d)

    Image.new("RGB", (1, 1), (200, 30, 30)).save(os.path.join(inp, "td_1x1.png"))
    Image.new("L", (64, 48), 128).save(os.path.join(inp, "td_gray.png"))
    Image.new("RGB", (300, 40), (20, 120, 200)).save(os.path.join(inp, "td_wide.png"))
    Image.new("RGB", (4000, 10), (20, 200, 20)).save(os.path.join(inp, "td_thin.png"))
    ramp = np.linspace(0, 255, 4096, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (4096, 1))] * 3, -1)).save(os.path.join(inp, "td_4096.png"))


@pytest.fixture(scope="module")
def env(server, client, frontend, object_info, comfy_features) -> Env:
    marker = os.path.join(server.base_dir, MARKER)
    make_bad_files(server.base_dir, marker)
    api = to_api(load_workflow("thinkdiff_in_context_reasoning.json"), frontend, object_info)
    base = run_workflow.apply_overrides(api, **FAST, inputs=FAST_VLM)
    names = [f"images.image_{i}" if comfy_features["autogrow"] else f"image_{i}" for i in range(1, 8)]
    return Env(base=base, image_names=names, autogrow=comfy_features["autogrow"], marker=marker,
               seeds=itertools.count(10_000))


# --- running a case ---------------------------------------------------------------------------------------------

def pattern(message: str) -> re.Pattern:
    return re.compile(".*?".join(re.escape(part) for part in message.split("…")), re.S)


def what_the_user_sees(client, prompt: dict) -> tuple[str, str, dict | None]:
    """(stage, text, history entry): the 400 answer's error and node errors as the frontend's dialog lists
    them, or the execution error's "type: message" as its error dialog shows it, or "" for a success."""
    answer = client.queue(prompt)
    if "prompt_id" not in answer:
        return "refused", comfy_client.format_prompt_error(answer), None
    entry = client.wait(answer["prompt_id"], timeout=600)
    if answer.get("node_errors"):
        assert not comfy_client.output_images(entry), "a branch with a node error produced an image"
        return "outlined", comfy_client.format_prompt_error(answer), entry
    err = comfy_client.execution_error(entry)
    if err is not None:
        return "error", f"{err['node_type']}: {err['exception_type']}: {err['exception_message']}", entry
    assert entry["status"]["status_str"] == "success", entry["status"]
    return "ok", "", entry


def run_case(case: Case, client, env: Env) -> None:
    prompt = case.edit(copy.deepcopy(env.base), env)
    inputs_of(prompt, ENC)["seed"] = next(env.seeds) if "seed" not in case.id else inputs_of(prompt, ENC)["seed"]
    stage, seen, entry = what_the_user_sees(client, prompt)
    assert not os.path.exists(env.marker), "a checkpoint's pickled code ran"
    assert stage == case.stage, f"{case.id}: expected {case.stage}, got {stage}: {seen}\n{client.describe()}"
    if case.stage != "ok":
        assert pattern(case.message).search(seen), f"{case.id}: the user sees:\n{seen}\nexpected: {case.message}"
        assert "custom_nodes" not in seen and "Traceback" not in seen, seen
        assert "mat1 and mat2" not in seen, seen
    if case.node:
        assert seen.startswith(case.node + ":"), seen
        if case.node == ENC:   # reported before generating: no VLM text reached the preview
            assert not comfy_client.output_texts(entry), entry["outputs"]
    if case.stage == "ok":
        assert comfy_client.output_images(entry), f"{case.id}: no image"
    if case.stage == "error":   # no image half-made
        assert not comfy_client.output_images(entry), entry["outputs"]
    # the server still serves: a good prompt (a fresh VLM seed: every node after the loaders runs again)
    good = copy.deepcopy(env.base)
    inputs_of(good, ENC)["seed"] = next(env.seeds)
    stage, seen, entry = what_the_user_sees(client, good)
    assert stage == "ok" and comfy_client.output_images(entry), f"after {case.id} a good prompt failed: {seen}"


FIRST = VERSIONS[0]


def _params():
    for case in CASES:
        for v in VERSIONS if case.both else [FIRST]:
            yield pytest.param(v, case, id=f"{case.id}-{v.id}")


@pytest.mark.parametrize("comfyui,case", list(_params()), indirect=["comfyui"], scope="session")
def test_bad_input(case, client, env):
    run_case(case, client, env)


def test_matrix_size():
    assert len(CASES) >= 40
    assert {c.stage for c in CASES} == {"refused", "outlined", "error", "ok"}


def test_readme_lists_every_message():
    """README's Troubleshooting table has a row for every message of the matrix (verbatim, … included)."""
    text = open(os.path.join(paths.ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    missing = sorted({c.message for c in CASES if c.message and f"`{c.message}`" not in section})
    assert not missing, "README Troubleshooting lacks rows for:\n" + "\n".join(missing)


def test_run_workflow_names_a_missing_input_image(tmp_path, capsys):
    """--images with a path that is not there: a usage error naming it, before any server starts."""
    missing = str(tmp_path / "no_such.png")
    with pytest.raises(SystemExit) as e:
        run_workflow.main([os.path.join(paths.WORKFLOWS, "thinkdiff_mini_in_context.json"),
                           str(tmp_path / "out"), "--images", missing])
    assert e.value.code == 2
    assert f"--images: no such file: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
