"""Soak: 50 consecutive prompts with varied inputs (the three shipped workflows, seeds, token counts, texts,
image sizes) against a real ComfyUI server with the tiny demo models, with ComfyUI's default cache and
with the cache disabled (``--cache-none``: every node runs again for every prompt, loaders included). The
server process's resident memory (RSS, psutil) is read after a warm-up and at the end; its growth must
stay under :data:`GROWTH_BOUND_MB`. Measured numbers: bench/RESULTS.md ("Soak").

Marked ``slow`` (``-m "not slow"`` leaves it out while iterating); the default test command runs it. Only on
the first tested ComfyUI (0.3.75): the memory behaviour under test is the pack's, not the version's.
"""
from __future__ import annotations

import os
import sys
import time

import psutil
import pytest

from devtools import comfy_server, run_workflow
from tests.comfy.conftest import VERSIONS
from tests.comfy.test_nodes_server import FLUX_WORKFLOWS, prompt_for, run_ok

PROMPTS, WARMUP = 50, 6
GROWTH_BOUND_MB = 150   # resident memory may grow this much from after the warm-up to the end
TEXTS = {"thinkdiff_in_context_reasoning.json": ["red, blue, green", "cat, dog, bird", "one, two, three"],
         "thinkdiff_image_text.json": ["Describe the style.", "A poster of this cup.", "Make it a watercolor."],
         "thinkdiff_two_images.json": ["", "Blend them.", "Both on a table."]}
pytestmark = [pytest.mark.slow,
              pytest.mark.parametrize("comfyui", VERSIONS[:1], indirect=True, ids=[VERSIONS[0].id], scope="session")]


def varied_prompts(frontend, object_info) -> list[dict]:
    names = [os.path.basename(w) for w in FLUX_WORKFLOWS]
    bases = {n: prompt_for(n, frontend, object_info) for n in names}
    out = []
    for i in range(PROMPTS):
        name = names[i % len(names)]
        size = (64, 96, 128)[(i // 3) % 3]
        out.append(run_workflow.apply_overrides(
            bases[name], seed=1000 + i, width=size, height=size,
            inputs={"ThinkDiffVLMEncode": {"max_new_tokens": (4, 8, 16, 32)[i % 4],
                                           "text": TEXTS[name][(i // 3) % 3]}}))
    return out


def soak(server, prompts: list[dict]) -> dict:
    client = server.client()
    proc = psutil.Process(server.proc.pid)
    t0 = time.time()
    rss = []
    for i, p in enumerate(prompts):
        run_ok(client, p)
        rss.append(proc.memory_info().rss / 2**20)
    after_warmup, end = rss[WARMUP - 1], rss[-1]
    return {"prompts": len(prompts), "seconds": round(time.time() - t0, 1), "rss_after_warmup_mb": round(after_warmup),
            "rss_end_mb": round(end), "rss_max_mb": round(max(rss[WARMUP - 1:])),
            "growth_mb": round(end - after_warmup), "growth_max_mb": round(max(rss[WARMUP - 1:]) - after_warmup)}


def report(kind: str, numbers: dict) -> None:
    print(f"\n[soak {kind}] {numbers}", file=sys.stderr)


def test_soak_default_cache(server, frontend, object_info):
    numbers = soak(server, varied_prompts(frontend, object_info))
    report("default cache", numbers)
    assert numbers["growth_max_mb"] < GROWTH_BOUND_MB, numbers


def test_soak_cache_none(server, frontend, object_info, comfy_dir, tmp_path):
    """The same 50 prompts on a second server of the same ComfyUI started with --cache-none (sharing the
    session server's models folder)."""
    base = str(tmp_path / "base")
    os.makedirs(base)
    os.symlink(os.path.join(server.base_dir, "models"), os.path.join(base, "models"))
    comfy_server.install_pack(base)
    comfy_server.copy_example_inputs(base)
    srv = comfy_server.ComfyServer(base, comfy_dir=comfy_dir, extra_args=["--cache-none"])
    srv.start(timeout=600)   # a loaded machine can take minutes to start a second ComfyUI
    try:
        assert "--cache-none" in " ".join(srv.command())
        numbers = soak(srv, varied_prompts(frontend, object_info))
    finally:
        srv.stop()
    report("--cache-none", numbers)
    assert numbers["growth_max_mb"] < GROWTH_BOUND_MB, numbers
