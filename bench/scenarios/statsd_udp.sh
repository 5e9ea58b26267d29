#!/usr/bin/env bash
# StatsD over UDP, one counter increment per datagram, 10,000 keys: Roaster's loss curve up to
# 800,000 pkt/s with its own drop counters, the kernel's RcvbufErrors, and the CPU of Roaster and
# of the sender (they share the machine's cores). Loss is measured as Etsy StatsD's was: the sum of
# the flushed `.count` series read back through Roaster's query API, against what was sent.
#
# The sender is our own `statsd-blast` (crates/ingest/src/bin/statsd-blast.rs), paced against a
# monotonic clock; the shared one-sendto-per-datagram sender tops out near 340,000 pkt/s here.
# Two curves: `sendmmsg` (64 datagrams per system call) and `--gso` (UDP segmentation offload: the
# kernel cuts one buffer into 64 datagrams before Roaster's socket; about 5x cheaper for the sender,
# so more of the two cores is left to Roaster). About 3 minutes per curve on an idle machine.
#
#   bench/scenarios/statsd_udp.sh [rates] [secs]
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${BENCH_WORK:-/tmp/peers-bench}
OUT=${BENCH_OUT:-$W/results}
RATES=${1:-100000,200000,400000,600000,800000}
SECS=${2:-10}
T=${CARGO_TARGET_DIR:-target}
cargo build --release --locked -p roaster -p ingest --bin roaster --bin statsd-blast
for mode in "" "--gso"; do
  python3 bench/scenarios/statsd_udp.py --rates "$RATES" --secs "$SECS" $mode --out "$OUT" \
    --roaster "${ROASTER_BIN:-$T/release/roaster}" --blast "${STATSD_BLAST:-$T/release/statsd-blast}"
done
