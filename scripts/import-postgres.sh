#!/usr/bin/env bash
# Import of N keys (default 100,000) from the Go service's PostgreSQL database, beside the
# import of the same keys from its SQLite file (the later generation): time and peak RSS of
# `keypooler import`, each run RUNS times (default 3), with /usr/bin/time -v.
#
#   scripts/import-postgres.sh [N] [RUNS]
#
# Needs the release build (built here), sqlite3, GNU time and PostgreSQL's programs
# (apt-get install postgresql sqlite3 time). The keys (in 10 tiers, a tenth inactive, every
# value sealed `enc:gcm:`) are made once: plaintext rows in SQLite, imported, then exported by
# keypooler itself to both sources, so both hold the same keys sealed the same way. PostgreSQL
# runs in a temp folder on a free port, as the postgres user when run as root (initdb refuses
# root), and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
RUNS=${2:-3}

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$pg_bin" ] || pg_bin=$(dirname "$(command -v initdb)")
work=$(mktemp -d)
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$work"
  as_pg=(runuser -u postgres --)
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
stop() {
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap stop EXIT

cargo build --release --quiet
bin=$PWD/target/release/keypooler
export ENCRYPTION_KEY=$(printf '42%.0s' $(seq 32))

echo "== $N keys: SQLite rows, imported, exported to both sources"
{
  cat migrations/schema_migrations.sql migrations/latest/001_init.sql
  echo "INSERT INTO schema_migrations (version, name) VALUES (1, 'init');"
  echo "WITH RECURSIVE t(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM t WHERE i < 9)
        INSERT INTO tiers (id, name) SELECT 'tier-' || i, 'tier ' || i FROM t;"
  echo "INSERT INTO tier_features (tier_id, feature, rate_limit, window_seconds)
        SELECT id, 'chat', 100, 60 FROM tiers;"
  echo "WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < $N - 1)
        INSERT INTO keys (id, name, key_value, tier_id, is_active, metadata_json, created_at)
        SELECT printf('%08x-0000-4000-8000-%012x', i, i), 'key-' || i, printf('sk-proj-%040d', i),
               'tier-' || (i % 10), i % 10 != 0, '{}', '2026-01-01 00:00:00' FROM k;"
} | sqlite3 "$work/plain.db"
DB_PATH=$work/made.redb "$bin" import --from "$work/plain.db" >/dev/null
DB_PATH=$work/made.redb "$bin" export --to "$work/go.db" --schema latest >/dev/null

"${as_pg[@]}" "$pg_bin/initdb" -D "$work/data" -U kp -A trust -E UTF8 --locale=C --no-sync >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/data" -l "$work/log" -w \
  -o "-p $port -k $work -c listen_addresses=127.0.0.1" start >/dev/null
"${as_pg[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U kp go
url="postgres://kp@127.0.0.1:$port/go?sslmode=disable"
DB_PATH=$work/made.redb "$bin" export --to "$url" >/dev/null

measure() {
  local name=$1 from=$2
  for run in $(seq "$RUNS"); do
    rm -f "$work/target.redb"
    DB_PATH=$work/target.redb /usr/bin/time -v "$bin" import --from "$from" \
      >"$work/out" 2>"$work/time"
    printf '%-10s run %d: %s s, peak RSS %s MB  (%s)\n' "$name" "$run" \
      "$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time" | awk -F: '{print $(NF-1) * 60 + $NF}')" \
      "$(awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$work/time")" \
      "$(sed 's/.*: //' "$work/out")"
  done
}
echo "== load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
measure sqlite "$work/go.db"
measure postgres "$url"
echo "== load: $(cut -d' ' -f1-3 /proc/loadavg)"
