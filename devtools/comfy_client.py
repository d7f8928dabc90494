"""An HTTP client for any running ComfyUI (``ComfyClient(url)``): queue a prompt, wait for it, read its
history, interrupt, fetch images. Standard library only.

It knows nothing about how the server was started: a server that this tooling started
(:class:`devtools.comfy_server.ComfyServer`) hands its client a ``check`` hook (raises when the process
died) and a ``describe`` hook (its log tail, for error messages).
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Callable


class PromptRejected(RuntimeError):
    """POST /prompt answered with validation errors (node_errors)."""

    def __init__(self, answer: dict):
        self.answer = answer
        super().__init__(format_prompt_error(answer))


class ComfyClient:
    def __init__(self, url: str, *, check: Callable[[], None] | None = None,
                 describe: Callable[[], str] | None = None, client_id: str | None = None):
        self.url = url.rstrip("/")
        self.client_id = client_id or f"thinkdiff-{uuid.uuid4().hex[:8]}"
        self._check = check
        self._describe = describe

    def __repr__(self) -> str:
        return f"ComfyClient({self.url!r})"

    def describe(self) -> str:
        """What the server side can tell about itself (a started server: its log tail), or ''."""
        return self._describe() if self._describe else ""

    # --- raw HTTP -----------------------------------------------------------------------------------
    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def get_bytes(self, path: str, timeout: float = 60) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return r.read()

    def post(self, path: str, payload: dict | None = None, timeout: float = 30):
        """POST JSON; an HTTP error whose body is JSON (400 with node_errors) is returned as that body
        plus ``http_status``."""
        data = json.dumps(payload or {}).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return {"http_status": e.code, **json.loads(body)}
            except ValueError:
                raise RuntimeError(f"POST {path} -> HTTP {e.code}: {body[:500]!r}") from e
        return json.loads(body) if body else None

    def ready(self, timeout: float = 2) -> bool:
        try:
            self.get("/system_stats", timeout=timeout)
            return True
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    # --- ComfyUI's API ------------------------------------------------------------------------------
    def object_info(self, node_class: str | None = None) -> dict:
        return self.get("/object_info" + (f"/{node_class}" if node_class else ""), timeout=60)

    def queue(self, prompt: dict, workflow: dict | None = None) -> dict:
        """POST /prompt; returns the server's answer (prompt_id, or error + node_errors)."""
        payload = {"prompt": prompt, "client_id": self.client_id}
        if workflow is not None:
            payload["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
        return self.post("/prompt", payload)

    def history(self, prompt_id: str) -> dict | None:
        """The prompt's history entry, or None while it is not finished."""
        h = self.get(f"/history/{prompt_id}")
        if h and prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
            return h[prompt_id]
        return None

    def wait(self, prompt_id: str, timeout: float = 600, poll: float = 0.3) -> dict:
        """Wait until the prompt is in /history (success, error or interrupted); returns its entry."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = self.history(prompt_id)
            if entry is not None:
                return entry
            if self._check is not None:
                self._check()
            time.sleep(poll)
        context = self.describe()
        raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f} s" + (f"; log:\n{context}" if context else ""))

    def run(self, prompt: dict, workflow: dict | None = None, timeout: float = 600) -> dict:
        """Queue and wait; raises PromptRejected when the server refuses the prompt."""
        r = self.queue(prompt, workflow)
        if "prompt_id" not in r:
            raise PromptRejected(r)
        return self.wait(r["prompt_id"], timeout)

    def interrupt(self) -> None:
        self.post("/interrupt", {})

    def image(self, img: dict) -> bytes:
        """The bytes of an image listed in a history entry's outputs."""
        q = urllib.parse.urlencode({"filename": img["filename"], "subfolder": img.get("subfolder", ""),
                                    "type": img.get("type", "output")})
        return self.get_bytes(f"/view?{q}")


# --- reading answers and history entries -----------------------------------------------------------

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
