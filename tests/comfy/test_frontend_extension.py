"""VLM Encode Multimodal's growing image slots in the real frontend of every tested ComfyUI: shown only
up to the connected ones plus one empty slot, and saved/built workflows still convert and run.

On ComfyUI 0.3.75 (frontend 1.32.9) the pack's extension (web/js/dynamic_image_slots.js) does the
growing; on 0.33.0 (frontend 1.48.7) the node declares an Autogrow group and the frontend grows it
itself, while the extension only renames the image slots of workflows saved with image_N names."""
from __future__ import annotations

import json
import os
import re
import urllib.request

import pytest

from devtools import comfy_client, comfy_server, make_workflows, paths, run_workflow

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
JS = "dynamic_image_slots.js"
EXT_URL = f"/extensions/{comfy_server.PACK_NAME}/{JS}"
EXT_NAME = "thinkdiff.dynamicImageSlots"
FAST = dict(steps=1, width=64, height=64, demo_models=True)
IMAGE_SLOT = re.compile(r"^(?:images\.)?image_\d+$")   # image_2 (0.3.75) or images.image_2 (Autogrow, 0.33.0)
# the nodes with growing image inputs: VLM Encode Multimodal and Encode Images (ThinkDiff-CLIP)
IMAGE_NODES = ("ThinkDiffVLMEncode", "ThinkDiffEncodeImages")


def slot_name(name: str) -> str:
    return name.rsplit(".", 1)[-1]


@pytest.fixture
def fe(frontend):
    if frontend is None:
        msg = "Chromium + playwright are needed to test the frontend extension"
        if IN_CI:
            pytest.fail(msg + " (CI must install them: apt-get install chromium; pip install playwright)")
        pytest.skip(msg)
    frontend.page.wait_for_function(f"window.app.extensions.some(e => e.name === {json.dumps(EXT_NAME)})",
                                    timeout=30_000)
    return frontend


# helpers evaluated in the page; image slots are named by their slot name (image_2, also for the
# Autogrow group's images.image_2); tick waits for a frame (the frontend's Autogrow shrinks then)
JS_HELPERS = """
    const LG = window.LiteGraph, app = window.app, g = app.graph;
    const tick = () => new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
    const slot = name => name.replace(/^images\\./, '');
    const images = n => n.inputs.filter(i => /^image_\\d+$/.test(slot(i.name))).map(i => slot(i.name) + (i.link != null ? '*' : ''));
    const idx = (n, name) => n.inputs.findIndex(i => i.name === name || i.name === 'images.' + name);
    const linksOk = () => g._nodes.every(n => (n.inputs || []).every((inp, k) => inp.link == null ||
        (g._links.get(inp.link)?.target_slot === k && g._links.get(inp.link)?.target_id === n.id)));
"""


def test_extension_js_is_served_and_loads_without_errors(client, fe):
    with urllib.request.urlopen(client.url + EXT_URL, timeout=30) as r:
        assert r.status == 200
        assert "registerExtension" in r.read().decode()
    assert EXT_URL in client.get("/extensions")
    # offline, the frontend's look-ups of loaded packs in the online registry (api.comfy.org/nodes?node_id=
    # thinkdiff) fail once a workflow of ours was loaded: expected and not the extension's doing
    ours = [c for c in fe.console
            if c[0] in ("error", "pageerror") and any(k in (c[1] + c[2]).lower() for k in ("thinkdiff", JS))
            and not c[2].startswith("https://api.comfy.org/")]
    assert ours == [], ours


def test_image_slots_grow_and_shrink(fe, comfy_features):
    grows_natively = comfy_features["autogrow"]
    out = fe.page.evaluate("async (native) => {" + JS_HELPERS + """
        g.clear();
        const n = LG.createNode('ThinkDiffVLMEncode'); n.pos = [400, 100]; g.add(n);
        const vlm = LG.createNode('ThinkDiffLoadVLM'); g.add(vlm);
        const text = LG.createNode('PrimitiveStringMultiline'); g.add(text);
        const loads = [0, 1, 2, 3, 4, 5, 6].map(k => { const l = LG.createNode('LoadImage'); l.pos = [0, 200 * k]; g.add(l); return l; });
        const src = () => n.inputs.filter(i => /^image_\\d+$/.test(slot(i.name)))
                                  .map(i => loads.findIndex(l => l.id === g._links.get(i.link)?.origin_id));
        vlm.connect(0, n, idx(n, 'vlm'));
        // a linked widget slot after the image slots: the extension's slot insertion must keep its link.
        // (Not with the frontend's own Autogrow: frontend 1.48.7 leaves the links of later inputs pointing
        // at their old slot index when the group shrinks, for core nodes just as for this one.)
        if (!native) text.connect(0, n, idx(n, 'text'));
        const r = {created: images(n)};
        loads[0].connect(0, n, idx(n, 'image_1')); r.one = images(n);
        loads[1].connect(0, n, idx(n, 'image_2')); r.two = images(n);
        r.prompt2 = Object.keys((await app.graphToPrompt()).output[String(n.id)].inputs).filter(k => /image_/.test(k));
        n.disconnectInput(idx(n, 'image_2')); await tick(); r.disconnected = images(n);
        for (let k = 2; k <= 6; k++) loads[k - 1].connect(0, n, idx(n, 'image_' + k));
        r.full = images(n);
        loads[6].connect(0, n, idx(n, 'image_4')); await tick(); r.replaced = images(n);   // replace a link
        for (const k of [6, 5]) { n.disconnectInput(idx(n, 'image_' + k)); await tick(); }
        r.trailingGone = images(n);
        for (const k of [1, 2]) { n.disconnectInput(idx(n, 'image_' + k)); await tick(); }
        r.gap = images(n); r.gapSources = src();
        for (const name of images(n).filter(s => s.endsWith('*')).reverse()) {
            n.disconnectInput(idx(n, name.slice(0, -1))); await tick();
        }
        r.none = images(n);
        r.linksOk = linksOk();
        r.textLinked = n.inputs[idx(n, 'text')].link != null;
        return r;
    }""", grows_natively)
    assert out["created"] == ["image_1"]
    assert out["one"] == ["image_1*", "image_2"]
    assert out["two"] == ["image_1*", "image_2*", "image_3"]
    assert out["prompt2"] == (["images.image_1", "images.image_2"] if grows_natively else ["image_1", "image_2"])
    assert out["full"] == [f"image_{k}*" for k in range(1, 7)]    # the maximum: no empty slot
    assert out["replaced"] == out["full"]
    assert out["trailingGone"] == ["image_1*", "image_2*", "image_3*", "image_4*", "image_5"]
    if grows_natively:
        # the frontend's Autogrow closes gaps: the later images move up, in order (image_2, then the
        # one that replaced image_4); one empty slot trails (two right after the first disconnect)
        assert out["disconnected"] == ["image_1*", "image_2", "image_3"]
        assert out["gap"] == ["image_1*", "image_2*", "image_3"] and out["gapSources"] == [1, 6, -1]
    else:
        assert out["disconnected"] == ["image_1*", "image_2"]
        # image_1, image_2 empty but before a connected slot: kept (links refer to slots by index)
        assert out["gap"] == ["image_1", "image_2", "image_3*", "image_4*", "image_5"]
        assert out["gapSources"] == [-1, -1, 2, 6, -1]
        assert out["textLinked"]
    assert out["none"] == ["image_1"]
    assert out["linksOk"]


@pytest.mark.parametrize("name", sorted(make_workflows.WORKFLOWS))
def test_shipped_workflow_loads_with_trimmed_slots_and_round_trips(name, fe, comfy_features):
    """The shipped files (saved by ComfyUI 0.3.75: image_N slots) load: the links are kept, the connected
    images plus one empty slot are shown, the prompt names the images as this ComfyUI's node takes them
    (images.image_N where it grows them itself), and saving + reloading gives the same prompt."""
    with open(os.path.join(paths.WORKFLOWS, name + ".json")) as f:
        wf = json.load(f)
    check_loads_and_round_trips(fe, wf, comfy_features)


@pytest.mark.parametrize("name", sorted(make_workflows.WORKFLOWS))
def test_workflow_saved_with_grouped_image_slots_loads(name, fe, comfy_features):
    """The same workflows as ComfyUI 0.33.0 saves them (images.image_N slots, labelled image_N) load on
    every version too: on 0.3.75 the extension renames the slots back to image_N."""
    with open(os.path.join(paths.WORKFLOWS, name + ".json")) as f:
        wf = json.load(f)
    enc = next(n for n in wf["nodes"] if n["type"] in IMAGE_NODES)
    for i in enc["inputs"]:
        if IMAGE_SLOT.match(i["name"]):
            i.update(name=f"images.{i['name']}", localized_name=f"images.{i['name']}", label=i["name"])
    check_loads_and_round_trips(fe, wf, comfy_features)


def test_workflow_saved_by_an_early_version_of_the_node_loads(fe, comfy_features):
    """A workflow saved when the node's image inputs were called image, image2 (an early version) loads on
    every version: the extension renames them to image_1, image_2 (images.image_N where the node grows
    them itself), so their links are kept and the prompt carries both images (none silently dropped)."""
    with open(os.path.join(paths.WORKFLOWS, "thinkdiff_in_context_reasoning.json")) as f:
        wf = json.load(f)
    enc = next(n for n in wf["nodes"] if n["type"] == "ThinkDiffVLMEncode")
    old = {"image_1": "image", "image_2": "image2"}
    for i in enc["inputs"]:
        if i["name"] in old:
            i.update(name=old[i["name"]], localized_name=old[i["name"]])
    check_loads_and_round_trips(fe, wf, comfy_features, connected=["image_1", "image_2"])


def check_loads_and_round_trips(fe, wf: dict, comfy_features, connected: list[str] | None = None) -> None:
    """connected: the image slots (image_N) the saved links land on; by default the saved names."""
    enc = next(n for n in wf["nodes"] if n["type"] in IMAGE_NODES)
    if connected is None:
        connected = [slot_name(i["name"]) for i in enc["inputs"]
                     if IMAGE_SLOT.match(i["name"]) and i.get("link") is not None]
    assert fe.load_errors(wf) == []
    out = fe.page.evaluate("async (type) => {" + JS_HELPERS + """
        const n = g._nodes.find(x => x.type === type);
        const r = {images: images(n), linksOk: linksOk()};
        const p = await app.graphToPrompt();
        r.prompt = p.output;
        await app.loadGraphData(p.workflow);
        r.reloaded = images(g._nodes.find(x => x.type === type));
        r.linksOk2 = linksOk();
        r.prompt2 = (await app.graphToPrompt()).output;
        return r;
    }""", enc["type"])
    assert out["images"] == [c + "*" for c in connected] + [f"image_{len(connected) + 1}"]
    assert out["linksOk"] and out["linksOk2"]
    assert out["reloaded"] == out["images"]
    assert out["prompt2"] == out["prompt"]
    enc_id = str(enc["id"])
    form = "images.{}" if comfy_features["autogrow"] else "{}"
    assert sorted(k for k in out["prompt"][enc_id]["inputs"] if IMAGE_SLOT.match(k)) == [form.format(c) for c in connected]


def test_workflow_built_in_the_frontend_runs(client, fe, comfy_features):
    """make_workflows builds the graph by connecting image_1, then image_2 (which only exists once
    image_1 is connected); the built workflow gives the same prompt as the shipped one and runs."""
    name = "thinkdiff_in_context_reasoning"
    built = fe.build(make_workflows.spec(name))
    enc = next(n for n in built["nodes"] if n["type"] == "ThinkDiffVLMEncode")
    assert [slot_name(i["name"]) for i in enc["inputs"] if IMAGE_SLOT.match(i["name"])] == ["image_1", "image_2", "image_3"]
    api = fe.to_api(built)
    with open(os.path.join(paths.WORKFLOWS, name + ".json")) as f:
        shipped = fe.to_api(json.load(f))

    def canon(p):   # node ids may differ: compare by the sorted (class, inputs) with links by class
        cls = {k: v["class_type"] for k, v in p.items()}
        return sorted(json.dumps([v["class_type"], {k: ([cls[x[0]], x[1]] if isinstance(x, list) else x)
                                                    for k, x in v["inputs"].items()}], sort_keys=True)
                      for v in p.values())
    assert canon(api) == canon(shipped)
    enc_inputs = next(v["inputs"] for v in api.values() if v["class_type"] == "ThinkDiffVLMEncode")
    form = "images.{}" if comfy_features["autogrow"] else "{}"
    assert {k for k in enc_inputs if IMAGE_SLOT.match(k)} == {form.format("image_1"), form.format("image_2")}
    prompt = run_workflow.apply_overrides(api, **FAST, inputs={"ThinkDiffVLMEncode": {"max_new_tokens": 8}})
    entry = client.run(prompt, timeout=600)
    err = comfy_client.execution_error(entry)
    assert err is None, f"execution error: {err and err.get('exception_message')}\n{client.describe()}"
    assert entry["status"]["status_str"] == "success" and comfy_client.output_images(entry)
