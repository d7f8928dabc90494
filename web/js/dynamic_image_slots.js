// ThinkDiff: dynamic image slots on "VLM Encode Multimodal" (ThinkDiffVLMEncode) and "Encode Images (ThinkDiff-CLIP)" (ThinkDiffEncodeImages).
//
// Two forms of the node definition, by ComfyUI version (nodes/encode.py decides by feature check):
// * ComfyUI with the V3 Autogrow input (0.33.0): the definition declares one growing group "images"
//   (slots images.image_1 .. images.image_6) and the frontend itself grows and shrinks it. This
//   extension then only renames the image slots of workflows saved by an older ComfyUI (image_N) to
//   images.image_N when they load, so their links land on the group's slots.
// * Older ComfyUI (0.3.75): the node declares the optional inputs image_1 .. image_N. On the canvas we
//   show only the image slots up to the last connected one plus one empty slot (at most N, at least
//   image_1): connecting the last empty slot adds the next one, disconnecting trailing images removes
//   the surplus empty slots. Slots are never renamed or renumbered: only trailing, unconnected image
//   slots are added or removed, so links in saved workflows (which refer to slots by index) stay
//   valid. The backend receives the connected images by name (image_1 .. image_N), as before.
//   Workflows saved by a newer ComfyUI (images.image_N) get their slots renamed to image_N on load.
import { app } from "../../scripts/app.js";

// the nodes with growing image inputs (nodes/encode.py IMAGE_NODE_IDS)
const NODE_TYPES = new Set(["ThinkDiffVLMEncode", "ThinkDiffEncodeImages"]);
const GROUP = "images";
const IMAGE_RE = /^image_(\d+)$/;
// image_N / images.image_N, and the names of early versions of the node: image (= image_1), image2, ...
const ANY_IMAGE_RE = /^(?:images\.)?image_?([1-9]\d*)?$/;

// Whether this ComfyUI's definition of the node grows its image inputs itself (V3 Autogrow).
function growsNatively(nodeData) {
    const spec = nodeData?.input?.optional?.[GROUP] ?? nodeData?.input?.required?.[GROUP];
    return Array.isArray(spec) && spec[0] === "COMFY_AUTOGROW_V3";
}

// A saved node's serialisation with its image slots named the way this definition names them.
function renameSavedImageSlots(info, grouped) {
    if (!Array.isArray(info?.inputs)) return info;
    let changed = false;
    const inputs = info.inputs.map((input) => {
        const m = ANY_IMAGE_RE.exec(input?.name ?? "");
        if (!m) return input;
        const slot = `image_${m[1] ?? 1}`;
        const name = grouped ? `${GROUP}.${slot}` : slot;
        if (name === input.name) return input;
        changed = true;
        if (grouped) return { ...input, name, localized_name: name, label: slot };   // as the frontend names them
        const { label, ...rest } = input;
        return { ...rest, name, localized_name: name };
    });
    return changed ? { ...info, inputs } : info;
}

function imageSlots(node) {
    const slots = [];
    (node.inputs || []).forEach((input, index) => {
        const m = IMAGE_RE.exec(input?.name ?? "");
        if (m) slots.push({ index, n: Number(m[1]), input });
    });
    return slots;
}

function linkOf(graph, id) {
    if (id == null || !graph) return null;
    return graph._links?.get?.(id) ?? graph.links?.[id] ?? null;
}

// Insert an input slot at `index` and shift the target_slot of the links into the later slots
// (what LGraphNode.removeInput does in reverse).
function insertInput(node, index, name, type, extra) {
    const slot = node.addInput(name, type, extra);
    const from = node.inputs.indexOf(slot);
    if (from !== index) {
        node.inputs.splice(from, 1);
        node.inputs.splice(index, 0, slot);
        for (let i = index + 1; i < node.inputs.length; i++) {
            const link = linkOf(node.graph, node.inputs[i]?.link);
            if (link) link.target_slot = i;
        }
    }
    return slot;
}

// Show image_1 .. image_k, k = last connected + 1 (clamped to [1, max]); `all`: show all max.
function syncImageSlots(node, max, all = false) {
    if (node.__thinkdiffSyncing) return;
    node.__thinkdiffSyncing = true;
    try {
        let changed = false;
        let slots = imageSlots(node);
        const lastConnected = Math.max(0, ...slots.filter((s) => s.input.link != null).map((s) => s.n));
        const keep = all ? max : Math.max(1, Math.min(max, lastConnected + 1));
        // remove surplus empty image slots, last first (removeInput fixes the later links' slot indices)
        for (const s of [...slots].reverse()) {
            if (s.n > keep && s.input.link == null) {
                node.removeInput(s.index);
                changed = true;
            }
        }
        // add the missing ones up to `keep`, each right after the image slot before it
        for (let n = 1; n <= keep; n++) {
            slots = imageSlots(node);
            if (slots.some((s) => s.n === n)) continue;
            const before = slots.filter((s) => s.n < n).map((s) => s.index);
            const vlm = node.inputs.findIndex((i) => i.name === "vlm");
            const at = before.length ? Math.max(...before) + 1 : vlm + 1;
            insertInput(node, at, `image_${n}`, "IMAGE", { shape: 7, localized_name: `image_${n}` });
            changed = true;
        }
        if (changed) {
            const [w, h] = node.computeSize();
            node.setSize([Math.max(node.size[0], w), h > node.size[1] ? h : node.size[1]]);
            node.setDirtyCanvas?.(true, true);
        }
    } finally {
        node.__thinkdiffSyncing = false;
    }
}

app.registerExtension({
    name: "thinkdiff.dynamicImageSlots",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (!NODE_TYPES.has(nodeData?.name)) return;
        if (growsNatively(nodeData)) {
            // the frontend grows the slots; only older workflows' slot names need mapping
            const configure = nodeType.prototype.configure;
            nodeType.prototype.configure = function (info, ...rest) {
                return configure.call(this, renameSavedImageSlots(info, true), ...rest);
            };
            return;
        }
        const declared = Object.keys(nodeData.input?.optional || {}).filter((k) => IMAGE_RE.test(k));
        const max = Math.max(1, declared.length);

        const onNodeCreated = nodeType.prototype.onNodeCreated;
        nodeType.prototype.onNodeCreated = function () {
            const r = onNodeCreated?.apply(this, arguments);
            syncImageSlots(this, max);
            const [w, h] = this.computeSize();   // a new node: fit the trimmed slot list
            this.setSize([Math.max(this.size[0], w), h]);
            return r;
        };

        // configure() (loading a workflow, paste, undo) merges the saved inputs by name into the
        // node's current slot list (saved slots it lacks are appended at the end) and calls
        // onConnectionsChange for every slot. So: show all image slots first (the saved ones keep
        // their declared order), then sync once, afterwards, with the links in place.
        const configure = nodeType.prototype.configure;
        nodeType.prototype.configure = function (info, ...rest) {
            syncImageSlots(this, max, true);
            this.__thinkdiffConfiguring = true;
            try {
                return configure.call(this, renameSavedImageSlots(info, false), ...rest);
            } finally {
                this.__thinkdiffConfiguring = false;
                syncImageSlots(this, max);
            }
        };

        const onConnectionsChange = nodeType.prototype.onConnectionsChange;
        nodeType.prototype.onConnectionsChange = function (type, index, connected, linkInfo, slot) {
            const r = onConnectionsChange?.apply(this, arguments);
            if (this.__thinkdiffConfiguring || type !== 1 /* LiteGraph.INPUT */) return r;
            if (!IMAGE_RE.test(slot?.name ?? this.inputs?.[index]?.name ?? "")) return r;
            if (connected) {
                syncImageSlots(this, max);   // at once: a script may connect the new slot next
            } else if (!this.__thinkdiffPending) {
                // later: a disconnect may be the first half of replacing the link on this very slot
                this.__thinkdiffPending = true;
                queueMicrotask(() => {
                    this.__thinkdiffPending = false;
                    if (this.graph) syncImageSlots(this, max);
                });
            }
            return r;
        };
    },
});
