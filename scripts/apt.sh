#!/usr/bin/env bash
# Sourced by setup.sh and serve.sh: the Debian packages Switchboard needs, and a function that
# installs the missing ones (needs root or sudo; quick when everything is there).

# What running a call needs: libsoxr0 (Smart Turn resamples with the reference's library, bit for
# bit), espeak-ng (the local voice's phonemizer), unzip (the model fetch scripts), and cmake with
# libclang-dev to build the in-process LLM (llama.cpp) on first `cargo build`.
# shellcheck disable=SC2034  # used by the scripts that source this file
RUNTIME_PACKAGES=(libsoxr0 espeak-ng unzip cmake libclang-dev)
# What the tests add: sox for speech fixtures, chromium for the playground's browser test.
# shellcheck disable=SC2034
TEST_PACKAGES=(sox chromium)

apt_ensure() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]} (apt)"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}
