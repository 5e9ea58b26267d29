#!/bin/bash
# Event ingest A/B, old build vs new build, alternated in the same minutes (session 5, events on
# N SQLite writers). One command for the final figures on an idle machine:
#
#   bench/scenarios/events_shards_ab.sh OLD_BIN NEW_BIN [ROUNDS=3] [SECONDS=20] [OUT_DIR=/tmp/events-ab]
#
# Each round runs bench/scenarios/events_ingest.py (uuid4 ids, batches of 500, 2 connections)
# once per binary, old first then new, then one round with --ids uuid7 for each. Every run
# is taken under `flock /tmp/bench.lock` and with /tmp/threadcpu.sh (the lead's per-thread CPU
# script, if present) sampling 10 s in its middle. Prints one line per run and the
# new/old ratio of the medians; the JSON of every run and its thread CPU are kept in OUT_DIR.
# Note: the per-batch shard threads (`events-shard`) are short-lived, so thread samplers do
# not see them; their CPU is the server total (server_cpu_s) minus the threads listed.
set -euo pipefail
OLD=${1:?usage: events_shards_ab.sh OLD_BIN NEW_BIN [ROUNDS] [SECONDS] [OUT_DIR]}
NEW=${2:?usage: events_shards_ab.sh OLD_BIN NEW_BIN [ROUNDS] [SECONDS] [OUT_DIR]}
ROUNDS=${3:-3}
SECS=${4:-20}
OUT=${5:-/tmp/events-ab}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
# threadcpu.sh finds the server by `pgrep -f "roaster serve"`: run each binary as .../roaster
for which in old new; do
    mkdir -p "$OUT/bin-$which"
    src=$OLD; [ "$which" = new ] && src=$NEW
    cp "$src" "$OUT/bin-$which/roaster"
done
run() { # which ids round
    local which=$1 ids=$2 round=$3 tag="$1-$2-$3"
    local delay=$(( SECS / 2 - 4 )); [ $delay -lt 2 ] && delay=2
    flock /tmp/bench.lock bash -c "
        if [ -x /tmp/threadcpu.sh ]; then /tmp/threadcpu.sh $delay 10 > '$OUT/$tag.threads' 2>/dev/null & fi
        env ROASTER_BIN='$OUT/bin-$which/roaster' /usr/bin/python3 '$HERE/events_ingest.py' \
            --seconds $SECS --ids $ids --resend-rounds 3 --out '$OUT/$tag.json' > /dev/null
        wait"
    python3 -c "
import json,sys; d=json.load(open('$OUT/$tag.json'))
print(f\"$tag load={open('/proc/loadavg').read().split()[0]} events/s={d['events_per_s']} cpu_s/1k={d['server_cpu_s_per_1k_events']} bytes/event={d['server_write_bytes_per_event']} verified={d['verified_metric_count'] and d['verified_search_finds_newest']}\")"
}
for r in $(seq 1 "$ROUNDS"); do
    run old uuid4 "$r"
    run new uuid4 "$r"
done
run old uuid7 1
run new uuid7 1
python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def med(which, key):
    return statistics.median(json.load(open(f"{out}/{which}-uuid4-{r}.json"))[key] for r in range(1, rounds + 1))
for key in ["events_per_s", "server_cpu_s_per_1k_events", "server_write_bytes_per_event"]:
    o, n = med("old", key), med("new", key)
    print(f"uuid4 median {key}: old {o} new {n} ratio new/old {n / o:.2f}")
EOF
