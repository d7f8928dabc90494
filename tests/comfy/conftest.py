"""A real ComfyUI 0.3.75 server with the ThinkDiff pack and random-weight demo models, shared by the
whole node suite (one server, models built once per session)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import comfy_server  # noqa: E402
import ui_to_api  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items):
    # cheap checks first, the interrupt test last (it leaves nothing behind, but runs longest)
    order = {"test_object_info": 0, "test_interrupt": 9}
    items.sort(key=lambda it: next((v for k, v in order.items() if it.name.startswith(k)), 5))


@pytest.fixture(scope="session")
def comfy_dir() -> str:
    d = comfy_server.comfyui_dir()
    if not os.path.isfile(os.path.join(d, "main.py")):
        pytest.fail(f"ComfyUI not found at {d} (no main.py): run scripts/bootstrap.sh or set COMFYUI_DIR to a "
                    f"ComfyUI 0.3.75 folder. The node suite needs a real ComfyUI and is never skipped.",
                    pytrace=False)
    return d


@pytest.fixture(scope="session")
def server(comfy_dir, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("comfy_base"))
    t = time.time()
    subprocess.run([comfy_server.server_python(), os.path.join(ROOT, "scripts", "demo_models.py"),
                    os.path.join(base, "models"), "--comfyui", comfy_dir], check=True,
                   stdout=subprocess.DEVNULL)
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
def object_info(server) -> dict:
    return server.get("/object_info")


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
