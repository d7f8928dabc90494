"""Real ComfyUI servers with the ThinkDiff pack and random-weight demo models, shared by the whole node
suite: one per tested ComfyUI version (devtools.comfy_versions: 0.3.75 and 0.33.0), so every test that
uses a server runs once per version, its id naming it (``[comfyui-0.3.75]``, ``[comfyui-0.33.0]``). The
versions run one after the other (one server at a time); each has its own base folder, with demo models
built by that version's ComfyUI code (files whose layout is the same are linked, not built again).
``server`` is the process (its log, its base folder), ``client`` talks to it over HTTP, ``comfyui`` is
the version (its folder, its package overlay), ``comfy_dir`` its folder, ``comfy_features`` what it
offers that the pack acts on."""
from __future__ import annotations

import os
import sys
import time

import pytest

from devtools import comfy_server, comfy_versions, demo_models, ui_to_api

VERSIONS = comfy_versions.tested()
_MODELS: dict[str, str] = {}     # version -> its models folder (the first one is reused by the others)


def version_of(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    v = callspec.params.get("comfyui") if callspec else None
    return v.version if v else None


@pytest.hookimpl(trylast=True)   # after pytest's own reordering by fixture parameters, which would interleave versions
def pytest_collection_modifyitems(config, items):
    # one version after the other (a session fixture holds one parameter at a time: interleaving would
    # restart the servers); within a version cheap checks first, the interrupt test last
    order = {"test_object_info": 0, "test_interrupt": 9}
    rank = {v.version: i for i, v in enumerate(VERSIONS)}
    here = os.path.dirname(os.path.abspath(__file__)) + os.sep
    slots = [i for i, it in enumerate(items) if str(it.path).startswith(here)]   # only this suite's items move
    ours = sorted((items[i] for i in slots), key=lambda it: (
        rank.get(version_of(it), -1), next((v for k, v in order.items() if it.name.startswith(k)), 5)))
    for i, it in zip(slots, ours):
        items[i] = it


@pytest.fixture(scope="session", params=VERSIONS, ids=[v.id for v in VERSIONS])
def comfyui(request) -> comfy_versions.ComfyVersion:
    v = request.param
    why = v.problem()
    if why:
        pytest.fail(f"{v.id}: {why}. The node suite runs against every tested ComfyUI version and is never "
                    f"skipped.", pytrace=False)
    return v


@pytest.fixture(scope="session")
def comfy_dir(comfyui) -> str:
    return comfyui.dir


@pytest.fixture(scope="session")
def comfy_features(comfyui) -> dict:
    """What this ComfyUI version offers that the pack acts on (devtools.comfy_versions.features):
    ``autogrow`` and ``progress_throttle_s``."""
    return comfy_versions.features(comfyui.dir)


@pytest.fixture(scope="session")
def server(comfyui, tmp_path_factory):
    base = str(tmp_path_factory.mktemp(f"comfy_base_{comfyui.version}"))
    models = os.path.join(base, "models")
    t = time.time()
    # the FLUX/VAE layouts come from ComfyUI's classes: built in a child process where that comfy imports
    demo_models.build_in_subprocess(models, comfyui.dir, reuse_from=next(iter(_MODELS.values()), None))
    _MODELS.setdefault(comfyui.version, models)
    # a file that is not an aligner, for the bad-input tests
    with open(os.path.join(models, "thinkdiff", "broken_aligner.pth"), "wb") as f:
        f.write(b"this is not a checkpoint\n" * 10)
    print(f"\n[node suite {comfyui.id}] demo models built in {time.time() - t:.1f} s", file=sys.stderr)
    comfy_server.install_pack(base)
    comfy_server.install_demo_nodes(base)    # the tiny-T5 DualCLIPLoader the ThinkDiff-CLIP workflows' demo runs use
    comfy_server.copy_example_inputs(base)
    srv = comfy_server.ComfyServer(base, comfy_dir=comfyui.dir)
    t = time.time()
    srv.start()
    print(f"[node suite {comfyui.id}] ComfyUI ready in {time.time() - t:.1f} s at {srv.url}", file=sys.stderr)
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
