"""Run tooling that imports ComfyUI's own packages (``comfy``, ``comfy_extras``, ComfyUI's ``nodes.py``).

ComfyUI is not an installed package: its modules import only in a process whose search path holds
the ComfyUI folder. Nothing in this repository edits the import path at run time; such code runs in
a child process started by :func:`run_module`, with

* ``cwd=<ComfyUI folder>``: ``python -m`` puts the working folder first on the path, so ComfyUI's
  top-level modules (``nodes.py``, ``utils/``, ``tests/``) win over this pack's ``nodes/`` package;
* ``PYTHONPATH=<ComfyUI folder>:<repository root>``: ``devtools`` and ``thinkdiff_core`` import too;
  a ComfyUI version with a package overlay (devtools.comfy_versions, e.g. 0.33.0) gets it in front.

Arguments that are paths must therefore be absolute (the child runs in another folder).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from devtools import paths

# set in the child so that a module that re-launches itself through run_module cannot loop
_CHILD_FLAG = "THINKDIFF_WITH_COMFY"


def python() -> str:
    """The interpreter for ComfyUI processes: $THINKDIFF_PYTHON, else the current one."""
    return os.environ.get("THINKDIFF_PYTHON") or sys.executable


def check_comfyui(comfy_dir: str) -> str:
    comfy_dir = os.path.abspath(comfy_dir)
    if not os.path.isfile(os.path.join(comfy_dir, "comfy", "model_management.py")):
        raise FileNotFoundError(f"no ComfyUI at {comfy_dir} (no comfy/model_management.py): run "
                                f"scripts/bootstrap.sh, pass --comfyui or set COMFYUI_DIR to a ComfyUI folder (0.3.75 or 0.33.0)")
    return comfy_dir


def env(comfy_dir: str | None = None, base: dict | None = None) -> dict:
    """Environment for a child process in which ComfyUI's packages and this repository both import."""
    from devtools.comfy_versions import overlay_for
    comfy_dir = check_comfyui(comfy_dir or paths.comfyui_dir())
    e = dict(os.environ if base is None else base)
    # a ComfyUI newer than the venv's (e.g. 0.33.0) brings its own package overlay: first on the path
    extra = [p for p in (overlay_for(comfy_dir), comfy_dir, paths.ROOT) if p]
    e["PYTHONPATH"] = os.pathsep.join(extra + [p for p in e.get("PYTHONPATH", "").split(os.pathsep) if p and p not in extra])
    e["COMFYUI_DIR"] = comfy_dir
    e[_CHILD_FLAG] = "1"
    e.setdefault("HF_HUB_OFFLINE", "1")
    e.setdefault("TRANSFORMERS_OFFLINE", "1")
    return e


def importable() -> bool:
    """Whether ComfyUI's ``comfy`` package imports in this process."""
    try:
        return importlib.util.find_spec("comfy.model_management") is not None
    except ModuleNotFoundError:
        return False


def in_child() -> bool:
    return os.environ.get(_CHILD_FLAG) == "1"


def require(what: str) -> None:
    """Raise a readable error when ComfyUI's packages are not importable here."""
    if not importable():
        raise RuntimeError(f"{what} needs ComfyUI's `comfy` package, which does not import in this process. "
                           f"Run it through devtools.with_comfy.run_module (a child process with cwd=<ComfyUI> and "
                           f"PYTHONPATH=<ComfyUI>:<repository>), or start Python that way yourself.")


def cpu_mode() -> None:
    """Import ComfyUI's model management in CPU mode (no CUDA probing); call before other comfy imports."""
    require("cpu_mode")
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401


def command(module: str, args: list[str] | tuple = ()) -> list[str]:
    return [python(), "-m", module, *map(str, args)]


def run_module(module: str, args: list[str] | tuple = (), comfy_dir: str | None = None, *,
               check: bool = True, **kw) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in a child process where ComfyUI imports (see the module doc)."""
    comfy_dir = check_comfyui(comfy_dir or paths.comfyui_dir())
    return subprocess.run(command(module, args), cwd=comfy_dir, env=env(comfy_dir, kw.pop("env", None)),
                          check=check, **kw)
