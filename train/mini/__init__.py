"""ThinkDiff-mini: the method at a scale a CPU trains, on easy-vqa (`python -m train mini build|eval|install`).

data.py (labels, captions, in-context cases) -> judge.py (real-image judge) -> image.py (TAESD-layout
autoencoder, SD3-layout image model, ComfyUI's sampler) -> lang.py (tiny flan-T5, tiny Qwen2-VL) ->
build.py (every stage, top to bottom, resumable) -> evaluate.py (conditions, ablations) -> cli.py.
"""
