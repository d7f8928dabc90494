"""ThinkDiff as a plain PyTorch/transformers library (no ComfyUI imports anywhere in this package).

Modules: ``aligner`` (the 31.5 M-parameter MLP + T5 RMSNorm), ``checkpoint`` (official .pth and our
safetensors format), ``prompts`` (the paper's prompt formats per use), ``vlm`` (generate + capture the
final-norm rows of generated tokens), ``conditioning`` (typed embeds -> FLUX conditioning),
``dtypes`` (the one dtype table), ``release`` (names of the official files and models),
``tiny`` (random-weight models with real tokenizers, for tests and the demo). The method notes the
code cites are in docs/method.md.
Outside ComfyUI: ``diffusers_pipeline`` (ThinkDiff on a diffusers FluxPipeline) and ``eval`` (the CoBSAT
harness, ``python -m thinkdiff_core.eval cobsat``); diffusers is an optional extra, imported only there.
Submodules are imported on use so that ``import thinkdiff_core`` stays cheap.
"""
__version__ = "0.1.0"
