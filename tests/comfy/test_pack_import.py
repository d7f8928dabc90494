"""The pack's top-level __init__.py: never takes ComfyUI down, and imports fast."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LOAD = textwrap.dedent("""
    import importlib.util, logging, sys
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    spec = importlib.util.spec_from_file_location("thinkdiff_pack", sys.argv[1] + "/__init__.py",
                                                  submodule_search_locations=[sys.argv[1]])
    m = importlib.util.module_from_spec(spec); sys.modules["thinkdiff_pack"] = m
    spec.loader.exec_module(m)
    print("entrypoint:", hasattr(m, "comfy_entrypoint"), "transformers:", "transformers" in sys.modules)
""")


def test_old_comfyui_without_v3_api_logs_instead_of_crashing(tmp_path):
    (tmp_path / "comfy").mkdir()                     # a ComfyUI without comfy_api (older than 0.3.75)
    (tmp_path / "comfy" / "__init__.py").write_text("")
    r = subprocess.run([sys.executable, "-c", LOAD, ROOT], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "entrypoint: False" in r.stdout
    assert "ERROR ThinkDiff: ComfyUI's V3 node API (comfy_api.latest) could not be imported" in r.stderr
    assert "ComfyUI 0.3.75 or newer" in r.stderr


def test_pack_imports_fast_in_the_real_server(server):
    """ComfyUI's start-up table of custom-node import times, and no transformers at import."""
    with open(server.log_path, errors="replace") as f:
        log = f.read()
    m = re.search(r"([\d.]+) seconds( \(IMPORT FAILED\))?: \S*custom_nodes/ThinkDiff", log)
    assert m, "the pack is missing from ComfyUI's import-time table"
    assert not m.group(2), "ComfyUI reports IMPORT FAILED for the pack"
    assert float(m.group(1)) < 3.0, f"pack import took {m.group(1)} s"
