#!/usr/bin/env bash
# Runs every test: format and lint checks, the Rust unit and integration tests (which
# start real servers), the PyMongo and mongosh tests against a freshly built eddy (smoke,
# resume tokens, TLS, auth), a replica set failover test (three eddy processes), the
# drivers' specification tests (change streams, CRUD, transactions, sessions, retryable
# writes, client-side operation timeouts) through PyMongo's runner without and then with
# --auth, and each fuzz target for a bounded time.
# Also: mongosh, Debian's prometheus-mongodb-exporter, the Node.js driver 7 and Mongoose 9,
# and an EventSource in headless Chromium through a kill -9 of the server.
# Installs what it needs itself (Python venvs with pymongo, pytest and Selenium; openssl,
# chromium, chromium-driver and prometheus-mongodb-exporter from apt; the npm packages;
# cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage prints its start and the time the previous one took, so the CI budget
# (90 minutes, kept under 60) stays visible.
stage_start=$SECONDS
stage() {
  echo "   (previous stage: $((SECONDS - stage_start)) s; total $SECONDS s)"
  stage_start=$SECONDS
  echo "== $*"
}
trap 'echo "   (last stage: $((SECONDS - stage_start)) s; total $SECONDS s)"' EXIT

stage "cargo fmt --check"
cargo fmt --all --check
stage "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
stage "cargo test"
cargo test --workspace

stage "pymongo and mongosh tests"
# openssl for the TLS tests; Debian's prometheus-mongodb-exporter for the exporter test.
need_apt=()
command -v openssl >/dev/null || need_apt+=(openssl)
command -v prometheus-mongodb-exporter >/dev/null || need_apt+=(prometheus-mongodb-exporter)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get install -y -q "${need_apt[@]}" >/dev/null || { apt-get update -q && apt-get install -y -q "${need_apt[@]}"; }
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check "pymongo==4.10.1" "pytest==8.3.4"
cargo build --release --bin eddy
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/release/eddy --port "$port" --dbpath "$data" --quiet --setParameter enableTestCommands=1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$data"; echo "   (last stage: $((SECONDS - stage_start)) s; total $SECONDS s)"' EXIT
for _ in $(seq 1 100); do
  (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break
  sleep 0.1
done
(cd tests/node && npm ci --silent --no-audit --no-fund)
EDDY_PORT=$port .venv/bin/python -m pytest -q tests/python
stage "dump/restore round trip (npm @apostrophecms/mongodb-snapshot)"
(cd tests/node && EDDY_PORT=$port node dump_restore.js)
stage "Node.js driver 7 and Mongoose 9 (node --test, own eddy)"
(cd tests/node-compat && npm ci --silent --no-audit --no-fund && EDDY_BIN=../../target/release/eddy node --test)
stage "browser: EventSource in headless Chromium through a kill -9 of the server"
command -v chromium >/dev/null && command -v chromedriver >/dev/null || {
  apt-get install -y -q chromium chromium-driver >/dev/null || { apt-get update -q && apt-get install -y -q chromium chromium-driver >/dev/null; }
}
.venv/bin/pip install --quiet --disable-pip-version-check "selenium==4.27.1"
EDDY_BIN=target/release/eddy .venv/bin/python -m pytest -q -s tests/browser
stage "replica set: failover (3 members, 5 SIGKILLs of the primary, 2 partitions)"
EDDY_BIN=target/release/eddy .venv/bin/python tests/replset/failover.py
stage "replica set: initial sync (a wiped member, a member that fell off a 1 MB oplog)"
EDDY_BIN=target/release/eddy .venv/bin/python tests/replset/initial_sync.py
stage "replica set: access control with a key file"
EDDY_BIN=target/release/eddy .venv/bin/python tests/replset/keyfile.py
stage "replica set: mongosh's rs.* helpers"
EDDY_BIN=target/release/eddy .venv/bin/python tests/replset/mongosh_rs.py

passes=$(mktemp -d)
suites=(changestreams crud cursor indexes transactions sessions retryable-writes csot)
for suite in "${suites[@]}"; do
  stage "drivers' specification tests ($suite)"
  EDDY_BIN=target/release/eddy PASSED_OUT="$passes/$suite" ./scripts/spec-tests.sh "$suite"
done
# The suites that exercise replication, against a replica set of three members.
stage "drivers' specification tests against a 3-member replica set (changestreams transactions sessions retryable-writes retryable-reads sdam)"
EDDY_RS=3 EDDY_BIN=target/release/eddy ./scripts/spec-tests.sh changestreams transactions sessions retryable-writes retryable-reads sdam
# A set with access control: members authenticate to each other with a key file.
stage "drivers' specification tests against a 3-member replica set with --keyFile (changestreams transactions retryable-writes auth)"
EDDY_AUTH=1 EDDY_RS=3 EDDY_BIN=target/release/eddy ./scripts/spec-tests.sh changestreams transactions retryable-writes auth
# The single-node suites the key-file stage above does not cover again with access control
# on (PyMongo's harness creates its user through the localhost exception and runs as it),
# plus the suites that only run with auth. Every test of these suites that passed without
# auth must pass with it. (changestreams, transactions and retryable-writes ran with auth
# in the key-file stage.)
auth_suites=(crud sessions csot)
stage "drivers' specification tests with --auth (${auth_suites[*]} auth)"
EDDY_AUTH=1 EDDY_BIN=target/release/eddy PASSED_OUT="$passes/with-auth" \
  ./scripts/spec-tests.sh "${auth_suites[@]}" auth
sort "${auth_suites[@]/#/$passes/}" > "$passes/without-auth"
if ! comm -23 "$passes/without-auth" "$passes/with-auth" > "$passes/lost"; then exit 1; fi
if [ -s "$passes/lost" ]; then
  echo "these tests pass without auth but not with it:" >&2
  cat "$passes/lost" >&2
  exit 1
fi
echo "with auth: all $(wc -l < "$passes/without-auth") tests that pass without auth pass," \
  "and $(comm -13 "$passes/without-auth" "$passes/with-auth" | wc -l) more that need auth"

stage "fuzzing (cargo fuzz: wire_message, command, query; ${FUZZ_SECONDS:-60} s each)"
./scripts/fuzz.sh
