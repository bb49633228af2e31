#!/usr/bin/env bash
# GET /key on one feature, with and without a storm of 429 reports on a key of another feature
# (many callers seeing the same provider refusal): what the reports cost the hot path.
#
# Builds the release binary, starts it pinned to CPU 0 on a temporary database with --keys keys
# for `chat` and one key for `storm`, then runs --rounds rounds from CPU 1: wrk on
# /key?feature=chat alone, then the same with `provider storm` sending --rate reports a second.
# Prints each run, the medians, and the throughput with the storm over without (target >= 0.95).
#
#   loadtest/report_storm.sh [--keys N] [--rate 1000] [--duration 10] [--rounds 3] [--port N] [--no-build]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KEYS=1000
RATE=1000
DURATION=10
ROUNDS=3
CONNECTIONS=64
PORT=18086
BUILD=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --keys) KEYS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

need wrk
trap stop_server EXIT INT TERM
[[ $BUILD == 1 ]] && build provider
PROVIDER_BIN=$TARGET/release/examples/provider

start_server "$PORT"
admin POST /admin/tiers '{"name":"pro","features":{"chat":{"rate_limit":2147483647,"window_seconds":1}}}' >/dev/null
admin POST /admin/tiers '{"name":"stormy","features":{"storm":{"rate_limit":100,"window_seconds":1}}}' >/dev/null
seed_keys pro "$KEYS" 32 seed >/dev/null
STORM_KEY=$(admin POST /admin/keys '{"name":"stormy-0","tier":"stormy","key":"sk-stormy-0"}' | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')

rps() { # rps: wrk on /key?feature=chat for DURATION seconds; prints requests/s
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$ROOT/loadtest/wrk/auth.lua" \
        "$BASE_URL/key?feature=chat" | sed -n 's/^RESULT.* rps=\([0-9.]*\).*/\1/p'
}
declare -a QUIET STORMY
for round in $(seq "$ROUNDS"); do
    QUIET+=("$(rps)")
    taskset -c "$CLIENT_CPU" "$PROVIDER_BIN" storm --broker "$BASE_URL" --key-id "$STORM_KEY" \
        --rate "$RATE" --seconds $((DURATION + 2)) >"$WORK/storm.log" &
    storm_pid=$!
    sleep 1
    STORMY+=("$(rps)")
    wait "$storm_pid"
    echo "round $round: /key?feature=chat ${QUIET[-1]} req/s alone, ${STORMY[-1]} req/s beside $(cat "$WORK/storm.log")"
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
quiet=$(median "${QUIET[@]}")
stormy=$(median "${STORMY[@]}")
awk -v q="$quiet" -v s="$stormy" -v r="$RATE" \
    'BEGIN { printf "median: %.0f req/s alone, %.0f beside %d reports/s: %.3f (target >= 0.95)\n", q, s, r, s / q }'
