#!/usr/bin/env bash
# Fetch the ONNX Runtime library and the two models from pinned PyPI wheels, checksummed.
# Idempotent: files whose sha256 already matches SHA256SUMS are left alone (no network).
# Usage: bash models/fetch.sh            (from anywhere; writes next to this script)
# Needs: python3 with pip (pip only downloads, installs nothing), unzip, sha256sum.
set -euo pipefail

ORT_VER=1.31.1
PIPECAT_VER=1.14.0
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

all_ok() { sha256sum --quiet --strict -c SHA256SUMS >/dev/null 2>&1; }

link() { ln -sf "libonnxruntime.so.$ORT_VER" libonnxruntime.so; }

if all_ok; then
    link
    echo "models: all files present and verified ($here)"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
PY="${PYTHON:-python3}"

# --python-version/--platform make the pick independent of the local interpreter;
# the .so is byte-identical across the cp311/cp312 wheels.
"$PY" -m pip download --quiet "onnxruntime==$ORT_VER" --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$tmp"
"$PY" -m pip download --quiet "pipecat-ai==$PIPECAT_VER" --no-deps --only-binary=:all: -d "$tmp"

ort_whl=("$tmp"/onnxruntime-"$ORT_VER"-*.whl)
pc_whl=("$tmp"/pipecat_ai-"$PIPECAT_VER"-*.whl)
unzip -q -o -j "${ort_whl[0]}" "onnxruntime/capi/libonnxruntime.so.$ORT_VER" -d "$tmp/out"
unzip -q -o -j "${pc_whl[0]}" pipecat/audio/vad/data/silero_vad.onnx \
    pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx -d "$tmp/out"

# Verify in the staging dir before anything replaces the working copies.
cp SHA256SUMS "$tmp/out/"
(cd "$tmp/out" && sha256sum --strict -c SHA256SUMS)
for f in $(awk '{print $2}' SHA256SUMS); do
    mv -f "$tmp/out/$f" "$here/$f"
done
link
all_ok
echo "models: fetched and verified ($here)"
