#!/usr/bin/env bash
# Model-checks the lock-free counter with loom: builds the library's unit tests with
# `--cfg loom` (for this crate only, in its own target folder so normal builds are untouched)
# and runs the loom models. Warnings fail the build, as clippy's do for the normal one.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"
binary=$(cargo rustc --lib --profile test --message-format=json-render-diagnostics -- --cfg loom -D warnings \
  | grep -o '"executable":"[^"]*"' | tail -n 1 | sed 's/"executable":"\(.*\)"/\1/')
[ -n "$binary" ] || { echo "loom build produced no test binary" >&2; exit 1; }
"$binary" loom_model --test-threads=1 "$@"
