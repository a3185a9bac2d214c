#!/usr/bin/env bash
# Starts the server, installing what a call needs first (Debian packages, ONNX Runtime and the
# turn-taking models, and — for stages without a provider key — the local models). Extra
# arguments go to `switchboard serve`. With no keys at all the bot talks from this machine.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/apt.sh
source scripts/apt.sh
apt_ensure "${RUNTIME_PACKAGES[@]}"

# Keys may live in .env; read them without exporting anything else.
key_set() {
    [ -n "${!1:-}" ] && return 0
    [ -f .env ] && grep -Eq "^[[:space:]]*$1[[:space:]]*=[[:space:]]*[^[:space:]#]" .env
}
bash models/fetch.sh
if ! key_set DEEPGRAM_API_KEY || [ "${PROVIDERS:-auto}" = local ]; then
    bash models/fetch-stt.sh
    bash models/fetch-piper.sh
fi
if ! key_set GROQ_API_KEY || [ "${PROVIDERS:-auto}" = local ]; then
    bash models/fetch-llm.sh
fi
if [ ! -x target/debug/switchboard ]; then
    echo "serve: first build of switchboard (wasmtime and llama.cpp: about 15 minutes on 2 cores; later starts take seconds)"
fi
exec cargo run --locked -- serve "$@"
