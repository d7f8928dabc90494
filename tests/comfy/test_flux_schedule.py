"""The shipped workflows sample FLUX.1-dev with the official noise schedule.

diffusers' FluxPipeline shifts its flow-matching schedule by the image size (``mu`` grows with the
number of image tokens); ComfyUI does the same only when ModelSamplingFlux is in the graph and gets
the real width/height (without it ComfyUI uses a fixed shift, the one for 1024x1024). These tests
take every shipped workflow as the real frontend converts it, check the graph (ModelSamplingFlux
between the loader and the sampler, its size from the same nodes as the latent's), and compare the
sigmas ComfyUI's own code computes for it (its ModelSamplingFlux node on the demo FLUX file loaded by
its loader, then ``comfy.samplers.calculate_sigmas``; in a child process where comfy imports) with
the diffusers schedule at the latent's size.
"""
from __future__ import annotations

import copy
import glob
import json
import math
import os

import pytest

from devtools import comfy_sigmas, demo_models, paths, run_workflow, ui_to_api
from devtools.make_workflows import MINI_WORKFLOWS

# the FLUX workflows (ThinkDiff-mini's SD3-layout model samples with ComfyUI's SD3 settings, tests/mini)
WORKFLOWS = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(paths.WORKFLOWS, "*.json"))
                   if os.path.splitext(os.path.basename(p))[0] not in MINI_WORKFLOWS)
LATENTS = ("EmptySD3LatentImage",)
SCHEDULE_NODES = ("KSampler", "BasicScheduler")          # the nodes that turn model_sampling into sigmas
MODEL_READERS = ("KSampler", "BasicScheduler", "BasicGuider", "SamplerCustom", "CFGGuider")
OTHER_SIZE = (1024, 768)      # a user's non-square size: the schedule must follow the latent there too
TOLERANCE = 1e-3

# FLUX.1-dev's scheduler (black-forest-labs/FLUX.1-dev, scheduler/scheduler_config.json) and pipeline defaults
FLUX_DEV_SCHEDULER = dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                          max_image_seq_len=4096, time_shift_type="exponential", shift_terminal=None)


def diffusers_flux_sigmas(width: int, height: int, steps: int) -> list[float]:
    """The sigmas diffusers' FluxPipeline (0.3x) samples FLUX.1-dev with, written out:

    * ``FluxPipeline.__call__``: ``sigmas = np.linspace(1.0, 1 / steps, steps)``;
      ``image_seq_len`` = packed latent tokens = ``(height // 16) * (width // 16)`` (VAE factor 8,
      2x2 patches); ``mu = calculate_shift(image_seq_len, base_image_seq_len, max_image_seq_len,
      base_shift, max_shift)``, a straight line through (256, 0.5) and (4096, 1.15);
    * ``FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=..., mu=mu)`` with dynamic shifting,
      ``time_shift_exponential``: ``sigma' = e^mu / (e^mu + (1 / sigma - 1) ** 1.0)``, no terminal
      stretch, then a final 0 is appended.
    """
    c = FLUX_DEV_SCHEDULER
    seq = (height // 16) * (width // 16)
    m = (c["max_shift"] - c["base_shift"]) / (c["max_image_seq_len"] - c["base_image_seq_len"])
    mu = seq * m + (c["base_shift"] - m * c["base_image_seq_len"])
    sigmas = [1.0 - (1.0 - 1.0 / steps) * i / (steps - 1) for i in range(steps)]   # np.linspace(1, 1/steps, steps)
    return [math.exp(mu) / (math.exp(mu) + (1.0 / s - 1.0)) for s in sigmas] + [0.0]


# --- reading the API prompt ---------------------------------------------------------------------------

def api_prompt(name: str, frontend, object_info) -> dict:
    with open(os.path.join(paths.WORKFLOWS, name + ".json")) as f:
        wf = json.load(f)
    return frontend.to_api(wf) if frontend is not None else ui_to_api.python_convert(wf, object_info)


def only(prompt: dict, classes) -> tuple[str, dict]:
    found = [(k, v) for k, v in prompt.items() if v["class_type"] in classes]
    assert len(found) == 1, f"expected one of {classes}, found {[(k, v['class_type']) for k, v in found]}"
    return found[0]


def value(prompt: dict, node: dict, name: str):
    v, _ = run_workflow.resolve(prompt, node["inputs"][name])
    assert not run_workflow.is_link(v), f"{node['class_type']}.{name} comes from a " \
                                        f"{prompt[v[0]]['class_type']} node, not a value"
    return v


def model_chain(prompt: dict, node: dict) -> list[str]:
    """Class types from a node's model input back to the loader."""
    chain = []
    while "model" in node["inputs"]:
        src = node["inputs"]["model"]
        assert run_workflow.is_link(src), f"{node['class_type']}.model is not connected"
        node = prompt[src[0]]
        chain.append(node["class_type"])
    return chain


def schedule_case(prompt: dict) -> dict:
    """What decides the sigmas of this prompt: scheduler, steps, the ModelSamplingFlux inputs on the
    sampler's model path (None without one), and the latent's size."""
    _, latent = only(prompt, LATENTS)
    _, sched = only(prompt, SCHEDULE_NODES)
    assert value(prompt, sched, "denoise") == 1.0
    msf = None
    node = sched
    while "model" in node["inputs"]:
        node = prompt[node["inputs"]["model"][0]]
        if node["class_type"] == "ModelSamplingFlux":
            assert msf is None, "two ModelSamplingFlux nodes on the sampler's model path"
            msf = {k: value(prompt, node, k) for k in ("max_shift", "base_shift", "width", "height")}
    return {"scheduler": value(prompt, sched, "scheduler"), "steps": value(prompt, sched, "steps"),
            "model_sampling_flux": msf, "latent": [value(prompt, latent, "width"), value(prompt, latent, "height")]}


def with_latent_size(prompt: dict, width: int, height: int) -> dict:
    """The prompt as a user who changes the image size where the latent takes it from (the Int node
    feeding it, or the latent's own widget) would queue it; ModelSamplingFlux is left alone."""
    p = copy.deepcopy(prompt)
    _, latent = only(p, LATENTS)
    for name, v in (("width", width), ("height", height)):
        _, through = run_workflow.resolve(p, latent["inputs"][name])
        if through:
            src = p[through[-1]]
            src["inputs"][run_workflow.SIZE_SOURCES[src["class_type"]]] = v
        else:
            latent["inputs"][name] = v
    return p


# --- the graph ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", WORKFLOWS)
def test_model_sampling_flux_sits_between_loader_and_sampler(name, frontend, object_info):
    p = api_prompt(name, frontend, object_info)
    msf_id, msf = only(p, ("ModelSamplingFlux",))
    unet_id, _ = only(p, ("UNETLoader",))
    assert msf["inputs"]["model"] == [unet_id, 0], "ModelSamplingFlux must read the loaded FLUX model"
    readers = {k: v for k, v in p.items() if v["class_type"] in MODEL_READERS}
    assert readers and all(v["inputs"]["model"] == [msf_id, 0] for v in readers.values()), \
        {k: (v["class_type"], v["inputs"]["model"]) for k, v in readers.items()}
    # nothing samples the unpatched model
    assert [k for k, v in p.items() if v["inputs"].get("model") == [unet_id, 0]] == [msf_id]
    assert value(p, msf, "max_shift") == pytest.approx(FLUX_DEV_SCHEDULER["max_shift"])
    assert value(p, msf, "base_shift") == pytest.approx(FLUX_DEV_SCHEDULER["base_shift"])
    # one source for the size: the latent and ModelSamplingFlux read the same Int nodes
    _, latent = only(p, LATENTS)
    for k in ("width", "height"):
        src = msf["inputs"][k]
        assert run_workflow.is_link(src), f"ModelSamplingFlux.{k} is a fixed number, not wired to the latent's size"
        assert latent["inputs"][k] == src, f"the latent's {k} and ModelSamplingFlux's {k} come from different nodes"
        assert p[src[0]]["class_type"] == "PrimitiveInt"
    _, sched = only(p, SCHEDULE_NODES)
    assert model_chain(p, sched) == ["ModelSamplingFlux", "UNETLoader"]


# --- the sigmas ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def comfy_schedules(server, comfy_dir, frontend, object_info):
    """{(workflow, size or None): (case, ComfyUI's sigmas)} plus ComfyUI's sigmas without
    ModelSamplingFlux at 512x512 (the control), computed in one child process."""
    keys, cases = [], []
    for name in WORKFLOWS:
        p = api_prompt(name, frontend, object_info)
        for size in (None, OTHER_SIZE):
            keys.append((name, size))
            cases.append(schedule_case(p if size is None else with_latent_size(p, *size)))
    control = {"scheduler": "simple", "steps": 28, "model_sampling_flux": None}
    flux = os.path.join(server.base_dir, "models", "diffusion_models", demo_models.FLUX_FILE)
    sigmas = comfy_sigmas.compute(flux, [{k: c[k] for k in ("scheduler", "steps", "model_sampling_flux")}
                                         for c in cases] + [control], comfy_dir)
    return dict(zip(keys, zip(cases, sigmas))), sigmas[-1]


def deviation(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b), f"{len(a)} sigmas vs {len(b)}"
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.mark.parametrize("size", [None, OTHER_SIZE], ids=["as_shipped", "%dx%d" % OTHER_SIZE])
@pytest.mark.parametrize("name", WORKFLOWS)
def test_sigmas_match_the_official_flux_schedule(name, size, comfy_schedules):
    case, comfy = comfy_schedules[0][(name, size)]
    width, height = case["latent"]
    assert case["steps"] == 28 and case["scheduler"] == "simple", case
    if size is None:
        assert (width, height) == (512, 512)
    ref = diffusers_flux_sigmas(width, height, case["steps"])
    d = deviation(comfy, ref)
    assert d < TOLERANCE, (
        f"{name} at {width}x{height}: ComfyUI samples with sigmas {[round(s, 4) for s in comfy[:6]]}..., "
        f"diffusers' FluxPipeline with {[round(s, 4) for s in ref[:6]]}... (max deviation {d:.4f}); "
        f"ModelSamplingFlux on the sampler's path: {case['model_sampling_flux']}")


def test_the_check_tells_a_missing_model_sampling_flux_apart(comfy_schedules):
    """Without ModelSamplingFlux ComfyUI's FLUX schedule at 512x512 is far outside the tolerance, so
    the comparison above does catch a workflow that lacks it."""
    assert deviation(comfy_schedules[1], diffusers_flux_sigmas(512, 512, 28)) > 50 * TOLERANCE


def test_reference_formula_at_known_points():
    """mu at 512x512 is 0.5 + 0.65 * 768 / 3840 = 0.63; at 1024x1024 (4096 tokens) it is max_shift."""
    s = diffusers_flux_sigmas(512, 512, 28)
    assert len(s) == 29 and s[0] == 1.0 and s[-1] == 0.0
    t = 1 - (1 - 1 / 28) / 27
    assert s[1] == pytest.approx(math.exp(0.63) / (math.exp(0.63) + 1 / t - 1), abs=1e-12)
    assert diffusers_flux_sigmas(1024, 1024, 28)[1] == pytest.approx(math.exp(1.15) / (math.exp(1.15) + 1 / t - 1))


# --- run_workflow's size override ----------------------------------------------------------------------

@pytest.mark.parametrize("name", WORKFLOWS)
def test_size_override_sets_the_shared_width_and_height(name, frontend, object_info):
    """``python -m devtools.run_workflow --width W --height H`` sizes the latent and ModelSamplingFlux
    alike (through the Int nodes they share)."""
    p = run_workflow.apply_overrides(api_prompt(name, frontend, object_info), width=768, height=320)
    case = schedule_case(p)
    assert case["latent"] == [768, 320]
    assert case["model_sampling_flux"] is not None, "no ModelSamplingFlux on the sampler's model path"
    assert (case["model_sampling_flux"]["width"], case["model_sampling_flux"]["height"]) == (768, 320)
    assert sorted(v["inputs"]["value"] for v in p.values() if v["class_type"] == "PrimitiveInt") == [320, 768]
