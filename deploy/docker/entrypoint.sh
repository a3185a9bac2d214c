#!/bin/sh
# Container entrypoint: prepares the data directories, seeds an empty PERSONAS_DIR with the
# example personas the image carries, then runs `switchboard` with the given arguments.
#
#   PERSONAS_SEED_DIR   personas shipped in the image (/opt/switchboard/personas)
#   SEED_PERSONAS=0     never seed
set -eu

bin_dir=$(dirname "$0")

warn() { echo "switchboard-entrypoint: $*" >&2; }

# A directory the server must write to: create it, and say clearly when it can't be written
# (a bind mount owned by another uid is the usual cause).
ensure_writable() {
    dir=$1
    what=$2
    if ! mkdir -p "$dir" 2>/dev/null || [ ! -w "$dir" ]; then
        warn "$what directory $dir is not writable by uid $(id -u); chown it to $(id -u):$(id -g) or use a named volume"
    fi
}

# Only an empty personas directory is seeded: personas a deployment installed, edited or
# removed on purpose stay as they are. Files appear atomically (copy, then rename), so a
# watching plugin host never reads half a file.
seed_personas() {
    src=${PERSONAS_SEED_DIR:-}
    dst=${PERSONAS_DIR:-}
    [ "${SEED_PERSONAS:-1}" != 0 ] && [ -n "$src" ] && [ -n "$dst" ] && [ -d "$src" ] || return 0
    if [ -e "$dst/routes.toml" ] || ls "$dst"/*.wasm >/dev/null 2>&1; then
        return 0
    fi
    for f in "$src"/*; do
        [ -f "$f" ] || continue
        name=$(basename "$f")
        if ! { cp "$f" "$dst/.$name.seeding" && mv -f "$dst/.$name.seeding" "$dst/$name"; }; then
            warn "could not seed $dst/$name"
            return 0
        fi
    done
    warn "seeded $dst with the example personas from $src"
}

if [ "${1:-serve}" = serve ]; then
    [ -n "${RECORDINGS_DIR:-}" ] && ensure_writable "$RECORDINGS_DIR" recordings
    [ -n "${DATABASE_PATH:-}" ] && ensure_writable "$(dirname "$DATABASE_PATH")" database
    if [ -n "${PERSONAS_DIR:-}" ]; then
        ensure_writable "$PERSONAS_DIR" personas
        seed_personas
    fi
fi
exec "$bin_dir/switchboard" "$@"
