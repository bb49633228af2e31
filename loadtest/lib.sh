# shellcheck shell=bash
# Shared by the load scripts: build, start the release binary pinned to one CPU on a temporary
# database, seed it through the admin API, and stop everything on exit. Targets 127.0.0.1 only.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/keypooler
SEEDER=$TARGET/release/examples/admin_writes
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
SERVER_PID=""
BARE_PID=""
WORK=""
# Words put before the binaries when they are launched (instructions.sh runs them under valgrind).
SERVER_WRAPPER=()

# build [EXAMPLE]: the release binary, the seeder, and EXAMPLE if given.
build() {
    echo "building the release binary and the seeder..." >&2
    (cd "$ROOT" && cargo build --release --quiet --bin keypooler --example admin_writes ${1:+--example "$1"})
}

# need TOOL...: installs each missing tool from the Debian package of the same name.
need() {
    local tool
    for tool in "$@"; do
        if ! command -v "$tool" >/dev/null; then
            echo "$tool is missing: installing the Debian package" >&2
            apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null
        fi
    done
}

random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# new_server PORT: the temporary folder, tokens, key and URL of a server on PORT, not started
# (launch starts it).
new_server() {
    WORK=$(mktemp -d -t keypooler-load.XXXXXX)
    ADMIN_TOKEN=$(random_hex 32)
    export ADMIN_TOKEN
    DATABASE_KEY=$(random_hex 32)
    BASE_URL="http://127.0.0.1:$1"
    export BASE_URL
    PORT_IN_USE=$1
}

# start_server PORT: a fresh server on a temporary database, pinned to $SERVER_CPU.
start_server() {
    new_server "$1"
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
        taskset -c "$SERVER_CPU" ${SERVER_WRAPPER[@]+"${SERVER_WRAPPER[@]}"} "$BIN" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    await "$BASE_URL" "$SERVER_PID" "$WORK/server.log"
}

# start_bare PORT: examples/bare_axum.rs (built by `build bare_axum`) on PORT, pinned and wrapped
# like the server, as the ceiling HTTP alone reaches; after start_server. Sets BARE_URL.
start_bare() {
    BARE_URL="http://127.0.0.1:$1"
    taskset -c "$SERVER_CPU" ${SERVER_WRAPPER[@]+"${SERVER_WRAPPER[@]}"} "$TARGET/release/examples/bare_axum" "$1" \
        >"$WORK/bare.log" 2>&1 &
    BARE_PID=$!
    await "$BARE_URL" "$BARE_PID" "$WORK/bare.log"
}

# await URL PID LOG: waits up to $AWAIT_SECONDS (30) s for URL/health to answer; shows LOG if PID
# dies or it never does.
await() {
    for _ in $(seq $((${AWAIT_SECONDS:-30} * 10))); do
        curl -fsS -o /dev/null "$1/health" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    echo "$1 did not start:" >&2
    cat "$3" >&2
    return 1
}

# stop_server: stops the server and the bare server, and removes the temporary folder.
stop_server() {
    local pid
    for pid in "$SERVER_PID" "$BARE_PID"; do
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    SERVER_PID=""
    BARE_PID=""
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

# field LINE NAME: the value of NAME=value in LINE (words separated by spaces).
field() { tr ' ' '\n' <<<"$1" | awk -F= -v f="$2" '$1 == f { print $2 }'; }

# cpu_ticks PID: a process's user + system CPU time so far, in clock ticks (getconf CLK_TCK).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# server_kb FIELD: a memory figure of the server (VmHWM: peak RSS, VmRSS: current), in kB.
server_kb() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$SERVER_PID/status"; }
