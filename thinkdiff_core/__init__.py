"""ThinkDiff as a plain PyTorch/transformers library (no ComfyUI imports anywhere in this package).

Modules: ``aligner`` (the 31.5 M-parameter MLP + T5 RMSNorm), ``checkpoint`` (official .pth and our
safetensors format), ``prompts`` (the paper's prompt formats), ``vlm`` (generate + capture the
final-norm rows of generated tokens), ``conditioning`` (aligned rows -> FLUX prompt embeddings),
``tiny`` (random-weight models with real tokenizers, for tests and the demo).
Submodules are imported on use so that ``import thinkdiff_core`` stays cheap.
"""
__version__ = "0.1.0"
