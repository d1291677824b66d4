#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time (FUZZ_SECONDS, default 60) from its seed
# corpus (fuzz/seeds/<target>, made from the drivers' specification tests by
# fuzz/make_seeds.py) and any earlier crash inputs (fuzz/regressions/<target>). Exits
# non-zero, printing the input, if a target crashes, panics, hangs or runs out of memory.
#
# Usage: scripts/fuzz.sh [target...]   (default: wire_message command query)
# Needs cargo-fuzz (installed here if missing) and a toolchain that takes -Z flags: the
# machine's nightly if it has one, else stable with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-60}
targets=(wire_message command query)
if [ $# -gt 0 ]; then targets=("$@"); fi

if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

cd fuzz
# No sanitizer: the project's own code forbids `unsafe`, so the findings that matter are
# panics, overflows (debug assertions are on), hangs and runaway memory, which libFuzzer
# catches by itself; ASan would halve the executions per second for little more.
for t in "${targets[@]}"; do
  cargo "${toolchain[@]+"${toolchain[@]}"}" fuzz build -s none -a "$t"
done
for t in "${targets[@]}"; do
  echo "-- fuzzing $t for ${secs}s"
  work=$(mktemp -d)
  dirs=("$work" "seeds/$t")
  if [ -d "regressions/$t" ]; then dirs+=("regressions/$t"); fi
  # -timeout: one input taking 25 s is a hang; -rss_limit_mb: runaway memory is a crash.
  if ! cargo "${toolchain[@]+"${toolchain[@]}"}" fuzz run -s none -a "$t" "${dirs[@]}" -- \
      -max_total_time="$secs" -timeout=25 -rss_limit_mb=4096 -print_final_stats=1 \
      >"$work.log" 2>&1; then
    tail -60 "$work.log"
    echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/ (add it to fuzz/regressions/$t and a test)" >&2
    exit 1
  fi
  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|DONE" "$work.log" || true
  rm -rf "$work" "$work.log"
done
