"""Test/demo-only ComfyUI nodes: the FLUX text encoders (CLIP-L + T5-XXL) with a shrunk T5 body, and a
conditioning inspector for the tests (ThinkDiffDemoConditioningInfo).

ComfyUI's stock DualCLIPLoader always builds T5-XXL at full size (4.76 B parameters, ~10 GB of RAM and
~25 s per encode on 2 CPU cores) whatever the file holds, too heavy for the node suite. This loader is
DualCLIPLoader (same inputs, same CLIP output, same comfy.sd.load_clip call) plus ComfyUI's own
``t5xxl_model_config`` option, which shrinks the T5 to devtools.demo_models.T5_CONFIG (2 layers, d_model
4096 kept, so the conditioning has FLUX's width). The stock CLIPTextEncodeFlux then encodes with it.
The tests and ``devtools.run_workflow --demo-models`` swap it in for DualCLIPLoader (DEMO_CLASSES);
``devtools.comfy_server.install_demo_nodes`` installs this folder next to the pack. Never shipped.
"""
# devtools.demo_models builds the T5 file in this layout (imported from here: one home)
T5_CONFIG = {"num_layers": 2, "num_decoder_layers": 2, "num_heads": 4, "d_kv": 16, "d_ff": 64}


class ThinkDiffDemoDualCLIPLoader:
    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths
        files = folder_paths.get_filename_list("text_encoders")
        return {"required": {"clip_name1": (files,), "clip_name2": (files,), "type": (["flux"],)}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"
    CATEGORY = "ThinkDiff/demo"
    DESCRIPTION = "Test/demo only: DualCLIPLoader with a 2-layer T5 (d_model 4096) for random-weight demo files."

    def load_clip(self, clip_name1, clip_name2, type="flux"):
        import comfy.sd
        import folder_paths
        paths = [folder_paths.get_full_path_or_raise("text_encoders", n) for n in (clip_name1, clip_name2)]
        clip = comfy.sd.load_clip(ckpt_paths=paths, embedding_directory=folder_paths.get_folder_paths("embeddings"),
                                  clip_type=comfy.sd.CLIPType.FLUX, model_options={"t5xxl_model_config": T5_CONFIG})
        return (clip,)


class ThinkDiffDemoConditioningInfo:
    """Test only: shows a CONDITIONING's shape, pooled shape and the sum of every token's vector, so a test
    can compare what a graph feeds FLUX with the same computation done outside the server."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",)}}

    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True
    CATEGORY = "ThinkDiff/demo"

    def show(self, conditioning):
        import json
        tokens, extra = conditioning[0]
        info = {"shape": list(tokens.shape), "pooled_shape": list(extra["pooled_output"].shape),
                "guidance": extra.get("guidance"), "token_sums": tokens[0].float().sum(-1).tolist()}
        return {"ui": {"text": [json.dumps(info)]}}


NODE_CLASS_MAPPINGS = {"ThinkDiffDemoDualCLIPLoader": ThinkDiffDemoDualCLIPLoader,
                       "ThinkDiffDemoConditioningInfo": ThinkDiffDemoConditioningInfo}
NODE_DISPLAY_NAME_MAPPINGS = {"ThinkDiffDemoDualCLIPLoader": "DualCLIPLoader (ThinkDiff demo, tiny T5)",
                              "ThinkDiffDemoConditioningInfo": "Conditioning info (ThinkDiff tests)"}
