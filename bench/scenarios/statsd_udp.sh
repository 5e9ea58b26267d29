#!/usr/bin/env bash
# StatsD over UDP, one counter increment per datagram, 10,000 keys: loss curve up to 800,000 pkt/s,
# measured by the shared harness exactly as Etsy StatsD was (it sums the flushed `.count` series
# through Roaster's query API and reads the kernel's UDP RcvbufErrors).
#
#   bench/scenarios/statsd_udp.sh [rates]
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${BENCH_WORK:-/tmp/peers-bench}
OUT=${BENCH_OUT:-$W/results}
mkdir -p "$OUT"
RATES=${1:-100000,200000,400000,600000,800000}
cargo build --release --locked -p roaster
/usr/bin/python3 ../shared/bench/peers/statsd_bench.py --roaster _ "$W/data/statsd/statsd.txt" \
  --rates "$RATES" --out "$OUT" --tools "$W/target/release"
