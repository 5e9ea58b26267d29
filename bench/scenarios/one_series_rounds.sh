#!/usr/bin/env bash
# One-series latency, Roaster beside Prometheus, in alternated rounds (issue 4's sub-millisecond
# figure moves from minute to minute, so one run of query_peers.py is not enough to judge it).
#
#   bench/scenarios/one_series_rounds.sh [ROUNDS=4]
#
# Needs both servers already running on the shared data set as query_peers.py loads it (Roaster on
# 127.0.0.1:8080 with ROASTER_TOKEN, default the bench's admin token; Prometheus on 127.0.0.1:9090),
# e.g. restarted on the data directories query_peers.py leaves in its --work directory. Each round:
# curl over one keep-alive connection (500 requests; each request's time_total, the first one
# excluded) and Python urllib with a new connection per request (300 requests, body read, not
# parsed, as ../shared/bench/peers/bench.py times queries), for Roaster's plain and labelled
# series and Prometheus' labelled one, and the urllib floor: each server's health endpoint.
# Prints the median (and p10) of every cell.
set -euo pipefail
ROUNDS=${1:-4}
TOKEN=${ROASTER_TOKEN:-bench-admin-token-0123456789}
R="http://127.0.0.1:8080/api/v1/query_range?start=1795064400&end=1795067990&step=10&query="
P="http://127.0.0.1:9090/api/v1/query_range?start=1795064400&end=1795067990&step=10&query="
PLAIN='%7B__name__%3D%22host0.cpu0.usage_user%22%7D'
LAB='usage_user%7Bhost%3D%22host0%22%2Ccpu%3D%22cpu0%22%7D'

keepalive() { # URL [header]
    local args=() i
    for i in $(seq 501); do args+=(-o /dev/null "$1"); done
    curl -s --fail -H "${2:-X-None: 1}" -w '%{time_total}\n' "${args[@]}" | tail -n +2 | sort -n |
        awk '{a[NR]=$1} END {printf "%.3f ms (p10 %.3f)", a[int(NR/2)]*1000, a[int(NR/10)]*1000}'
}

urllib() { # URL [token]
    /usr/bin/python3 - "$1" "${2:-}" <<'PY'
import statistics, sys, time, urllib.request
url, token = sys.argv[1], sys.argv[2]
headers = {"Authorization": "Bearer " + token} if token else {}
ts = []
for i in range(305):
    t0 = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as r:
        r.read()
    ts.append((time.perf_counter() - t0) * 1000)
ts = sorted(ts[5:])
print("%.3f ms (p10 %.3f)" % (statistics.median(ts), ts[len(ts) // 10]), end="")
PY
}

A="Authorization: Bearer $TOKEN"
for r in $(seq "$ROUNDS"); do
    echo "round $r ($(date -u +%H:%M:%S), $(cut -d' ' -f1-3 /proc/loadavg))"
    echo "  keep-alive  roaster plain    $(keepalive "$R$PLAIN" "$A")"
    echo "  keep-alive  prometheus       $(keepalive "$P$LAB")"
    echo "  keep-alive  roaster labelled $(keepalive "$R$LAB" "$A")"
    echo "  urllib      roaster plain    $(urllib "$R$PLAIN" "$TOKEN")"
    echo "  urllib      prometheus       $(urllib "$P$LAB")"
    echo "  urllib      roaster labelled $(urllib "$R$LAB" "$TOKEN")"
    echo "  floor       roaster /healthz $(urllib http://127.0.0.1:8080/healthz)"
    echo "  floor       prom /-/healthy  $(urllib http://127.0.0.1:9090/-/healthy)"
done
