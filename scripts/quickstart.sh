#!/usr/bin/env bash
# The one command of the README's quick start: ThinkDiff-mini, the method working end to end at a size a
# CPU trains.
#  1. sets up what it runs, offline (scripts/bootstrap.sh --quickstart: ComfyUI 0.3.75 + a venv; or your ComfyUI
#     with COMFYUI_DIR=/path/to/ComfyUI),
#  2. builds the ThinkDiff-mini models on easy-vqa (`python -m train mini install --size quick`, into
#     .cache/mini-quick: about 17 min on 2 CPU cores the first time, resumable; seconds after that) and
#     links them into .cache/quickstart-mini/models,
#  3. runs workflows/thinkdiff_mini_in_context.json headless in a real ComfyUI server (stock loaders and
#     sampler around our nodes), with your images and words if given:
#       bash scripts/quickstart.sh --images a.png b.png --text "red, blue, green"
#  4. writes the picture and the VLM's text to the output folder (default ./demo_output) and prints it.
# THINKDIFF_MINI_SIZE=full uses the larger build of bench/RESULTS.md instead (about an hour or more).
#
# bash scripts/quickstart.sh --flux-demo [--steps 28 --width 512 --height 512]
# runs the real-size wiring instead: random-weight FLUX, VAE, CLIP-L, Qwen2-VL (real tokenizer) and
# aligner through workflows/thinkdiff_in_context_reasoning.json. With random weights the image is noise
# and the text gibberish: it shows the graph running at the real models' shapes, not ThinkDiff's quality.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${THINKDIFF_OUT:-$ROOT/demo_output}")"
COMFY="$(realpath -m "${COMFYUI_DIR:-$ROOT/.comfyui}")"
bash "$ROOT/scripts/bootstrap.sh" --quickstart
PY="${THINKDIFF_VENV:-$ROOT/.venv}/bin/python"
cd "$ROOT"   # devtools and train run as packages (python -m) from the repository root
if [ "${1:-}" = "--flux-demo" ]; then
    shift
    "$PY" -m devtools.run_workflow workflows/thinkdiff_in_context_reasoning.json "$OUT" \
        --comfyui "$COMFY" --base-dir "$ROOT/.cache/quickstart" --demo-models \
        --steps 4 --width 256 --height 256 "$@"
    echo "ThinkDiff real-size wiring (random weights): image and VLM text written to $OUT"
    ls -l "$OUT"
    exit 0
fi
[ "${1:-}" = "--mini" ] && shift   # the former spelling: ThinkDiff-mini is the default now
SIZE="${THINKDIFF_MINI_SIZE:-quick}"
MODELS="$ROOT/.cache/quickstart-mini/models"
"$PY" -m train mini install --size "$SIZE" --out "$ROOT/.cache/mini-$SIZE" --models "$MODELS"  # builds what is missing
"$PY" -m devtools.run_workflow workflows/thinkdiff_mini_in_context.json "$OUT" \
    --comfyui "$COMFY" --base-dir "$ROOT/.cache/quickstart-mini" --models "$MODELS" "$@"
echo "ThinkDiff-mini quick start: picture and VLM text written to $OUT"
ls -l "$OUT"
