"""Load ThinkDiff Aligner / Load ThinkDiff VLM."""
from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..thinkdiff_core import dtypes
from ..thinkdiff_core.release import ALIGNER_FOLDER, ALIGNER_LVLM_FILE, VLM_FOLDER, VLM_NAME
from . import _common as C
from .types import LoadedAligner, LoadedVLM, ThinkDiffAligner, ThinkDiffVLM


class LoadThinkDiffAligner(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ThinkDiffLoadAligner", display_name="Load ThinkDiff Aligner", category="ThinkDiff",
            description=f"Loads a ThinkDiff aligner (VLM hidden states -> FLUX's T5 space) from models/{ALIGNER_FOLDER}.",
            inputs=[
                io.Combo.Input("aligner_name", options=C.aligner_files(),
                               tooltip=f"Aligner file in models/{ALIGNER_FOLDER}: the official {ALIGNER_LVLM_FILE} "
                                       "or a .safetensors converted with `python -m thinkdiff_core convert`."),
                io.Combo.Input("dtype", options=dtypes.choices(), default="fp32",
                               tooltip="Precision of the aligner weights. It is small (31.5 M parameters); "
                                       "fp32 is exact and cheap."),
            ],
            outputs=[ThinkDiffAligner.Output(display_name="aligner")],
        )

    @classmethod
    def validate_inputs(cls, aligner_name):
        # A missing file is reported when the node runs, not here: a validation error on this node alone
        # lets ComfyUI run the rest of the graph (the VLM's text preview) and answer 200, and the frontend
        # then only outlines the node in red; an execution error is shown in a dialog. VLM Encode Multimodal
        # checks the file too before generating (nodes.encode.check_aligners_downstream).
        return True

    @classmethod
    def execute(cls, aligner_name, dtype) -> io.NodeOutput:
        from ..thinkdiff_core.checkpoint import load_aligner
        path = folder_paths.get_full_path(ALIGNER_FOLDER, aligner_name)
        if path is None:
            raise FileNotFoundError(C.missing_aligner(aligner_name))
        # AlignerFileError is a ValueError whose message names the file and the problem; ComfyUI shows it.
        with C.user_errors():
            module, info = load_aligner(path, dtype=dtypes.parse_dtype(dtype), device="cpu")
        C.log.info("ThinkDiff: loaded aligner %s (%s, %s -> %s)", aligner_name, info.variant, info.in_dim,
                   info.out_dim)
        return io.NodeOutput(LoadedAligner(module=module, info=info, name=aligner_name))


class LoadThinkDiffVLM(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ThinkDiffLoadVLM", display_name="Load ThinkDiff VLM", category="ThinkDiff",
            description=f"Loads a Qwen2-VL model folder from models/{VLM_FOLDER} (local files only, never "
                        "downloads). ComfyUI's memory manager moves it to the GPU when it runs and can "
                        "offload it when FLUX needs the memory.",
            inputs=[
                io.Combo.Input("vlm_name", options=C.vlm_folders(),
                               tooltip=f"Model folder in models/{VLM_FOLDER}, e.g. {VLM_NAME} (the VLM the "
                                       "released ThinkDiff aligner was trained on)."),
                io.Combo.Input("dtype", options=dtypes.choices(auto=True), default=dtypes.AUTO,
                               tooltip="Weight precision. auto: bf16 on GPUs that support it, else fp16; "
                                       "fp32 on CPU."),
                io.Boolean.Input("keep_loaded", default=True,
                                 tooltip="Keep the VLM on the GPU after encoding (faster re-runs). Off: "
                                         "move it to the offload device right after each generation."),
            ],
            outputs=[ThinkDiffVLM.Output(display_name="vlm")],
        )

    @classmethod
    def validate_inputs(cls, vlm_name):
        if C.vlm_path(vlm_name) is None:
            return f"VLM folder '{vlm_name}' not found in models/{VLM_FOLDER}. {C.where_vlm()}."
        return True

    @classmethod
    def execute(cls, vlm_name, dtype, keep_loaded) -> io.NodeOutput:
        from ..thinkdiff_core.vlm import VLMEncoder
        path = C.vlm_path(vlm_name)
        if path is None:
            raise FileNotFoundError(f"VLM folder '{vlm_name}' not found in models/{VLM_FOLDER}. {C.where_vlm()}.")
        encoder, patcher, torch_dtype, load_device = C.load_for_comfy(
            lambda dt, device: VLMEncoder.from_pretrained(path, dtype=dt, device=device), dtype)
        C.log.info("ThinkDiff: loaded VLM %s (%s, hidden size %d; runs on %s)", vlm_name, torch_dtype,
                   encoder.hidden_size, load_device)
        return io.NodeOutput(LoadedVLM(encoder=encoder, patcher=patcher, name=os.path.basename(vlm_name),
                                       keep_loaded=keep_loaded, dtype=dtypes.dtype_name(torch_dtype)))
