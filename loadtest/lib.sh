# shellcheck shell=bash
# Shared by the load scripts: build, start the release binary pinned to one CPU on a temporary
# database, seed it through the admin API, and stop everything on exit. Targets 127.0.0.1 only.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$ROOT/target/release/keypooler
SEEDER=$ROOT/target/release/examples/admin_writes
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SERVER_PID=""
WORK=""
# Words put before the binary when it is launched (instructions.sh runs it under valgrind).
SERVER_WRAPPER=()

build() {
    echo "building the release binary and the seeder..." >&2
    (cd "$ROOT" && cargo build --release --quiet --bin keypooler --example admin_writes)
}

random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# start_server PORT: a fresh server on a temporary database, pinned to $SERVER_CPU.
start_server() {
    WORK=$(mktemp -d -t keypooler-load.XXXXXX)
    ADMIN_TOKEN=$(random_hex 32)
    export ADMIN_TOKEN
    DATABASE_KEY=$(random_hex 32)
    BASE_URL="http://127.0.0.1:$1"
    export BASE_URL
    PORT_IN_USE=$1
    launch
}

# restart_server: stops the server and starts it again on the same database (what it holds
# after loading it, without the churn of having been filled).
restart_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    launch
}

launch() {
    ENCRYPTION_KEY=$DATABASE_KEY SERVER_PORT=$PORT_IN_USE DB_PATH="$WORK/pool.redb" LOG_LEVEL=warn \
        taskset -c "$SERVER_CPU" "${SERVER_WRAPPER[@]}" "$BIN" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 300); do
        curl -fsS -o /dev/null "$BASE_URL/health" 2>/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "the server did not start:" >&2
    cat "$WORK/server.log" >&2
    return 1
}

stop_server() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
    if [[ -n $WORK ]]; then rm -rf "$WORK"; fi
    WORK=""
}

# admin METHOD PATH [BODY]: one admin call; fails on a non-2xx answer.
admin() {
    curl -fsS -X "$1" -H "Authorization: Bearer $ADMIN_TOKEN" ${3:+-d "$3"} "$BASE_URL$2"
}

# seed_keys TIER COUNT CLIENTS PREFIX: adds COUNT keys from $CLIENT_CPU; prints the seeder's line.
seed_keys() {
    taskset -c "$CLIENT_CPU" "$SEEDER" --url "$BASE_URL" --tier "$1" --keys "$2" --clients "$3" --prefix "$4"
}

# delete_keys COUNT: deletes COUNT keys from the middle of the pool, one at a time, from
# $CLIENT_CPU; prints the seeder's line.
delete_keys() {
    taskset -c "$CLIENT_CPU" "$SEEDER" --url "$BASE_URL" --keys "$1" --clients 1 --delete
}

# cpu_ticks PID: a process's user + system CPU time so far, in clock ticks (getconf CLK_TCK).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# server_kb FIELD: a memory figure of the server (VmHWM: peak RSS, VmRSS: current), in kB.
server_kb() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$SERVER_PID/status"; }
