"""ThinkDiff-LVLM training: precompute VLM states, fit the aligner with the random-split proxy loss, export.

Run ``python -m train --help``. Modules, in reading order: ``config`` (the paper's values as
dataclass defaults), ``data`` (sources, feature shards, random-split batches), ``precompute``,
``t5`` (the frozen Flan-T5 decoder, built without its encoder), ``checkpoint`` (fit's checkpoint
files), ``fit`` (the training loop), ``export``, ``tiny`` (tiny models + sample photos for a CPU quick start).
"""
