"""UI-format workflow (what ComfyUI's Save writes) -> API prompt (what POST /prompt runs).

Two converters:
* ``BrowserFrontend``: the real ComfyUI frontend served by the running server, in headless Chromium
  (Debian's ``chromium`` + the ``playwright`` pip package; never ``playwright install``). It loads
  the workflow like a user's drag-and-drop and calls ``app.graphToPrompt()``: the authoritative
  conversion. It also builds UI workflows from node specs and takes screenshots.
* ``python_convert``: a small pure-Python converter driven by the server's /object_info, for
  machines without Chromium. It handles what our workflows use (links, widget values by position,
  the seed's control_after_generate value, muted/bypassed and virtual nodes, Autogrow input groups).
  The tests check that both give the same prompt for every shipped workflow.
"""
from __future__ import annotations

import os
import shutil

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
AUTOGROW = "COMFY_AUTOGROW_V3"


def chromium_path() -> str | None:
    p = os.environ.get("THINKDIFF_CHROMIUM")
    if p and os.path.isfile(p):
        return p
    for c in CHROMIUM_CANDIDATES:
        if os.path.isfile(c):
            return c
    return shutil.which("chromium")


def browser_available() -> tuple[bool, str]:
    """(ok, why not)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False, "the playwright pip package is not installed (pip install playwright)"
    if not chromium_path():
        return False, "no Chromium binary (apt-get install chromium, or set THINKDIFF_CHROMIUM)"
    return True, ""


class BrowserFrontend:
    """The server's real frontend in headless Chromium."""

    def __init__(self, url: str, width: int = 1600, height: int = 1000):
        self.url, self.width, self.height = url, width, height
        self.flagged: list[tuple[str, str]] = []   # known nodes the last load() flagged (see load)

    def __enter__(self):
        from playwright.sync_api import sync_playwright
        ok, why = browser_available()
        if not ok:
            raise RuntimeError(f"cannot use the real frontend: {why}")
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=chromium_path(), headless=True,
                                                 args=["--no-sandbox", "--disable-gpu"])
        self.page = self._browser.new_page(viewport={"width": self.width, "height": self.height})
        # what the page logs from the start (extension loading included): (type, text, source url)
        self.console: list[tuple[str, str, str]] = []
        self.page.on("console", lambda m: self.console.append((m.type, m.text, (m.location or {}).get("url", ""))))
        self.page.on("pageerror", lambda e: self.console.append(("pageerror", f"{e}\n{getattr(e, 'stack', '')}", "")))
        self.page.goto(self.url + "/", wait_until="domcontentloaded", timeout=120_000)
        self.page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        # window.app exists before the frontend opens its first workflow (the previous one, the default
        # graph, or for a new user a blank one): a graph loaded earlier would be replaced by it
        self.page.wait_for_function("window.app.extensionManager?.workflow?.activeWorkflow != null",
                                    timeout=120_000)
        return self

    def __exit__(self, *exc):
        try:
            self._browser.close()
        finally:
            self._pw.stop()

    def load(self, workflow: dict) -> list[str]:
        """Load a UI workflow into the canvas; returns the node types the frontend does not know.

        Nodes the frontend flags for other reasons are not among them: newer frontends (1.4x, ComfyUI
        0.33.0) also set ``has_errors`` on a loader whose model file is not installed. Those land in
        ``self.flagged`` as (type, why) pairs."""
        unknown, self.flagged = self.page.evaluate("""async (wf) => {
            await window.app.loadGraphData(wf);
            const known = t => !!window.LiteGraph.registered_node_types[t];
            const nodes = window.app.graph._nodes;
            return [nodes.filter(n => !known(n.type)).map(n => n.type),
                    nodes.filter(n => n.has_errors && known(n.type)).map(n => [n.type, 'flagged by the frontend '
                        + '(e.g. a model file that is not installed)'])];
        }""", workflow)
        return unknown

    def to_api(self, workflow: dict) -> dict:
        """The API prompt the frontend's Queue button would send for this workflow."""
        ids = sorted(str(n["id"]) for n in workflow["nodes"])   # frontend 1.48.7 (ComfyUI 0.33.0) keeps ids as strings
        for _ in range(3):
            missing = self.load(workflow)
            if missing:
                raise ValueError(f"the frontend does not know these node types: {', '.join(missing)}")
            prompt, shown = self.page.evaluate("""async () => [(await window.app.graphToPrompt()).output,
                                                    window.app.graph._nodes.map(n => n.id)]""")
            if sorted(map(str, shown)) == ids:   # the canvas still shows this workflow (nothing replaced it meanwhile)
                return prompt
        raise RuntimeError(f"the frontend's canvas does not keep the loaded workflow (shows nodes {sorted(shown)}, "
                           f"expected {ids})")

    def load_errors(self, workflow: dict) -> list[str]:
        """Load a workflow and return the texts of alert/toast messages the frontend shows (schema
        validation problems appear there)."""
        self.page.evaluate("() => document.querySelectorAll('.p-toast-message').forEach(e => e.remove())")
        self.load(workflow)
        self.page.wait_for_timeout(500)
        return self.page.evaluate("() => [...document.querySelectorAll('.p-toast-message')].map(e => e.innerText)")

    def screenshot(self, workflow: dict, path: str, scale: float = 0.8, offset=(20, 30)) -> str:
        self.load(workflow)
        self.page.evaluate("""([scale, offset]) => {
            document.querySelectorAll('.p-toast-message, .p-dialog-mask').forEach(e => e.remove());
            for (const el of document.querySelectorAll('div')) {        // the "what's new" banner
                if (el.children.length && /^Introducing/.test(el.innerText || '') && el.innerText.length < 200) {
                    const buttons = el.querySelectorAll('button');
                    if (buttons.length) { buttons[buttons.length - 1].click(); break; }
                }
            }
            const ds = window.app.canvas.ds; ds.scale = scale; ds.offset = offset;
            window.app.canvas.setDirty(true, true);
        }""", [scale, list(offset)])
        self.page.wait_for_timeout(1000)
        self.page.screenshot(path=path)
        return path

    def build(self, nodes: list[dict]) -> dict:
        """Build a workflow in the canvas from node specs and return the workflow the frontend itself
        saves (``(await app.graphToPrompt()).workflow``; a bare ``graph.serialize()`` holds nulls that
        the frontend's schema check rejects on load)."""
        self._build(nodes)
        wf = self.page.evaluate("async () => (await window.app.graphToPrompt()).workflow")
        return _drop_nulls(wf)

    def _build(self, nodes: list[dict]) -> dict:
        """Spec: {"key", "type", "pos": [x, y], "widgets": {name: value},
        "links": {input_name: [source_key, output_index]}, "title"?, "size"?}."""
        return self.page.evaluate("""(specs) => {
            const LG = window.LiteGraph, graph = window.app.graph;
            graph.clear();
            const byKey = {};
            for (const s of specs) {
                const n = LG.createNode(s.type);
                if (!n) throw new Error('unknown node type ' + s.type);
                n.pos = s.pos;
                if (s.title) n.title = s.title;
                if (s.color) { n.color = s.color; n.bgcolor = s.bgcolor; }
                Object.assign(n.properties, s.properties || {});
                graph.add(n);
                for (const [name, value] of Object.entries(s.widgets || {})) {
                    // by name, else by label: frontend 1.48.7 (ComfyUI 0.33.0) names some widgets otherwise,
                    // e.g. PrimitiveInt's "control after generate" widget is called "fixed"
                    const w = (n.widgets || []).find(w => w.name === name)
                        ?? (n.widgets || []).find(w => w.label === name.replace(/_/g, ' '));
                    if (!w) throw new Error(s.type + ' has no widget ' + name + ': ' + (n.widgets||[]).map(w=>w.name));
                    w.value = value;
                }
                if (s.size) n.size = s.size; else n.setSize(n.computeSize());
                byKey[s.key] = n;
            }
            for (const s of specs) {
                for (const [inputName, [srcKey, slot]] of Object.entries(s.links || {})) {
                    const target = byKey[s.key], src = byKey[srcKey];
                    // an input of an Autogrow group is named "<group>.<slot>"; the spec may give the slot
                    let idx = target.inputs.findIndex(i => i.name === inputName);
                    if (idx < 0) idx = target.inputs.findIndex(i => i.name.endsWith('.' + inputName));
                    if (idx < 0) throw new Error(s.type + ' has no input ' + inputName);
                    src.connect(slot, target, idx);
                }
            }
            graph.setDirtyCanvas(true, true);
            return true;
        }""", nodes)


def _drop_nulls(obj):
    """Remove null-valued keys (e.g. floatingLinks, definitions, slot_index) recursively."""
    if isinstance(obj, dict):
        return {k: _drop_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_nulls(v) for v in obj]
    return obj


def python_convert(workflow: dict, object_info: dict) -> dict:
    """Pure-Python UI -> API conversion for the subset of the format our workflows use."""
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"])
        else:
            links[link[0]] = (link[1], link[2])
    nodes = {n["id"]: n for n in workflow["nodes"]}
    prompt = {}
    for node in workflow["nodes"]:
        ntype = node["type"]
        if ntype in VIRTUAL_NODES or node.get("mode", 0) in (2, 4):   # 2 = muted, 4 = bypassed
            continue
        if ntype not in object_info:
            raise ValueError(f"node {node['id']}: unknown node type {ntype} (is its pack installed?)")
        info = object_info[ntype]
        order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        inputs = {}
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):
            values = None
        pos = 0
        for name in order.get("required", []) + order.get("optional", []):
            spec = specs[name]
            typ, opts = spec[0], (spec[1] if len(spec) > 1 else {})
            if typ == AUTOGROW:   # a growing group (ComfyUI 0.33.0): its connected slots, as "<group>.<slot>"
                for slot in autogrow_slots(opts):
                    # a slot saved before the node grew by itself carries the bare slot name (as the
                    # pack's JS extension renames it on load)
                    link = linked.get(f"{name}.{slot}", linked.get(slot))
                    if link is not None:
                        inputs[f"{name}.{slot}"] = _source(node, f"{name}.{slot}", links[link], nodes)
                continue
            if name not in linked:   # a slot saved inside a group by a newer ComfyUI ("images.image_1")
                grouped = [k for k in linked if k.rsplit(".", 1)[-1] == name and "." in k]
                if grouped:
                    linked[name] = linked[grouped[0]]
            is_widget = (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput")
            if is_widget and values is not None:
                if pos < len(values):
                    inputs[name] = values[pos]
                pos += 1
                if typ == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
                    pos += 1   # the frontend's "control after generate" value follows the seed
            elif is_widget and isinstance(node.get("widgets_values"), dict) and name in node["widgets_values"]:
                inputs[name] = node["widgets_values"][name]
            if name in linked:
                inputs[name] = _source(node, name, links[linked[name]], nodes)
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": ntype,
                                   "_meta": {"title": node.get("title") or info.get("display_name") or ntype}}
    return prompt


def autogrow_slots(opts: dict) -> list[str]:
    """The slot names of an Autogrow input (``template.names``, or ``template.prefix`` + 0..max-1)."""
    t = opts.get("template") or {}
    if t.get("names"):
        return list(t["names"])
    return [f"{t.get('prefix', '')}{i}" for i in range(int(t.get("max", 0)))]


def _source(node: dict, name: str, link: tuple, nodes: dict) -> list:
    src_id, src_slot = link
    src = nodes.get(src_id)
    if src is None or src["type"] in VIRTUAL_NODES or src.get("mode", 0) in (2, 4):
        raise ValueError(f"node {node['id']} input {name}: links through virtual, muted or bypassed "
                         f"nodes are not supported by the pure-Python converter")
    return [str(src_id), src_slot]
