"""A ComfyUI server process with the ThinkDiff pack installed: start, stop, its log.

``ComfyServer(base_dir).start()`` runs ``main.py --cpu --base-directory <base_dir>`` on a free local port;
``server.client()`` is a :class:`devtools.comfy_client.ComfyClient` for it (talking to a server started
elsewhere needs only ``ComfyClient(url)``). Used by the node tests (tests/comfy),
``devtools.run_workflow`` and ``devtools.make_workflows``. Standard library only.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

from devtools import comfy_versions, paths
from devtools.comfy_client import ComfyClient
from devtools.with_comfy import python as server_python

PACK_NAME = "ThinkDiff"
ROOT = paths.ROOT

__all__ = ["PACK_NAME", "ComfyServer", "ServerDied", "copy_example_inputs", "free_port", "install_demo_nodes",
           "install_pack", "server_python"]


class ServerDied(RuntimeError):
    """The ComfyUI process exited while we were waiting on it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_pack(base_dir: str) -> str:
    """Symlink this repository into <base_dir>/custom_nodes/ThinkDiff (a copy where symlinks fail)."""
    dst_dir = os.path.join(base_dir, "custom_nodes")
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, PACK_NAME)
    if os.path.islink(dst) and os.path.realpath(dst) == os.path.realpath(ROOT):
        return dst
    if os.path.lexists(dst):
        raise FileExistsError(f"{dst} exists and is not a link to {ROOT}; remove it first")
    try:
        os.symlink(ROOT, dst, target_is_directory=True)
    except OSError:
        shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".git", ".venv", ".comfyui", ".comfyui-*", ".cache", "__pycache__"))
    return dst


DEMO_NODES_NAME = "ThinkDiffDemoNodes"


def install_demo_nodes(base_dir: str) -> str:
    """Symlink devtools/demo_nodes (the tiny-T5 DualCLIPLoader the demo models need, test/demo only) into
    <base_dir>/custom_nodes/ThinkDiffDemoNodes (a copy where symlinks fail)."""
    src = os.path.join(ROOT, "devtools", "demo_nodes")
    dst = os.path.join(base_dir, "custom_nodes", DEMO_NODES_NAME)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.islink(dst) and os.path.realpath(dst) == os.path.realpath(src):
        return dst
    if os.path.lexists(dst):
        raise FileExistsError(f"{dst} exists and is not a link to {src}; remove it first")
    try:
        os.symlink(src, dst, target_is_directory=True)
    except OSError:
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def copy_example_inputs(base_dir: str) -> None:
    d = os.path.join(base_dir, "input")
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(paths.EXAMPLE_INPUTS):
        shutil.copy2(os.path.join(paths.EXAMPLE_INPUTS, f), os.path.join(d, f))


class ComfyServer:
    """A ComfyUI process: ``main.py [--cpu] --base-directory <base_dir>`` on a free local port."""

    def __init__(self, base_dir: str, comfy_dir: str | None = None, port: int | None = None,
                 python: str | None = None, extra_args: list[str] | None = None, log_path: str | None = None,
                 cpu: bool = True):
        self.base_dir = os.path.abspath(base_dir)
        self.comfy_dir = os.path.abspath(comfy_dir or paths.comfyui_dir())
        self.port = port or free_port()
        self.python = python or server_python()
        self.extra_args = extra_args or []
        self.cpu = cpu
        self.log_path = log_path or os.path.join(self.base_dir, "comfyui.log")
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self) -> ComfyClient:
        """An HTTP client for this server whose waits fail fast (with the log) if the process dies."""
        return ComfyClient(self.url, check=self.check_running, describe=self.log_tail)

    def command(self) -> list[str]:
        return [self.python, os.path.join(self.comfy_dir, "main.py"), *(["--cpu"] if self.cpu else []),
                "--listen", "127.0.0.1", "--port", str(self.port), "--base-directory", self.base_dir,
                "--database-url", f"sqlite:///{os.path.join(self.base_dir, 'user', 'comfyui.db')}",
                *self.extra_args]

    def start(self, timeout: float = 180) -> "ComfyServer":
        if not os.path.isfile(os.path.join(self.comfy_dir, "main.py")):
            raise FileNotFoundError(f"ComfyUI not found at {self.comfy_dir} (no main.py). Run scripts/bootstrap.sh "
                                    f"or set COMFYUI_DIR to a ComfyUI folder")
        os.makedirs(os.path.join(self.base_dir, "user"), exist_ok=True)
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   DO_NOT_TRACK="1")
        # 0.33.0's own packages (beside the venv of self.python), for this process only
        env = comfy_versions.with_overlay(env, self.comfy_dir, self.python)
        self.proc = subprocess.Popen(self.command(), cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        probe = ComfyClient(self.url)
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.check_running("during start-up")
            if probe.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s; log:\n{self.log_tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_running(self, when: str = "") -> None:
        """Raise ServerDied (with the log tail) if the process we started has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerDied(f"ComfyUI exited with code {self.proc.returncode}{' ' + when if when else ''}; "
                             f"log:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.running():
            self.proc.send_signal(signal.SIGTERM)   # by PID: the process we started
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        text = self.log_text()
        return "\n".join(text.splitlines()[-n:]) if text else "(no log)"
