#!/usr/bin/env bash
# One-series query latency, old vs new `roaster` binary, alternated in the same minutes.
#
#   bench/scenarios/one_series_ab.sh DATA_DIR OLD_BIN NEW_BIN [ROUNDS]
#
# DATA_DIR: a COPY of the query_peers data set (100k plain + 100k labelled series, sealed); the
# servers write to it. Each round starts OLD then NEW on it (127.0.0.1:$PORT, default 18180;
# ingest listeners off), warms up, and times 500 requests over ONE curl keep-alive connection
# (as query_peers.py's `*_keepalive` rows) for: /healthz, `query_range` of
# {__name__="host0.cpu0.usage_user"} and of usage_user{host="host0",cpu="cpu0"} over the
# series' full range at step 10 s. Timings run under `flock /tmp/bench.lock`. Prints each
# run's median/p10 and, at the end, the median of the round medians and NEW/OLD ratios.
# The admin token: $ROASTER_ADMIN_TOKEN (default bench-admin-token-0123456789).
set -euo pipefail
DATA=${1:?data dir}; OLD=${2:?old binary}; NEW=${3:?new binary}; ROUNDS=${4:-3}
PORT=${PORT:-18180}
export ROASTER_ADMIN_TOKEN=${ROASTER_ADMIN_TOKEN:-bench-admin-token-0123456789}
T=$ROASTER_ADMIN_TOKEN
WORK=$(mktemp -d /tmp/one-series-ab.XXXXXX)
cat > "$WORK/roaster.toml" <<EOF
[server]
human_listen = "127.0.0.1:$PORT"
robot_listen = "off"
data_dir = "$DATA"
[storage]
maintenance_interval_ms = 0
[ingest]
graphite_templates = ["lab.* .host.cpu.measurement"]
graphite_tcp_listen = "off"
graphite_udp_listen = "off"
statsd_udp_listen = "off"
statsd_tcp_listen = "off"
[query]
delayed_name_removal = true
EOF
BASE="http://127.0.0.1:$PORT"
PID=""
stop() {
  [ -n "$PID" ] || return 0
  kill -TERM "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=""
}
trap stop EXIT
start() {
  "$1" serve --config "$WORK/roaster.toml" > "$WORK/log" 2>&1 &
  PID=$!
  for _ in $(seq 300); do curl -sf "$BASE/healthz" > /dev/null && return 0; sleep 0.1; done
  echo "server did not start; see $WORK/log" >&2; exit 1
}
# 500 requests over one keep-alive connection: "median p10" in ms
curlbench() {
  local args=()
  for _ in $(seq 500); do args+=(-o /dev/null "$1"); done
  curl -s -H "Authorization: Bearer $T" -w '%{time_total}\n' "${args[@]}" | sort -n |
    awk '{a[NR]=$1} END {printf "%.3f %.3f\n", a[int(NR/2)]*1000, a[int(NR/10)]*1000}'
}
enc() { python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"; }

start "$OLD"
RANGE=$(curl -s -G -H "Authorization: Bearer $T" "$BASE/api/v1/export" \
  --data-urlencode 'match[]={__name__="host0.cpu0.usage_user"}' |
  python3 -c 'import json,sys; t=json.loads(sys.stdin.readline())["timestamps"]; print(t[0]//1000, t[-1]//1000)')
stop
read -r S E <<< "$RANGE"
PLAIN="$BASE/api/v1/query_range?query=$(enc '{__name__="host0.cpu0.usage_user"}')&start=$S&end=$E&step=10s"
LAB="$BASE/api/v1/query_range?query=$(enc 'usage_user{host="host0",cpu="cpu0"}')&start=$S&end=$E&step=10s"
echo "range $S..$E; $ROUNDS rounds; uptime: $(uptime)"
: > "$WORK/results"
for r in $(seq "$ROUNDS"); do
  for which in old new; do
    bin=$OLD; [ "$which" = new ] && bin=$NEW
    start "$bin"
    for _ in $(seq 50); do curl -s -o /dev/null -H "Authorization: Bearer $T" "$LAB"; done
    line=$(flock /tmp/bench.lock bash -c "$(declare -f curlbench); T='$T'; \
      echo \"\$(curlbench '$BASE/healthz') \$(curlbench '$PLAIN') \$(curlbench '$LAB')\"")
    stop
    echo "$which $line" >> "$WORK/results"
    read -r h h10 p p10 l l10 <<< "$line"
    printf 'round %d %-3s  healthz %s (p10 %s)  plain %s (p10 %s)  labelled %s (p10 %s) ms\n' \
      "$r" "$which" "$h" "$h10" "$p" "$p10" "$l" "$l10"
  done
done
python3 - "$WORK/results" <<'PY'
import statistics, sys
rows = {"old": [], "new": []}
for line in open(sys.argv[1]):
    w, *v = line.split()
    rows[w].append([float(x) for x in v])
med = {w: [statistics.median(r[i] for r in rs) for i in (0, 2, 4)] for w, rs in rows.items()}
for i, name in enumerate(("healthz", "plain", "labelled")):
    o, n = med["old"][i], med["new"][i]
    print(f"{name:9s} median of round medians: old {o:.3f} ms  new {n:.3f} ms  new/old {n / o:.2f}")
PY
