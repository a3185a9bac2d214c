#!/usr/bin/env bash
# Create the pinned Python reference environment for the audio parity tests, idempotently.
# Default location: <workspace>/target/parity-venv (override with PARITY_VENV=/path).
# Needs python3 >= 3.10 with the venv module and access to PyPI (wheels only, ~45 MB).
# Usage: bash host/tests/parity/setup_venv.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
venv="${PARITY_VENV:-$root/target/parity-venv}"
req="$here/requirements.txt"
PY="${PYTHON:-python3}"

want="$(sha256sum "$req" | cut -d' ' -f1)"
stamp="$venv/.requirements.sha256"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "parity venv: up to date ($venv)"
    exit 0
fi

rm -rf "$venv"
"$PY" -m venv "$venv"
# --no-deps: requirements.txt lists the whole closure, so nothing unpinned slips in
# (pipecat-ai's own dependency list would pull ~40 packages the reference never imports).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -r "$req"
LOGURU_LEVEL=WARNING "$venv/bin/python" - <<'PY'
import pipecat.audio.vad.silero, pipecat.audio.turn.smart_turn.local_smart_turn_v3  # noqa: F401
PY
echo "$want" >"$stamp"
echo "parity venv: created ($venv)"
