"""Package overlays: a folder of exact package versions installed with ``pip --no-deps --target`` beside
a venv and put first on PYTHONPATH for the processes that need them (ComfyUI 0.33.0's packages, the
oldest transformers we claim). The venv itself, and its torch, are never touched.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

MARKER = ".thinkdiff-installed-from"   # holds the pin file's text the overlay was installed from


def requirement_pins(path: str) -> dict[str, str]:
    """{normalised name: version} of the name==version lines of a requirements file."""
    out = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", line)
            if m:
                out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out


def venv_dir(python: str) -> str:
    """The venv (or prefix) of an interpreter: <venv>/bin/python -> <venv>."""
    return os.path.dirname(os.path.dirname(os.path.abspath(python)))


def ready(target: str, pins: str) -> bool:
    """Whether target was installed from exactly this pin file's text."""
    try:
        with open(os.path.join(target, MARKER)) as f, open(pins) as g:
            return f.read() == g.read()
    except OSError:
        return False


def install(target: str, pins: str, python: str, force: bool = False, log=print) -> str:
    """pip install --no-deps --target of a pin file (idempotent; a stale overlay is installed anew,
    since pip --target does not remove old versions)."""
    if not force and ready(target, pins):
        return target
    log(f"installing {os.path.basename(pins)} into {target} (pip --no-deps --target)")
    if os.path.isdir(target):
        shutil.rmtree(target)
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--target", target, "-r", pins], check=True)
    with open(pins) as f, open(os.path.join(target, MARKER), "w") as g:
        g.write(f.read())
    return target
