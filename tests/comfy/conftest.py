"""A real ComfyUI 0.3.75 server with the ThinkDiff pack and random-weight demo models, shared by the
whole node suite (one server, models built once per session). ``server`` is the process (its log,
its base folder), ``client`` talks to it over HTTP. ``comfy_dir`` comes from tests/conftest.py."""
from __future__ import annotations

import os
import sys
import time

import pytest

from devtools import comfy_server, demo_models, ui_to_api


def pytest_collection_modifyitems(config, items):
    # cheap checks first, the interrupt test last (it leaves nothing behind, but runs longest)
    order = {"test_object_info": 0, "test_interrupt": 9}
    items.sort(key=lambda it: next((v for k, v in order.items() if it.name.startswith(k)), 5))


@pytest.fixture(scope="session")
def server(comfy_dir, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("comfy_base"))
    t = time.time()
    # the FLUX/VAE layouts come from ComfyUI's classes: built in a child process where comfy imports
    demo_models.build_in_subprocess(os.path.join(base, "models"), comfy_dir)
    # a file that is not an aligner, for the bad-input tests
    with open(os.path.join(base, "models", "thinkdiff", "broken_aligner.pth"), "wb") as f:
        f.write(b"this is not a checkpoint\n" * 10)
    print(f"\n[node suite] demo models built in {time.time() - t:.1f} s", file=sys.stderr)
    comfy_server.install_pack(base)
    comfy_server.copy_example_inputs(base)
    srv = comfy_server.ComfyServer(base, comfy_dir=comfy_dir)
    t = time.time()
    srv.start()
    print(f"[node suite] ComfyUI ready in {time.time() - t:.1f} s at {srv.url}", file=sys.stderr)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    return server.client()


@pytest.fixture(scope="session")
def object_info(client) -> dict:
    return client.object_info()


@pytest.fixture(scope="session")
def frontend(server):
    """The real frontend in headless Chromium, or None where Chromium/playwright are missing
    (outside CI: the pure-Python converter is used instead)."""
    ok, why = ui_to_api.browser_available()
    if not ok:
        print(f"[node suite] real frontend unavailable ({why}); converting with the pure-Python converter",
              file=sys.stderr)
        yield None
        return
    with ui_to_api.BrowserFrontend(server.url) as fe:
        yield fe
