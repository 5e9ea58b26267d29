#!/bin/sh
# The robot-flood figures of record (issue 3), in one command, on an IDLE machine:
#   bench/scenarios/robot_flood_figures.sh [DURATION_S]   (default 45)
# 1. the in-process flood (crates/tsdb/benches/flood.rs): one-series read latency while two nice-10 writers
#    append to 100k series and seals run, with and without a nice-0 busy thread (30 s each)
# 2. the append throughput guard (>= 10 M points per CPU-second)
# 3. the server flood (bench/scenarios/robot_flood.py) against a fresh release build; prints its JSON line
# Needs the shared data set and sender under $BENCH_WORK (default /tmp/peers-bench), see robot_flood.py.
set -eu
cd "$(dirname "$0")/../.."
DURATION="${1:-45}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -p roaster
FLOOD_SECS=30 FLOOD_HOGS=1 FLOOD_LOCK_WAITS=1 cargo bench --locked -p tsdb --bench flood
FLOOD_SECS=30 FLOOD_HOGS=0 cargo bench --locked -p tsdb --bench flood
TSDB_BENCH_FIGURES=1 TSDB_BENCH_SERIES=100000 cargo bench --locked -p tsdb --bench append
ROASTER_BIN="$CARGO_TARGET_DIR/release/roaster" python3 bench/scenarios/robot_flood.py --duration "$DURATION"
