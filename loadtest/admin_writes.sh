#!/usr/bin/env bash
# How admin writes scale, end to end over HTTP (durable commit included):
#   1. one write at a time into a pool of 100 keys, then into a pool of --large keys (p50, p99),
#      and as many deletes, one at a time, from the middle of each pool;
#   2. 10,000 keys added by 32 concurrent clients (group commit), timed;
#   3. the server's RSS holding --large keys of 64-byte values: after filling it, and after a
#      restart on the same database (start-up loads every key).
# Server pinned to CPU 0, clients on CPU 1, temporary database; stops all it started.
#
#   loadtest/admin_writes.sh [--large 100000] [--probe 100] [--port N] [--no-build]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LARGE=100000
PROBE=100
PORT=18081
BUILD=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --large) LARGE=$2; shift 2 ;;
        --probe) PROBE=$2; shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done
trap stop_server EXIT INT TERM
[[ $BUILD == 1 ]] && build

start_server "$PORT"
admin POST /admin/tiers '{"name":"pro","features":{"chat":100,"image":{"rate_limit":10,"window_seconds":10}}}' >/dev/null
seed_keys pro 100 32 base >/dev/null
small=$(seed_keys pro "$PROBE" 1 probe-small)
echo "one write at a time, pool of 100:       $small"
small_delete=$(delete_keys "$PROBE")
echo "one delete at a time, pool of $((100 + PROBE)):      $small_delete"
concurrent=$(seed_keys pro 10000 32 concurrent)
echo "10,000 keys by 32 concurrent clients:   $concurrent"
remaining=$((LARGE - 10000 - 100 - PROBE))
if ((remaining > 0)); then seed_keys pro "$remaining" 32 fill >/dev/null; fi
large=$(seed_keys pro "$PROBE" 1 probe-large)
echo "one write at a time, pool of $LARGE:  $large"
rss=$(( $(server_kb VmRSS) / 1024 ))
hwm=$(( $(server_kb VmHWM) / 1024 ))
keys=$(admin GET /admin/health | sed -E 's/.*"pool_size":([0-9]+).*/\1/')
# After the RSS: finding the keys to delete lists the whole pool, a large response.
large_delete=$(delete_keys "$PROBE")
echo "one delete at a time, pool of $LARGE: $large_delete"
restart_server
loaded=$(( $(server_kb VmRSS) / 1024 ))

echo
echo "== admin writes =="
printf "%-44s %s\n" "single write p50, pool of 100 (ms)" "$(field "$small" p50_ms)"
printf "%-44s %s\n" "single write p50, pool of $LARGE (ms)" "$(field "$large" p50_ms)"
awk -v a="$(field "$small" p50_ms)" -v b="$(field "$large" p50_ms)" \
    'BEGIN { printf "%-44s %.2f (target <= 2)\n", "large / small", b / a }'
printf "%-44s %s\n" "single delete p50, pool of $((100 + PROBE)) (ms)" "$(field "$small_delete" p50_ms)"
printf "%-44s %s\n" "single delete p50, pool of $LARGE (ms)" "$(field "$large_delete" p50_ms)"
awk -v a="$(field "$small_delete" p50_ms)" -v b="$(field "$large_delete" p50_ms)" \
    'BEGIN { printf "%-44s %.2f\n", "large / small (deletes)", b / a }'
printf "%-44s %s (target < 5)\n" "10,000 keys, 32 clients (s)" "$(field "$concurrent" seconds)"
printf "%-44s %s MB after filling it (peak %s MB)\n" "server RSS with $keys keys" "$rss" "$hwm"
printf "%-44s %s MB (target < 150)\n" "server RSS, restarted on those keys" "$loaded"
