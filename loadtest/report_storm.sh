#!/usr/bin/env bash
# GET /key on one feature, with and without a storm of 429 reports on a key of another feature
# (many callers seeing the same provider refusal): what the reports cost the hot path.
#
# Builds the release binary, starts it pinned to CPU 0 on a temporary database with --keys keys
# for `chat` and one key for `storm`, then runs --rounds rounds from CPU 1: wrk on
# /key?feature=chat alone, then the same with `provider storm` sending --rate reports a second.
# Prints each run and the medians: throughput, and the server's CPU time per GET /key (all the
# server's CPU in the run, the reports' included, over the GET /key requests served), whose
# ratio is what the storm costs GET /key on a saturated server whatever else the machine runs.
# Target: the storm costs at most 5 %.
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

TICK_US=$((1000000 / $(getconf CLK_TCK)))
run() { # run: wrk on /key?feature=chat for DURATION seconds; prints "requests/s server-us-per-request"
    local before line
    before=$(cpu_ticks "$SERVER_PID")
    line=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$ROOT/loadtest/wrk/auth.lua" \
        "$BASE_URL/key?feature=chat" | grep '^RESULT')
    awk -v line="$line" -v t="$(( $(cpu_ticks "$SERVER_PID") - before ))" -v tick="$TICK_US" 'BEGIN {
        n = split(line, kv, /[ =]/)
        for (i = 2; i < n; i += 2) f[kv[i]] = kv[i + 1]
        printf "%.0f %.3f\n", f["rps"], t * tick / f["requests"]
    }'
}
declare -a QUIET STORMY QUIET_US STORMY_US
for round in $(seq "$ROUNDS"); do
    read -r rps us < <(run)
    QUIET+=("$rps"); QUIET_US+=("$us")
    taskset -c "$CLIENT_CPU" "$PROVIDER_BIN" storm --broker "$BASE_URL" --key-id "$STORM_KEY" \
        --rate "$RATE" --seconds $((DURATION + 2)) >"$WORK/storm.log" &
    storm_pid=$!
    sleep 1
    read -r rps us < <(run)
    STORMY+=("$rps"); STORMY_US+=("$us")
    wait "$storm_pid"
    echo "round $round: /key?feature=chat alone ${QUIET[-1]} req/s, ${QUIET_US[-1]} us/req; beside the storm ${STORMY[-1]} req/s, ${STORMY_US[-1]} us/req ($(cat "$WORK/storm.log"))"
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
awk -v q="$(median "${QUIET[@]}")" -v s="$(median "${STORMY[@]}")" -v qu="$(median "${QUIET_US[@]}")" \
    -v su="$(median "${STORMY_US[@]}")" -v r="$RATE" 'BEGIN {
        printf "median: alone %.0f req/s, %.3f us/req; beside %d reports/s %.0f req/s, %.3f us/req\n", q, qu, r, s, su
        printf "GET /key throughput beside the storm, as server cost: %.3f (target >= 0.95); as measured req/s: %.3f\n", qu / su, s / q
    }'
