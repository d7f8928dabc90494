"""Run the core tests against the oldest transformers the pack claims (requirements-floor.txt).

    python -m devtools.floor install   # (idempotent) pip install --no-deps --target .venv/floor -r requirements-floor.txt
    python -m devtools.floor test      # install if needed, then pytest tests/core with those versions first
                                       # on PYTHONPATH (the test venv's torch etc. underneath)

tests/test_transformers_floor.py runs ``test`` as part of the suite.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

from . import overlay
from .paths import ROOT

FLOOR_FILE = os.path.join(ROOT, "requirements-floor.txt")
TARGET = os.path.abspath(os.environ.get("THINKDIFF_FLOOR_DIR") or os.path.join(overlay.venv_dir(sys.executable), "floor"))


def pins() -> dict[str, str]:
    """{'transformers': '4.56.0', 'huggingface-hub': ...} from requirements-floor.txt."""
    return overlay.requirement_pins(FLOOR_FILE)


def stated_floor(path: str = os.path.join(ROOT, "requirements.txt")) -> str | None:
    """The transformers floor a requirements file states ('transformers>=X' -> 'X')."""
    with open(path) as fh:
        m = re.search(r"^\s*transformers\s*>=\s*([^\s,;#]+)", fh.read(), re.M)
    return m.group(1) if m else None


def install(force: bool = False) -> str:
    return overlay.install(TARGET, FLOOR_FILE, sys.executable, force=force, log=lambda m: None)


def env() -> dict:
    """The environment of a process that sees the floor versions first."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([TARGET, ROOT]))


def versions() -> str:
    r = subprocess.run([sys.executable, "-c", "import transformers, tokenizers, huggingface_hub as h; "
                        "print(transformers.__version__, tokenizers.__version__, h.__version__)"],
                       env=env(), capture_output=True, text=True, check=True, cwd=ROOT)
    return r.stdout.strip()


def test(pytest_args: list[str] | None = None) -> subprocess.CompletedProcess:
    install()
    return subprocess.run([sys.executable, "-m", "pytest", "tests/core", "-q", "-p", "no:cacheprovider",
                           *(pytest_args or [])], env=env(), cwd=ROOT, capture_output=True, text=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.floor", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["install", "test"])
    ap.add_argument("--force", action="store_true", help="reinstall even if the floor versions are there")
    a = ap.parse_args(argv)
    if a.command == "install":
        print(install(force=a.force))
        print("transformers, tokenizers, huggingface_hub:", versions())
        return 0
    r = test()
    print(r.stdout[-5000:], r.stderr[-2000:], sep="\n")
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
