#!/usr/bin/env bash
# Installs what building, running and testing Switchboard needs, on a fresh Debian 12 machine.
# Idempotent and quick when everything is already there. Needs root for apt (or sudo).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Debian packages (the list and why each is there: scripts/apt.sh).
# shellcheck source=scripts/apt.sh
source scripts/apt.sh
apt_ensure "${RUNTIME_PACKAGES[@]}" "${TEST_PACKAGES[@]}"

# ONNX Runtime library and the Silero / Smart Turn models (pinned, checksummed).
bash models/fetch.sh
# The local text-to-speech voice (Piper en_US-joe-medium) in models/local (pinned, checksummed).
bash models/fetch-piper.sh
# The local speech-to-text model (Moonshine base, English; pinned, checksummed).
bash models/fetch-stt.sh
# The local conversation LLM (Qwen2.5-Coder-0.5B-Instruct GGUF; pinned, checksummed).
bash models/fetch-llm.sh

# The Python reference (Pipecat 1.14's model code) the parity tests compare against.
bash host/tests/parity/setup_venv.sh

# Persona plugins (WebAssembly components) the plugin tests run: Debian's rustc-web toolchain is
# installed on first use when rustup has no wasm32-wasip2 target.
bash plugins/build.sh

# The playground's browser test: playwright-core from npm (pinned by package-lock.json; it
# downloads no browser). Needs Node.js 20 or newer — Debian 12's apt has only 18.
browser_tests="host/tests/browser"
node_major="$(node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/' || true)"
if [ -z "$node_major" ] || [ "$node_major" -lt 20 ]; then
    echo "setup: Node.js 20 or newer is needed for the browser tests (found: ${node_major:-none}); install it from nodejs.org or NodeSource" >&2
elif ! cmp -s "$browser_tests/package-lock.json" "$browser_tests/node_modules/.switchboard-installed"; then
    echo "setup: installing the browser test packages (npm ci)"
    (cd "$browser_tests" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
    cp "$browser_tests/package-lock.json" "$browser_tests/node_modules/.switchboard-installed"
fi
