#!/usr/bin/env bash
# The one command of the README's quick start: ThinkDiff-mini, the method working end to end on a CPU.
#  1. sets everything up offline (scripts/bootstrap.sh: ComfyUI 0.3.75 + a venv; or your ComfyUI
#     with COMFYUI_DIR=/path/to/ComfyUI),
#  2. builds ThinkDiff-mini once (python -m train mini build: a tiny Qwen2-VL with the real tokenizer,
#     a tiny flan-T5, an SD3-layout image model trained only on that T5's encoder states, a TAESD
#     autoencoder and an aligner trained only through the T5 decoder; all on easy-vqa shapes, cached
#     in .cache/mini) and links them into .cache/quickstart-mini/models,
#  3. runs workflows/thinkdiff_mini_in_context.json headless in a real ComfyUI server (our nodes between
#     the stock loaders and KSampler), converted by the real frontend,
#  4. writes the picture and the VLM's text to the output folder (default ./demo_output) and prints them.
# Your own inputs: --images a.png b.png --text "red, blue, green" (one word per image, then the query
# word). Other options go to `python -m devtools.run_workflow` (e.g. --seed 3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${THINKDIFF_OUT:-$ROOT/demo_output}")"
COMFY="$(realpath -m "${COMFYUI_DIR:-$ROOT/.comfyui}")"
BASE="$ROOT/.cache/quickstart-mini"
bash "$ROOT/scripts/bootstrap.sh"
PY="${THINKDIFF_VENV:-$ROOT/.venv}/bin/python"
cd "$ROOT"   # train and devtools run as packages (python -m) from the repository root
start=$(date +%s)
"$PY" -m train mini install --out "$ROOT/.cache/mini" --models "$BASE/models"
"$PY" -m devtools.run_workflow workflows/thinkdiff_mini_in_context.json "$OUT" \
    --comfyui "$COMFY" --base-dir "$BASE" "$@"
echo "ThinkDiff-mini quick start ($(( $(date +%s) - start )) s after set-up): picture and VLM text in $OUT"
echo "VLM text: $(cat "$OUT/thinkdiff_mini_in_context.txt")"
ls -l "$OUT"
