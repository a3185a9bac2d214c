#!/usr/bin/env bash
# Starts the server (after the one-time setup). Extra arguments go to `switchboard serve`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash models/fetch.sh
exec cargo run --locked -- serve "$@"
