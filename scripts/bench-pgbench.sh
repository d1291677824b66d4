#!/usr/bin/env bash
# Concurrent durable inserts, Eddy against PostgreSQL, in one session on this machine.
#
#   ./scripts/bench-pgbench.sh [SECONDS]
#
# PostgreSQL: a throw-away cluster on 127.0.0.1 (synchronous_commit=on, fsync=on,
# wal_sync_method=fdatasync), pgbench -j 2 running a one-row INSERT into a jsonb table
# with 1, 8 and 64 clients. Eddy: `eddy-bench inserts` (1, 8 and 64 connections of
# single-document inserts through the Rust driver, default write concern). Installs
# PostgreSQL from Debian's packages if it is missing. A program that prints figures, not a
# test.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends postgresql
fi
bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
as=()
[ "$(id -u)" -eq 0 ] && as=(runuser -u postgres --)
root="$(mktemp -d)"
chmod 755 "$root"
[ "$(id -u)" -eq 0 ] && chown postgres "$root"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
trap '"${as[@]}" "$bindir/pg_ctl" -D "$root/data" -m fast -w stop >/dev/null 2>&1 || true; rm -rf "$root"' EXIT
"${as[@]}" "$bindir/initdb" -D "$root/data" -U bench --auth=trust >/dev/null
"${as[@]}" "$bindir/pg_ctl" -D "$root/data" -l "$root/data/server.log" -w \
  -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$root -c fsync=on -c synchronous_commit=on -c wal_sync_method=fdatasync -c shared_buffers=256MB -c max_connections=200" \
  start >/dev/null
psql=("${as[@]}" "$bindir/psql" -h 127.0.0.1 -p "$port" -U bench -d postgres -q)
"${psql[@]}" -c "CREATE TABLE docs (id bigserial PRIMARY KEY, doc jsonb NOT NULL)"
cat > "$root/insert.sql" <<'SQL'
INSERT INTO docs (doc) VALUES ('{"w": 1, "i": 1, "payload": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}');
SQL
chmod 644 "$root/insert.sql"
pg_cpu() {
  # CPU ticks of the whole cluster: the postmaster's own and its reaped children's
  # (cutime, cstime: backends that already exited), plus the live children's.
  local pm total pid
  pm=$(head -1 "$root/data/postmaster.pid")
  total=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pm/stat")
  for pid in $(pgrep -P "$pm" || true); do
    [ -r "/proc/$pid/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
for clients in 1 8 64; do
  before=$(pg_cpu)
  out=$("${as[@]}" "$bindir/pgbench" -h 127.0.0.1 -p "$port" -U bench -n -c "$clients" -j 2 -T "$secs" -f "$root/insert.sql" postgres 2>&1)
  after=$(pg_cpu)
  tps=$(echo "$out" | awk '/^tps = / {print $3; exit}')
  tx=$(echo "$out" | awk '/number of transactions actually processed/ {split($0, a, ": "); split(a[2], b, "/"); print b[1]; exit}')
  cpu_us=$(python3 -c "print(round(($after - $before) / $(getconf CLK_TCK) * 1e6 / max(1, $tx)))")
  echo "postgres: pgbench -c $clients -j 2, one-row INSERT into jsonb, synchronous_commit=on: $tps inserts/s ($tx in ${secs} s), server CPU ${cpu_us} µs per insert"
done
cargo build --release --workspace --quiet
target/release/eddy-bench inserts --seconds "$secs"
