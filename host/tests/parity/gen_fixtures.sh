#!/usr/bin/env bash
# Generate the parity fixture clips with espeak-ng + sox (Debian packages espeak-ng, sox).
# The committed WAVs are the source of truth; rerunning this should reproduce them byte for
# byte on the same espeak-ng/sox versions (espeak-ng 1.51, SoX 14.4.2; sox runs with -R).
# Usage: bash host/tests/parity/gen_fixtures.sh   (writes host/tests/fixtures/audio/)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/../fixtures/audio"
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

SOX=(sox -R -D -V1)

# speak NAME TEXT: espeak-ng at its native 22050 Hz, then lead/trail silence.
speak() {
    espeak-ng -v en-us -s 155 -p 45 -w "$tmp/$1_raw.wav" "$2"
    "${SOX[@]}" "$tmp/$1_raw.wav" "$tmp/$1_22k.wav" pad 0.8 1.6
}

# to_rate NAME RATE SUFFIX: high-quality conversion to 16-bit mono at RATE.
to_rate() {
    "${SOX[@]}" "$tmp/$1_22k.wav" -b 16 -c 1 "$out/$1_$3.wav" rate -v "$2"
}

speak clean "I would like to book a table for two people at seven o'clock tonight."
speak question "Could you tell me what time the pharmacy closes on Sunday?"
speak unfinished "So what I was really hoping to do this weekend was, um, maybe"
speak noisy "My account number is four five six, and I need help with a refund."

for name in clean question unfinished; do
    to_rate "$name" 8000 8k
    to_rate "$name" 16000 16k
done

# Noisy: pink noise at roughly 12 dB below the speech, over the whole clip.
dur="$(soxi -D "$tmp/noisy_22k.wav")"
"${SOX[@]}" -n -r 22050 -c 1 -b 16 "$tmp/noise.wav" synth "$dur" pinknoise vol 0.06
"${SOX[@]}" -m -v 1 "$tmp/noisy_22k.wav" -v 1 "$tmp/noise.wav" "$tmp/noisy_mix_22k.wav"
mv "$tmp/noisy_mix_22k.wav" "$tmp/noisy_22k.wav"
to_rate noisy 8000 8k
to_rate noisy 16000 16k

# Dialog: two utterances 3 s apart over faint noise, so the VAD stops, Silero's 2 s state
# reset fires in the gap, and the turn analyzer sees two separate turns (> 8 s in total).
speak d1 "Hi, I am calling about my order from last week."
speak d2 "It still has not arrived, and I was wondering if you could check on it for me please."
"${SOX[@]}" "$tmp/d1_22k.wav" "$tmp/d1_pad.wav" pad 0 1.4
"${SOX[@]}" "$tmp/d1_pad.wav" "$tmp/d2_22k.wav" "$tmp/dialog_speech.wav"
dur="$(soxi -D "$tmp/dialog_speech.wav")"
"${SOX[@]}" -n -r 22050 -c 1 -b 16 "$tmp/dnoise.wav" synth "$dur" whitenoise vol 0.003
"${SOX[@]}" -m -v 1 "$tmp/dialog_speech.wav" -v 1 "$tmp/dnoise.wav" "$tmp/dialog_22k.wav"
to_rate dialog 8000 8k
to_rate dialog 16000 16k

# Silence: three seconds of digital zeros.
"${SOX[@]}" -n -r 8000 -c 1 -b 16 "$out/silence_8k.wav" trim 0 3
"${SOX[@]}" -n -r 16000 -c 1 -b 16 "$out/silence_16k.wav" trim 0 3

# A rate that is neither 8 nor 16 kHz, for the analyze resampling path.
"${SOX[@]}" "$tmp/question_22k.wav" -b 16 "$out/question_22k.wav"

ls -l "$out"
