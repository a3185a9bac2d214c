#!/usr/bin/env bash
# Builds every persona plugin under plugins/ (or the crate dirs given) into WebAssembly
# components: plugins/target/personas/NAME.wasm (OUT_DIR overrides), one shared target dir.
#
#   plugins/build.sh [CRATE_DIR...]
#
# Toolchain: rustup's, when it has the wasm32-wasip2 target installed (`rustup target add
# wasm32-wasip2`); otherwise Debian's rustc-web with -Zbuild-std (installed here via apt when
# missing, as in the shared toolchain notes). GUEST_TOOLCHAIN=rustup|debian forces one.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TARGET=wasm32-wasip2
export CARGO_TARGET_DIR="$here/target"
OUT_DIR="${OUT_DIR:-$here/target/personas}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
# Settings inherited from an outer cargo (e.g. when tests call this) must not leak in.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER \
    CARGO_BUILD_TARGET CARGO_MAKEFLAGS MAKEFLAGS MFLAGS RUSTC RUSTDOC

DEBIAN_PACKAGES=(rustc-web cargo-web rust-web-src rust-web-llvm lld-22 wasi-libc)

rustup_has_target() {
    command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"
}

install_debian_toolchain() {
    local missing=() p
    for p in "${DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "build.sh: installing ${missing[*]}" >&2
    # rust-web-llvm (wasm-component-ld) is a Recommends of rustc-web: keep recommends on.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

toolchain="${GUEST_TOOLCHAIN:-}"
if [ -z "$toolchain" ]; then
    if rustup_has_target; then toolchain=rustup; else toolchain=debian; fi
fi

# Paths in panic messages don't depend on the checkout: the same source gives the same bytes
# (and so the same content hash, which the host's compile cache is keyed by).
REMAP="--remap-path-prefix=$here=/plugins --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"

cargo_build() {
    local crate="$1"
    if [ "$toolchain" = rustup ]; then
        (cd "$crate" && CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="$REMAP" cargo build --quiet --release --target "$TARGET")
    else
        # Debian's toolchain must win over rustup's proxies, which cannot build Debian's std.
        (cd "$crate" && env -u RUSTUP_TOOLCHAIN PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
            RUSTC_BOOTSTRAP=1 CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="-L native=/usr/lib/wasm32-wasi $REMAP" \
            /usr/bin/cargo build --quiet --release --target "$TARGET" -Zbuild-std=std,panic_abort)
    fi
}

case "$toolchain" in
    rustup) ;;
    debian) install_debian_toolchain ;;
    *) echo "GUEST_TOOLCHAIN must be rustup or debian" >&2; exit 2 ;;
esac

crates=("$@")
if [ ${#crates[@]} -eq 0 ]; then
    for manifest in "$here"/*/Cargo.toml "$here"/testing/*/Cargo.toml; do
        [ -f "$manifest" ] && grep -q cdylib "$manifest" && crates+=("$(dirname "$manifest")")
    done
fi

mkdir -p "$OUT_DIR"
for crate in "${crates[@]}"; do
    crate="$(cd "$crate" && pwd)"
    name="$(awk -F'"' '/^name *=/{print $2; exit}' "$crate/Cargo.toml")"
    cargo_build "$crate"
    artifact="$CARGO_TARGET_DIR/$TARGET/release/${name//-/_}.wasm"
    # Atomic replace: a watching host never sees half a file.
    cp "$artifact" "$OUT_DIR/.$name.wasm.tmp"
    mv -f "$OUT_DIR/.$name.wasm.tmp" "$OUT_DIR/$name.wasm"
    echo "built $OUT_DIR/$name.wasm ($(stat -c %s "$OUT_DIR/$name.wasm") bytes, $toolchain)"
done
