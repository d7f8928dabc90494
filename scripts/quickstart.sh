#!/usr/bin/env bash
# The one command of the README's quick start.
#  1. sets everything up offline (scripts/bootstrap.sh: ComfyUI 0.3.75 + a venv; or your ComfyUI
#     with COMFYUI_DIR=/path/to/ComfyUI),
#  2. installs this pack into that ComfyUI (a symlink in custom_nodes/),
#  3. builds tiny random-weight demo models (FLUX, VAE, CLIP-L, Qwen2-VL with the real tokenizer,
#     an aligner) under .cache/quickstart/models,
#  4. runs workflows/thinkdiff_in_context_reasoning.json headless in a real ComfyUI server,
#  5. writes the image and the VLM's text to the output folder (default ./demo_output) and prints it.
# With random weights the image is noise and the text gibberish: this shows the pack working, not
# ThinkDiff's quality. For real models see the README ("Run it with real models").
# Options are passed to `python -m devtools.run_workflow`, e.g. --steps 28 --width 512 --height 512.
#
# bash scripts/quickstart.sh --mini [--images a.png b.png --text "red, blue, green"]
# runs ThinkDiff-mini instead: models trained here on easy-vqa (python -m train mini build, into
# .cache/mini; about an hour or more on 2 CPU cores the first time, resumable; then seconds) and the shipped
# workflows/thinkdiff_mini_in_context.json, with your images and words if given.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${THINKDIFF_OUT:-$ROOT/demo_output}")"
COMFY="$(realpath -m "${COMFYUI_DIR:-$ROOT/.comfyui}")"
bash "$ROOT/scripts/bootstrap.sh"
PY="${THINKDIFF_VENV:-$ROOT/.venv}/bin/python"
cd "$ROOT"   # devtools runs as a package (python -m) from the repository root
if [ "${1:-}" = "--mini" ]; then
    shift
    MODELS="$ROOT/.cache/quickstart-mini/models"
    "$PY" -m train mini install --models "$MODELS"      # builds what .cache/mini lacks, then links it
    "$PY" -m devtools.run_workflow workflows/thinkdiff_mini_in_context.json "$OUT" \
        --comfyui "$COMFY" --base-dir "$ROOT/.cache/quickstart-mini" --models "$MODELS" "$@"
    echo "ThinkDiff-mini quick start: image and VLM text written to $OUT"
    ls -l "$OUT"
    exit 0
fi
"$PY" -m devtools.run_workflow workflows/thinkdiff_in_context_reasoning.json "$OUT" \
    --comfyui "$COMFY" --base-dir "$ROOT/.cache/quickstart" --demo-models \
    --steps 4 --width 256 --height 256 "$@"
echo "ThinkDiff quick start: image and VLM text written to $OUT"
ls -l "$OUT"
