#!/usr/bin/env bash
# Regenerate the committed goldens from the reference (Pipecat 1.14 in the parity venv):
#   golden/<clip>.vad.jsonl       per-window Silero probability + smoothed volume, VAD events
#                                 (Switchboard's default VAD params; fp32, CPU-independent)
#   golden/dialog_8k.seed.vad.jsonl  the same with the seed bots' stop_secs 0.5
#   golden/<clip>.features.f32    Smart Turn log-mel features (80x800 f32 LE) of the clip's
#                                 last 8 s at 16 kHz (deterministic floating point)
# Smart Turn probabilities are NOT committed: the int8 model's output depends on the CPU, so
# the parity test computes them with reference.py on the machine that runs it.
# Usage: bash host/tests/parity/make_goldens.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$here/setup_venv.sh" >/dev/null
py="${PARITY_VENV:-$here/../../../target/parity-venv}/bin/python"
audio="$here/../fixtures/audio"
golden="$here/../fixtures/golden"
mkdir -p "$golden"
for wav in "$audio"/*_8k.wav "$audio"/*_16k.wav; do
    name="$(basename "$wav" .wav)"
    "$py" "$here/reference.py" analyze --no-turn "$wav" >"$golden/$name.vad.jsonl"
done
"$py" "$here/reference.py" analyze --no-turn --stop-secs 0.5 "$audio/dialog_8k.wav" \
    >"$golden/dialog_8k.seed.vad.jsonl"
for name in clean_16k dialog_16k silence_16k; do
    "$py" "$here/reference.py" features "$audio/$name.wav" "$golden/$name.features.f32"
done
ls -l "$golden"
