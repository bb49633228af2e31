#!/usr/bin/env bash
# What a request costs in instructions, counted by valgrind (callgrind): a figure that, unlike
# requests/s or CPU time, does not move with the machine's neighbours.
#
# Starts the release binary under callgrind with counting off, seeds one tier and --keys keys,
# then for each path, --rounds times: counts the instructions of all the server's threads while
# wrk drives the path for --duration, and divides by the requests served. Prints each round, the
# medians, and /health ÷ /key (how close GET /key comes to the cost of HTTP alone). With --bare,
# the bare axum server of examples/bare_axum.rs is counted the same way first.
#
# The audit trail is off unless --audit: under callgrind the server runs about 50× slower, so the
# writer would store every served key, where at full speed the queue keeps at most 8,192 a second
# and drops the rest; counting every disk write would charge /key for work it does not do.
#
#   loadtest/instructions.sh [--keys N] [--duration 4s] [--rounds N] [--port N] [--bare] [--audit] [--no-build]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KEYS=1000
DURATION=4s
ROUNDS=3
PORT=18084
BUILD=1
BARE=0
export AUDIT=off
while [[ $# -gt 0 ]]; do
    case $1 in
        --keys) KEYS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --bare) BARE=1; shift ;;
        --audit) AUDIT=on; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

need wrk valgrind
trap stop_server EXIT INT TERM
if [[ $BUILD == 1 ]]; then
    if [[ $BARE == 1 ]]; then build bare_axum; else build; fi
fi

# Counting starts off (`--instr-atstart=no`) and is switched on around each wrk run.
# ALLOW_CORE_DUMPS=on leaves the process dumpable, which callgrind_control needs to reach it.
export ALLOW_CORE_DUMPS=on
SERVER_WRAPPER=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/dev/null)
start_server "$PORT"
admin POST /admin/tiers '{"name":"pro","features":{"chat":{"rate_limit":16777215,"window_seconds":1}}}' >/dev/null
echo "seeding: $(seed_keys pro "$KEYS" 4 seed)"
if [[ $BARE == 1 ]]; then start_bare $((PORT + 10)); fi

RESULTS=$WORK/results
: >"$RESULTS"
count() { # count NAME URL ROUND PID
    local requests instructions
    callgrind_control --zero "$4" >/dev/null 2>&1
    callgrind_control --instr=on "$4" >/dev/null 2>&1
    requests=$(taskset -c "$CLIENT_CPU" wrk -t1 -c16 -d"$DURATION" -s "$ROOT/loadtest/wrk/auth.lua" "$2" \
        | grep '^RESULT' | tr ' ' '\n' | awk -F= '$1 == "requests" { print $2 }')
    # Every thread's count, read before counting stops. Rows read `Th 1   1,234` or, from thread
    # 10 on, `Th10  1,234`: the count is the last field, with thousands separators.
    instructions=$(callgrind_control -e "$4" 2>/dev/null \
        | awk '$1 ~ /^Th/ { gsub(",", "", $NF); n += $NF } END { print n + 0 }')
    callgrind_control --instr=off "$4" >/dev/null 2>&1
    if ! [[ ${requests:-0} -gt 0 && $instructions -gt 0 ]]; then
        echo "no count for $1 (requests: ${requests:-none}, instructions: $instructions): is callgrind_control able to reach process $4?" >&2
        exit 1
    fi
    echo "$1 round=$3 requests=$requests instructions=$instructions per_request=$((instructions / requests))" \
        | tee -a "$RESULTS"
}
for round in $(seq "$ROUNDS"); do
    [[ $BARE == 1 ]] && count bare "$BARE_URL/health" "$round" "$BARE_PID"
    count health "$BASE_URL/health" "$round" "$SERVER_PID"
    count key "$BASE_URL/key?feature=chat" "$round" "$SERVER_PID"
done

echo
echo "== instructions per request (callgrind): $KEYS keys, audit $AUDIT, $DURATION x $ROUNDS rounds =="
awk '
    {
        split($5, kv, "="); name = $1; n[name]++; v[name, n[name]] = kv[2]
    }
    function median(name,   i, j, t, s) {
        for (i = 1; i <= n[name]; i++) s[i] = v[name, i]
        for (i = 2; i <= n[name]; i++) for (j = i; j > 1 && s[j-1] > s[j]; j--) { t = s[j]; s[j] = s[j-1]; s[j-1] = t }
        return n[name] % 2 ? s[(n[name]+1)/2] : (s[n[name]/2] + s[n[name]/2+1]) / 2
    }
    END {
        if (n["bare"]) printf "bare axum  %8d\n", median("bare")
        printf "/health    %8d\n/key       %8d\n", median("health"), median("key")
        printf "/health / /key: %.3f (the cost ratio; target >= 0.95)\n", median("health") / median("key")
        if (n["bare"]) printf "bare / /health: %.3f\n", median("bare") / median("health")
    }' "$RESULTS"
