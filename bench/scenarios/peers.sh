#!/usr/bin/env bash
# Roaster beside VictoriaMetrics on the shared peer workload, one after the other on this machine.
# Measures: Graphite TCP ingest until queryable (points/s, CPU s per million points, peak RSS),
# bytes/point after compaction, and the two harness queries. Results land in
# ../shared/bench/peers/results/ (read-only there? then in $BENCH_OUT) as JSON; summarise in BENCHMARKS.md.
#
#   bench/scenarios/peers.sh [n100k|n10k] [runs]
#
# Needs: apt-get install victoria-metrics; the workload generated once by
#   python3 ../shared/bench/peers/gen.py --series 100000 --points 360 --out $BENCH_WORK/data/n100k
# and the sender tools built:
#   (cd ../shared/bench/peers/tools && CARGO_TARGET_DIR=$BENCH_WORK/target cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATASET=${1:-n100k}
RUNS=${2:-3}
W=${BENCH_WORK:-/tmp/peers-bench}
OUT=${BENCH_OUT:-$W/results}
mkdir -p "$OUT"
PEERS=../shared/bench/peers
cargo build --release --locked -p roaster
/usr/bin/python3 $PEERS/bench.py vm "$W/data/$DATASET" --runs "$RUNS" --out "$OUT"
# The harness asks sum(avg_over_time({__name__=~"host.+"}[1h])) as one query, which needs
# Prometheus 3's delayed name removal (Roaster defaults to 2.42's eager drop, which refuses it).
ROASTER_QUERY_DELAYED_NAME_REMOVAL=true /usr/bin/python3 $PEERS/bench.py roaster "$W/data/$DATASET" --runs "$RUNS" --out "$OUT"
ls -l "$OUT"
