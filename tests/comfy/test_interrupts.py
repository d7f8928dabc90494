"""Cancelling a prompt (POST /interrupt, the UI's Cancel) while the VLM generates and while FLUX samples,
once per tested ComfyUI version: the server stops promptly and recovers, the VLM is released, and nothing
half-made stays in ComfyUI's cache: the next identical prompt runs the interrupted nodes again and gives
exactly the result of an uninterrupted run (the same VLM text, the same image)."""
from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
import uuid

import numpy as np
import pytest

from devtools import comfy_client
from tests.comfy.test_nodes_server import image_array, node_id, prompt_for, run_ok

ENC = "ThinkDiffVLMEncode"
SAMPLING_SEED = 97


class Watcher:
    """The /ws messages a client id receives (what the frontend sees), collected in a thread."""

    def __init__(self, url: str):
        self.url, self.client_id, self.messages = url, f"thinkdiff-int-{uuid.uuid4().hex[:8]}", []
        self._ready, self._stop, self.error = threading.Event(), threading.Event(), None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self):
        try:
            asyncio.run(self._run())
        except Exception as e:  # noqa: BLE001 - reported by __enter__
            self.error = e
            self._ready.set()

    async def _run(self):
        import aiohttp
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{self.url}/ws?clientId={self.client_id}") as ws:
                self._ready.set()
                while not self._stop.is_set():
                    try:
                        msg = await ws.receive(timeout=0.2)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        self.messages.append(json.loads(msg.data))
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        return

    def __enter__(self) -> "Watcher":
        self._thread.start()
        assert self._ready.wait(180) and self.error is None, f"could not connect to /ws: {self.error!r}"
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def wait_progress(self, node: str, at_least: int = 1, timeout: float = 300) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for m in list(self.messages):
                if m["type"] == "progress" and m["data"].get("node") == node and m["data"]["value"] >= at_least:
                    return m["data"]
            time.sleep(0.02)
        raise TimeoutError(f"no progress on node {node} within {timeout:.0f} s: {self.messages[-5:]}")


def interrupt_at(server, prompt: dict, node: str) -> tuple[dict, float]:
    """Queue the prompt, POST /interrupt as soon as `node` reports progress; (history entry, seconds the
    server took to stop)."""
    with Watcher(server.url) as w:
        client = comfy_client.ComfyClient(server.url, client_id=w.client_id, check=server.check_running,
                                          describe=server.log_tail)
        answer = client.queue(prompt)
        assert "prompt_id" in answer, answer
        w.wait_progress(node)
        t = time.time()
        client.interrupt()
        entry = client.wait(answer["prompt_id"], timeout=300)
    return entry, time.time() - t


def interrupted_node(entry: dict) -> str:
    kinds = dict(comfy_client.history_messages(entry))
    assert "execution_interrupted" in kinds, list(kinds)
    assert entry["status"]["status_str"] == "error"
    assert not comfy_client.output_images(entry), "an interrupted prompt saved an image"
    return kinds["execution_interrupted"]["node_type"]


def cached_nodes(entry: dict) -> set:
    return {n for k, d in comfy_client.history_messages(entry) if k == "execution_cached" for n in d["nodes"]}


def vlm_loads(server) -> int:
    """How often ComfyUI moved the VLM onto its device (logged once per load)."""
    return server.log_text().count("Requested to load PatcherModule")


@pytest.fixture(scope="module")
def slow_prompt(frontend, object_info):
    """image_text with the most tokens the node takes (4096) and keep_loaded off (the VLM is released after
    every generation); the reference runs below use keep_loaded on: the same results, but another cache key."""
    return prompt_for("thinkdiff_image_text.json", frontend, object_info, seed=99,
                      inputs={ENC: {"max_new_tokens": 4096}, "ThinkDiffLoadVLM": {"keep_loaded": False}})


def with_inputs(prompt: dict, **by_class) -> dict:
    p = copy.deepcopy(prompt)
    for class_type, values in by_class.items():
        p[node_id(p, class_type)]["inputs"].update(values)
    return p


def test_interrupt_during_generation(server, client, slow_prompt):
    """Cancel while the VLM generates 4096 tokens: it stops within seconds, the VLM is released, and the
    same prompt (re-run with fewer tokens to keep this short) matches an uninterrupted run exactly."""
    prompt = slow_prompt
    enc = node_id(prompt, ENC)
    entry, stopped_after = interrupt_at(server, prompt, enc)
    assert interrupted_node(entry) == ENC
    assert stopped_after < 20, f"generation took {stopped_after:.1f} s to stop"
    assert client.get("/system_stats")
    # the same graph with 200 tokens: first interrupted, then run again; a reference run with another cache key
    short = with_inputs(prompt, **{ENC: {"max_new_tokens": 200, "seed": 98}})
    reference = run_ok(client, with_inputs(short, ThinkDiffLoadVLM={"keep_loaded": True}))
    entry, _ = interrupt_at(server, short, enc)
    assert interrupted_node(entry) == ENC
    loads = vlm_loads(server)
    again = run_ok(client, short)
    assert enc not in cached_nodes(again), "the interrupted VLM node was served from the cache"
    assert vlm_loads(server) == loads + 1, "the VLM was not released after the interrupted generation"
    assert again["outputs"][enc]["text"] == reference["outputs"][enc]["text"]
    assert np.array_equal(image_array(client, again), image_array(client, reference))


def test_interrupt_during_sampling(server, client, frontend, object_info):
    """Cancel while FLUX samples: the VLM's finished result may be reused, the sampler runs again, and the
    image equals an uninterrupted run's."""
    prompt = prompt_for("thinkdiff_in_context_reasoning.json", frontend, object_info, seed=SAMPLING_SEED, steps=12)
    enc, sampler = node_id(prompt, ENC), node_id(prompt, "KSampler")
    reference = run_ok(client, with_inputs(prompt, ThinkDiffLoadVLM={"keep_loaded": False}))
    entry, stopped_after = interrupt_at(server, prompt, sampler)
    assert interrupted_node(entry) == "KSampler"
    assert stopped_after < 20, f"sampling took {stopped_after:.1f} s to stop"
    again = run_ok(client, copy.deepcopy(prompt))
    assert sampler not in cached_nodes(again), "the interrupted sampler was served from the cache"
    show = node_id(prompt, "PreviewAny")   # an output node: its ui is in the entry even when cached
    assert again["outputs"][show]["text"] == reference["outputs"][show]["text"] == reference["outputs"][enc]["text"]
    assert np.array_equal(image_array(client, again), image_array(client, reference))
    # and once more: everything is cached now, the same image again
    assert np.array_equal(image_array(client, run_ok(client, copy.deepcopy(prompt))), image_array(client, reference))
