"""Start/stop a real ComfyUI server with the ThinkDiff pack installed, and talk to it over HTTP.

Shared by the node tests (tests/comfy), scripts/run_workflow.py and scripts/make_workflows.py.
Standard library only (plus the server's own Python).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_NAME = "ThinkDiff"
EXAMPLE_INPUTS = os.path.join(ROOT, "example_inputs")


def comfyui_dir() -> str:
    return os.environ.get("COMFYUI_DIR") or os.path.join(ROOT, ".comfyui")


def server_python() -> str:
    return os.environ.get("THINKDIFF_PYTHON") or sys.executable


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
        shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".git", ".venv", ".comfyui", "__pycache__"))
    return dst


def copy_example_inputs(base_dir: str) -> None:
    d = os.path.join(base_dir, "input")
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(EXAMPLE_INPUTS):
        shutil.copy2(os.path.join(EXAMPLE_INPUTS, f), os.path.join(d, f))


class ComfyServer:
    """A ComfyUI process: ``main.py --cpu --base-directory <base_dir>`` on a free local port."""

    def __init__(self, base_dir: str, comfy_dir: str | None = None, port: int | None = None,
                 python: str | None = None, extra_args: list[str] | None = None, log_path: str | None = None,
                 cpu: bool = True):
        self.base_dir = os.path.abspath(base_dir)
        self.comfy_dir = comfy_dir or comfyui_dir()
        self.port = port or free_port()
        self.python = python or server_python()
        self.extra_args = extra_args or []
        self.cpu = cpu
        self.log_path = log_path or os.path.join(self.base_dir, "comfyui.log")
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> "ComfyServer":
        main = os.path.join(self.comfy_dir, "main.py")
        if not os.path.isfile(main):
            raise FileNotFoundError(f"ComfyUI not found at {self.comfy_dir} (no main.py). Run scripts/bootstrap.sh "
                                    f"or set COMFYUI_DIR to a ComfyUI 0.3.75 checkout")
        os.makedirs(os.path.join(self.base_dir, "user"), exist_ok=True)
        cmd = [self.python, main, *(["--cpu"] if self.cpu else []), "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", self.base_dir,
               "--database-url", f"sqlite:///{os.path.join(self.base_dir, 'user', 'comfyui.db')}",
               *self.extra_args]
        self._log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   DO_NOT_TRACK="1")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode} during start-up; "
                                   f"log:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s; log:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)   # by PID: the process we started
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_tail(self, n: int = 60) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return "(no log)"

    # --- HTTP ---------------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def post(self, path: str, payload: dict | None = None, timeout: float = 30):
        data = json.dumps(payload or {}).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:   # 400 on validation errors: the body holds them
            body = e.read()
            try:
                return {"http_status": e.code, **json.loads(body)}
            except ValueError:
                raise RuntimeError(f"POST {path} -> HTTP {e.code}: {body[:500]!r}") from e
        return json.loads(body) if body else None

    def queue(self, prompt: dict, workflow: dict | None = None) -> dict:
        """POST /prompt; returns the server's answer (prompt_id, or error + node_errors)."""
        payload = {"prompt": prompt, "client_id": f"thinkdiff-{uuid.uuid4().hex[:8]}"}
        if workflow is not None:
            payload["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
        return self.post("/prompt", payload)

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """Wait until the prompt is in /history; returns its history entry."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            h = self.get(f"/history/{prompt_id}")
            if h and prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
                st = h[prompt_id]["status"]
                if st.get("status_str") in ("success", "error") or st.get("completed"):
                    return h[prompt_id]
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died (code {self.proc.returncode}); log:\n{self.log_tail()}")
            time.sleep(0.3)
        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f} s; log:\n{self.log_tail()}")

    def run(self, prompt: dict, workflow: dict | None = None, timeout: float = 600) -> dict:
        r = self.queue(prompt, workflow)
        if "prompt_id" not in r:
            raise PromptRejected(r)
        return self.wait(r["prompt_id"], timeout)

    def interrupt(self) -> None:
        self.post("/interrupt", {})


class PromptRejected(RuntimeError):
    """POST /prompt answered with validation errors (node_errors)."""

    def __init__(self, answer: dict):
        self.answer = answer
        super().__init__(format_prompt_error(answer))


def format_prompt_error(answer: dict) -> str:
    parts = [answer.get("error", {}).get("message", "") + " " + answer.get("error", {}).get("details", "")]
    for nid, ne in (answer.get("node_errors") or {}).items():
        for e in ne.get("errors", []):
            parts.append(f"node {nid} ({ne.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(p.strip() for p in parts if p.strip())


def history_messages(entry: dict) -> list[tuple[str, dict]]:
    return [(m[0], m[1]) for m in entry.get("status", {}).get("messages", [])]


def execution_error(entry: dict) -> dict | None:
    for kind, data in history_messages(entry):
        if kind == "execution_error":
            return data
    return None


def output_images(entry: dict) -> list[dict]:
    return [img for out in entry.get("outputs", {}).values() for img in out.get("images", [])
            if img.get("type") == "output"]


def output_texts(entry: dict) -> list[str]:
    return [t for out in entry.get("outputs", {}).values() for t in out.get("text", [])]
