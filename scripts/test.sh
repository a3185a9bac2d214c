#!/usr/bin/env bash
# The test command: set up what the tests need, then check formatting, lints and run every test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --workspace --locked
# Counts the whole process (tasks, threads, live heap): needs the test binary to itself.
cargo test -p switchboard --locked --test integration -- --ignored --exact \
    conversation::a_hundred_calls_leave_no_task_thread_or_memory_behind
# The image's runtime stage, rebuilt as a directory and started (no Docker engine needed).
bash scripts/check-deploy.sh
