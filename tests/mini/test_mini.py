"""ThinkDiff-mini in CI: the brief build (``python -m train mini build --size ci``) runs every stage for
real (the models are far from trained: the quality numbers come from the full build, bench/RESULTS.md);
the judge reads real images; the evaluation runs and writes its table; and the shipped mini workflow, run
by devtools.run_workflow (stock loaders + our nodes, converted by the real frontend) in a real ComfyUI
server, gives the same VLM text and the same picture as the evaluation's code path for the same inputs
and seeds, so the evaluation measures what a user's ComfyUI computes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from devtools import paths
from devtools.make_example_inputs import MINI_INPUTS
from train.mini import build as mini_build
from train.mini import cli as mini_cli
from train.mini import data
from train.mini import evaluate as mini_eval

WORKFLOW = os.path.join(paths.WORKFLOWS, "thinkdiff_mini_in_context.json")


@pytest.fixture(scope="session")
def mini() -> mini_build.Paths:
    """The CI-size build, cached in .cache/mini-ci (stages that exist are reused)."""
    return mini_build.build(os.path.join(paths.CACHE, "mini-ci"), "ci")


@pytest.fixture(scope="session")
def results(mini) -> dict:
    res = mini_eval.evaluate(mini.out, "ci")
    res.pop("_grid_rows")
    print("\n" + json.dumps({k: v for k, v in res["conditions"].items() if "/" not in k}, indent=1))
    return res


def build_metrics(mini) -> dict:
    out = {}
    with open(mini.log) as f:
        for line in f:
            rec = json.loads(line)
            if "stage" in rec:
                out[rec["stage"]] = rec
    return out


def test_judge_reads_real_images(mini):
    judge = build_metrics(mini)["judge"]
    assert judge["real_test_colour"] >= 0.95 and judge["real_test_shape"] >= 0.9, judge


def test_results_table(results, tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nother text\n")
    table = mini_cli.results_table(results, "python -m train mini eval --size ci")
    mini_cli.write_results(str(md), table)
    mini_cli.write_results(str(md), table)   # a second write replaces, does not append
    text = md.read_text()
    assert text.count(mini_cli.MARK_BEGIN) == 1 and "other text" in text
    assert "upper bound" in text and "in-context" in text


def test_workflow_in_comfyui_matches_the_evaluation(mini, tmp_path):
    """The quick start's command (devtools.run_workflow on the shipped mini workflow, stock loaders + our
    nodes, converted by the real frontend) against the evaluation's calls for the same inputs and seeds."""
    models = tmp_path / "models"
    mini_cli.install(mini, str(models))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "devtools.run_workflow", WORKFLOW, str(out), "--base-dir", str(tmp_path / "base"),
           "--models", str(models)]
    r = subprocess.run(cmd, cwd=paths.ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    node_text = (out / "thinkdiff_mini_in_context.txt").read_text().strip()
    node_img = np.asarray(Image.open(out / "thinkdiff_mini_in_context.png").convert("RGB"))
    size = mini_eval.IMAGE_SIZE
    k = 256 // size                     # the workflow's nearest upscale for viewing
    assert node_img.shape == (size * k, size * k, 3)
    node_img = node_img[k // 2::k, k // 2::k]

    # the evaluation's path with the workflow's inputs: the two example images, "red, blue, green", seed 0
    from thinkdiff_core.checkpoint import load_aligner
    from thinkdiff_core.prompts import build_prompt
    from thinkdiff_core.vlm import VLMEncoder
    shots = [Image.open(os.path.join(paths.EXAMPLE_INPUTS, n)) for n in MINI_INPUTS]
    vlm = VLMEncoder.from_pretrained(mini.vlm)
    embeds = mini_eval.vlm_embeds(vlm, build_prompt("in_context", shots, "red, blue, green"), seed=0)
    assert embeds.text.strip() == node_text
    ctx = mini_eval.conditioning(load_aligner(mini.aligner("aligner", 0))[0], embeds)
    img = mini_eval.generate(mini_build.load_dit(mini.dit), mini_build.load_vae(mini.vae), [ctx], seeds=[0])[0]
    core_img = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    diff = np.abs(core_img.astype(int) - node_img.astype(int))
    print(f"\nVLM: {node_text!r}; node vs core image: mean |diff| {diff.mean():.2f}/255, max {diff.max()}")
    assert diff.mean() < 3 and diff.max() < 40, (diff.mean(), diff.max())


def test_data_labels_agree_with_the_questions():
    items = data.load("test")
    assert len(items) > 800
    assert {it.colour for it in items} == set(data.COLOURS) and {it.shape for it in items} == set(data.SHAPES)
    # one worked example per answer kind (easy-vqa test image 0 and its questions)
    assert data._facts("what is the blue shape?", "rectangle") == {"colour": "blue", "shape": "rectangle"}
    assert data._facts("is there not a red shape?", "no") == {"colour": "red"}
    assert data._facts("is there a circle?", "no") == {}


def test_mini_sampler_matches_comfyui_schedule():
    """ComfyUI's 'simple' scheduler over SD3's shifted sigmas (shift 3): first 1, last step's sigma 0."""
    from train.mini.image import comfy_sigmas
    s = comfy_sigmas(20)
    assert len(s) == 21 and float(s[0]) == pytest.approx(1.0) and float(s[-1]) == 0.0
    assert float(s[10]) == pytest.approx(3 * 0.5 / (1 + 2 * 0.5), abs=1e-6)
    assert torch.all(s[1:] < s[:-1])


def test_a_build_folder_of_another_format_is_refused(tmp_path):
    """The stages resume from what the folder holds: models of another format (e.g. the 32-pixel ones) are not
    mixed with new ones."""
    mini_build.check_format(str(tmp_path), "ci")                       # empty: claimed
    mini_build.check_format(str(tmp_path), "ci")                       # the same format: accepted
    with pytest.raises(RuntimeError, match="another kind"):
        mini_build.check_format(str(tmp_path), "full")
    old = tmp_path / "old"
    old.mkdir()
    (old / "vae.safetensors").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="no format.json"):
        mini_build.check_format(str(old), "ci")
