#!/usr/bin/env bash
# A pool of N keys end to end: generate the Go service's SQLite file of N keys (10 tiers x 5
# features, 64-byte values; examples/scale_source.rs), import it, start the server on it, and
# print each figure as a table: import time and peak RSS, the redb file against its source,
# start-up to /health, RSS after start, GET /key throughput, POST /admin/keys latency, the first
# page of GET /admin/keys and a /metrics scrape (with METRICS_TOKEN: per-key series on).
#
#   loadtest/scale.sh [N] [--duration 5s] [--connections 64] [--port 18090] [--no-build]
#
# N defaults to 100000. Start-up runs on every core (decryption is parallel); the server is then
# pinned to $SERVER_CPU and wrk to $CLIENT_CPU. Needs about 2.5 KB of disk per key in /tmp.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KEYS=100000
DURATION=5s
CONNECTIONS=64
PORT=18090
BUILD=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --duration) DURATION=$2; shift 2 ;;
        --connections) CONNECTIONS=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        -*) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
        *) KEYS=$1; shift ;;
    esac
done

need wrk
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
trap stop_server EXIT INT TERM
if [[ $BUILD == 1 ]]; then build scale_source; fi

new_server "$PORT"
METRICS_TOKEN=$(random_hex 32)
export METRICS_TOKEN
FIGURES=$WORK/figures
: >"$FIGURES"
figure() { printf '%s\t%s\n' "$1" "$2" >>"$FIGURES"; echo "$1: $2" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f s", b - a }'; }
mb() { awk -v b="$1" 'BEGIN { printf "%.0f MB", b / 1048576 }'; }

echo "load before: $(uptime)" >&2
started=$(now)
ENCRYPTION_KEY=$DATABASE_KEY "$TARGET/release/examples/scale_source" --keys "$KEYS" --out "$WORK/go.db"
figure "generate the Go file (not a target)" "$(since "$started")"

ENCRYPTION_KEY=$DATABASE_KEY DB_PATH="$WORK/pool.redb" /usr/bin/time -v -o "$WORK/import.time" \
    "$BIN" import --from "$WORK/go.db" >"$WORK/import.log"
wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { print $2 }' "$WORK/import.time")
peak_kb=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$WORK/import.time")
figure "keypooler import" "$wall (m:ss), peak RSS $((peak_kb / 1024)) MB"
source_bytes=$(stat -c %s "$WORK/go.db")
redb_bytes=$(stat -c %s "$WORK/pool.redb")
figure "redb file" "$(mb "$redb_bytes") (SQLite source $(mb "$source_bytes"), $(awk -v r="$redb_bytes" -v s="$source_bytes" 'BEGIN { printf "%.2f", r / s }')x)"

# Start-up on every core; then the server goes to its own core and wrk to the other.
started=$(now)
SERVER_CPU=0-$(($(nproc) - 1)) AWAIT_SECONDS=600 launch
figure "start-up to /health" "$(since "$started")"
taskset -apc "$SERVER_CPU" "$SERVER_PID" >/dev/null
figure "RSS after start" "$(( $(server_kb VmRSS) / 1024 )) MB (peak $(( $(server_kb VmHWM) / 1024 )) MB)"

line=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"$DURATION" --latency \
    -s "$ROOT/loadtest/wrk/auth.lua" "$BASE_URL/key?feature=feature-0" | grep '^RESULT')
figure "GET /key ($CONNECTIONS connections, $DURATION)" "$(field "$line" rps) req/s, p50 $(field "$line" p50_ms) ms, p99 $(field "$line" p99_ms) ms, errors $(( $(field "$line" non2xx) + $(field "$line" socket_errors) ))"

add=$(taskset -c "$CLIENT_CPU" "$SEEDER" --url "$BASE_URL" --tier "tier 0" --keys 200 --clients 1 --prefix scale)
figure "POST /admin/keys (200, one at a time)" "p50 $(field "$add" p50_ms) ms, p99 $(field "$add" p99_ms) ms"

timed_get() { # timed_get TOKEN PATH: "<seconds> s, <bytes>" of one GET
    curl -fsS -o /dev/null -w '%{time_total} s, %{size_download} bytes' \
        -H "Authorization: Bearer $1" "$BASE_URL$2"
}
figure "GET /admin/keys?limit=100 (needs paging)" "$(timed_get "$ADMIN_TOKEN" '/admin/keys?limit=100')"
figure "GET /metrics (METRICS_TOKEN)" "$(timed_get "$METRICS_TOKEN" /metrics)"
figure "server peak RSS" "$(( $(server_kb VmHWM) / 1024 )) MB"

echo
echo "== keypooler: $KEYS keys (10 tiers x 5 features, 64-byte values), $(nproc) cores; load after: $(uptime | sed 's/.*load average: //') =="
awk -F'\t' '{ printf "| %-44s | %s |\n", $1, $2 }' "$FIGURES"
