#!/usr/bin/env python3
"""End-to-end smoke figure: N series x P points of Graphite plaintext over 4 TCP connections into
a running `roaster serve` (release build), timed until the query API counts them all (with
`sum(count_over_time(...))` over every name, which needs `[query] delayed_name_removal = true`:
by default, as in Prometheus 2.42, that query is "vector cannot contain metrics with the same
labelset"). Prints
points/s and the server's CPU seconds per million points (its /proc stat, query polling included).
Not the shared benchmark (../shared/bench/peers is); a quick check that needs no data set.

    ROASTER_ADMIN_TOKEN=smoke-admin-token-0123456789 target/release/roaster serve \
        --config c.toml --data-dir /tmp/smoke/data &      # c.toml: listeners on 127.0.0.1:0,
                                                          # [query] delayed_name_removal = true
    python3 crates/cli/scripts/graphite_smoke.py /tmp/smoke/data $! 100000 40
"""
import socket, time, json, sys, threading, urllib.request, urllib.parse, os
data_dir, pid = sys.argv[1], int(sys.argv[2])
N, P, C = int(sys.argv[3]), int(sys.argv[4]), 4
lst = json.load(open(os.path.join(data_dir, 'listeners.json')))
h, port = lst['graphite-tcp'].split(':')
human = 'http://' + lst['human-http']
H = {'Authorization': 'Bearer smoke-admin-token-0123456789'}
start = int(time.time()) // 10 * 10 - 10 * P - 3600
chunks = [[] for _ in range(C)]
for s in range(N):
    name = f"host{s // 100}.cpu{s % 100}.x"
    chunks[s % C].append(''.join(f"{name} {((s * 7 + p) % 1000) / 100} {start + 10 * p}\n" for p in range(P)).encode())
payloads = [b''.join(c) for c in chunks]
def cpu():
    f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / 100.0
def count():
    q = urllib.parse.urlencode({'query': 'sum(count_over_time({__name__=~"host.+"}[1d]))', 'time': start + 10 * P + 60})
    try:
        r = json.loads(urllib.request.urlopen(urllib.request.Request(human + '/api/v1/query?' + q, headers=H), timeout=60).read())
        res = r['data']['result']
        return float(res[0]['value'][1]) if res else 0
    except Exception as e:
        return 0
def send(b):
    s = socket.create_connection((h, int(port))); s.sendall(b); s.close()
c0, t0 = cpu(), time.time()
ts = [threading.Thread(target=send, args=(b,)) for b in payloads]
[t.start() for t in ts]; [t.join() for t in ts]
t_sent = time.time()
while count() < N * P and time.time() - t0 < 60:
    time.sleep(0.1)
t1, c1 = time.time(), cpu()
n = count()
print(json.dumps({'points': N * P, 'queryable': n, 'send_s': round(t_sent - t0, 2), 'until_queryable_s': round(t1 - t0, 2),
                  'points_per_s': round(N * P / (t1 - t0)), 'server_cpu_s_per_M': round((c1 - c0) / (N * P / 1e6), 3)}))
