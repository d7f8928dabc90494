"""Benchmarks for ThinkDiff outside ComfyUI: ``python -m thinkdiff_core.eval cobsat ...`` (see README "CoBSAT
evaluation"). :mod:`.cobsat` is the benchmark's definition (tasks, samples, questions, parsing: plain Python),
:mod:`.harness` generates with ThinkDiff and the text-rewriter baseline, judges and tabulates."""
