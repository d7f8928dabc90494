#!/usr/bin/env bash
# The test command (README "Quick start", second block; .ci/run calls exactly this).
# Sets up what is missing (scripts/bootstrap.sh), then runs the whole pytest suite: the core library,
# the nodes inside real ComfyUI 0.3.75 and 0.33.0 servers, and the trainer. Extra arguments go to pytest.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh" || exit 1
cd "$ROOT"
"${THINKDIFF_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests; treating that as a failure" >&2
  exit 1
fi
exit "$rc"
