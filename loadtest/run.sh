#!/usr/bin/env bash
# Throughput and latency of GET /key next to GET /health of the same server, in the same run.
#
# Builds the release binary, starts it pinned to CPU 0 on a temporary database, seeds one tier
# and --keys keys through the admin API, then drives it from CPU 1 with wrk: --rounds rounds,
# each one /health run then one /key run. Prints requests/s, p50, p99 per run, a summary table
# (medians over the rounds), the server's peak RSS, and /key ÷ /health. Stops all it started.
# With --bare, each round first drives the bare axum server of examples/bare_axum.rs on the same
# CPU (port + 10): what HTTP alone reaches on this machine, the ceiling for both paths.
#
#   loadtest/run.sh [--keys N] [--connections N] [--duration 10s] [--rounds N] [--port N] [--bare] [--no-build]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KEYS=1000
CONNECTIONS=64
DURATION=10s
ROUNDS=3
PORT=18080
BUILD=1
BARE=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --keys) KEYS=$2; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --bare) BARE=1; shift ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

need wrk
trap stop_server EXIT INT TERM
if [[ $BUILD == 1 ]]; then
    if [[ $BARE == 1 ]]; then build bare_axum; else build; fi
fi

start_server "$PORT"
# Never spent: each key may serve 16,777,215 uses per second.
admin POST /admin/tiers '{"name":"pro","features":{"chat":{"rate_limit":16777215,"window_seconds":1}}}' >/dev/null
echo "seeding: $(seed_keys pro "$KEYS" 32 seed)"
if [[ $BARE == 1 ]]; then start_bare $((PORT + 10)); fi
echo "server RSS after seeding: $(( $(server_kb VmRSS) / 1024 )) MB"

RESULTS=$WORK/results
: >"$RESULTS"
TICK_US=$((1000000 / $(getconf CLK_TCK)))
drive() { # drive NAME URL ROUND PID
    local line before requests us
    before=$(cpu_ticks "$4")
    line=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency \
        -s "$ROOT/loadtest/wrk/auth.lua" "$2" | grep '^RESULT')
    requests=$(tr ' ' '\n' <<<"$line" | awk -F= '$1 == "requests" { print $2 }')
    # The server's CPU time per request: what a request costs, whatever else the machine runs.
    us=$(awk -v t="$(( $(cpu_ticks "$4") - before ))" -v tick="$TICK_US" -v n="$requests" \
        'BEGIN { printf "%.2f", t * tick / n }')
    echo "$1 round=$3 ${line#RESULT } server_cpu_us_per_req=$us" | tee -a "$RESULTS"
}
for round in $(seq "$ROUNDS"); do
    [[ $BARE == 1 ]] && drive bare "$BARE_URL/health" "$round" "$BARE_PID"
    drive health "$BASE_URL/health" "$round" "$SERVER_PID"
    drive key "$BASE_URL/key?feature=chat" "$round" "$SERVER_PID"
done
PEAK_MB=$(( $(server_kb VmHWM) / 1024 ))

echo
echo "== keypooler: $KEYS keys, $CONNECTIONS connections, $DURATION x $ROUNDS rounds, server on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU =="
awk -v peak="$PEAK_MB" '
    function val(field,   i, kv) {
        for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == field) return kv[2] }
    }
    function median(list, n,   sorted, i, j, t) {
        for (i = 1; i <= n; i++) sorted[i] = list[i]
        for (i = 2; i <= n; i++) for (j = i; j > 1 && sorted[j-1] > sorted[j]; j--) {
            t = sorted[j]; sorted[j] = sorted[j-1]; sorted[j-1] = t
        }
        return n % 2 ? sorted[(n+1)/2] : (sorted[n/2] + sorted[n/2+1]) / 2
    }
    {
        name = $1; n[name]++
        rps[name, n[name]] = val("rps"); p50[name, n[name]] = val("p50_ms"); p99[name, n[name]] = val("p99_ms")
        cpu[name, n[name]] = val("server_cpu_us_per_req")
        bad[name] += val("non2xx") + val("socket_errors")
    }
    END {
        printf "%-8s %12s %10s %10s %14s %10s\n", "path", "req/s", "p50 ms", "p99 ms", "server us/req", "errors"
        split("bare health key", names, " ")
        for (k = 1; k <= 3; k++) {
            name = names[k]
            if (!n[name]) continue
            for (i = 1; i <= n[name]; i++) { a[i] = rps[name, i]; b[i] = p50[name, i]; c[i] = p99[name, i]; d[i] = cpu[name, i] }
            med[name] = median(a, n[name]); us[name] = median(d, n[name])
            printf "%-8s %12.0f %10.3f %10.3f %14.2f %10d\n", name == "bare" ? "bare" : "/" name, med[name], median(b, n[name]), median(c, n[name]), us[name], bad[name]
        }
        printf "/key / /health throughput: %.3f (target >= 0.95)  [per round:", med["key"] / med["health"]
        for (i = 1; i <= n["key"]; i++) printf " %.3f", rps["key", i] / rps["health", i]
        printf "]\n/health / /key server CPU per request: %.3f (the same ratio, measured as cost)\n", us["health"] / us["key"]
        if (n["bare"]) printf "/health / bare axum throughput: %.3f, /key / bare axum: %.3f\n", med["health"] / med["bare"], med["key"] / med["bare"]
        printf "server peak RSS (VmHWM): %d MB\n", peak
    }' "$RESULTS"
