#!/usr/bin/env bash
# Fuzz every wire parser in turn for a fixed time each and report executions and crashes
# (issue 3: "0 panics after >= 10 minutes of fuzzing per parser (report executions)").
#
#   bench/scenarios/fuzz.sh [seconds-per-target] [targets...]
#   nice -n 19 bench/scenarios/fuzz.sh 600 &      # what the figure in BENCHMARKS.md used
#
# Targets default to graphite statsd influx remote_write json (crates/wire/fuzz/fuzz_targets).
# Needs cargo-fuzz (`cargo install cargo-fuzz`); runs on stable through RUSTC_BOOTSTRAP=1.
# Each target logs to $FUZZ_LOG_DIR/fuzz-<target>.log (default /tmp); one summary line per target
# goes to stdout and to $FUZZ_LOG_DIR/fuzz-summary.log:
#   target=graphite seconds=600 execs=123456789 exec_per_s=205761 crashes=0 exit=0
# A crash stops that target (libFuzzer's behaviour) but not the script; its input lands in
# crates/wire/fuzz/artifacts/<target>/. The script exits non-zero if any target crashed.
set -uo pipefail
cd "$(dirname "$0")/../../crates/wire"
SECS=${1:-600}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(graphite statsd influx remote_write json)
LOGS=${FUZZ_LOG_DIR:-/tmp}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-wire}
export RUSTC_BOOTSTRAP=1
SUMMARY="$LOGS/fuzz-summary.log"
: >"$SUMMARY"
: >"$LOGS/fuzz-build.log"

# Build all targets first so the per-target clock measures fuzzing, not compiling. The default
# cargo-fuzz profile is release with debug assertions and overflow checks on.
for t in "${TARGETS[@]}"; do
  cargo fuzz build --target-dir "$CARGO_TARGET_DIR" "$t" >>"$LOGS/fuzz-build.log" 2>&1 || {
    echo "build of $t failed, see $LOGS/fuzz-build.log" | tee -a "$SUMMARY"
    exit 2
  }
done

failed=0
for t in "${TARGETS[@]}"; do
  log="$LOGS/fuzz-$t.log"
  mkdir -p "fuzz/artifacts/$t"
  before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  cargo fuzz run --target-dir "$CARGO_TARGET_DIR" "$t" -- -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  after=$(find "fuzz/artifacts/$t" -type f | wc -l)
  # libFuzzer: "Done 123 runs in 600 second(s)" on a clean finish, else stat::number_of_executed_units.
  execs=$(grep -oE 'Done [0-9]+ runs' "$log" | tail -1 | grep -oE '[0-9]+')
  [ -z "$execs" ] && execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$')
  [ -z "$execs" ] && execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  secs=$(grep -oE 'in [0-9]+ second' "$log" | tail -1 | grep -oE '[0-9]+')
  [ -z "$secs" ] && secs=$SECS
  crashes=$((after - before))
  [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ] && crashes=1
  [ "$crashes" -ne 0 ] && failed=1
  rate=$(( ${execs:-0} / (secs > 0 ? secs : 1) ))
  echo "target=$t seconds=$secs execs=${execs:-0} exec_per_s=$rate crashes=$crashes exit=$rc" | tee -a "$SUMMARY"
done
exit $failed
