#!/usr/bin/python3
"""What the audit trail costs a mutation, and how fast heartbeat pings are answered (issue 5).

    bench/scenarios/heartbeat_audit.py [--requests 2000] [--bin PATH] [--out FILE]

No figure is set by the issue; this keeps the two paths honest:

1. Starts `roaster serve` (`--bin`, default $ROASTER_BIN, else $CARGO_TARGET_DIR or
   target/release/roaster) on a fresh temp data dir, both planes on free ports, plaintext
   listeners off; tokens made with `roaster token create` before start (those two are audited).
2. Over one keep-alive connection each, sequentially, `--requests` times:
   * `GET /api/v1/switches` (human plane, not audited): the baseline;
   * `PUT /api/v1/switches/compaction` alternating open/paused (audited: the middleware reads
     the body, queues an `audit.api` event; the recorder thread stores it; the handler itself
     fsyncs switches.json);
   * `PUT /api/v1/switches/no-such-switch` (audited, answered 404 before any file work: what the
     audit middleware itself adds to a request, compared with the GET baseline);
   * `POST /api/v1/heartbeats/hb-N/start|success` on the robot plane (ingest token; each stores
     a `heartbeat.*` event, rewrites heartbeats.json with fsync, writes series), over 50 heartbeats.
   Reports p50/p99 latency in ms and requests/s for each.
3. Verifies: every audited PUT (plus the heartbeat PUTs and the 2 token creations) is in
   events.db (GET /api/v1/events?kind=audit, paged), `roaster_audit_events_dropped_total` is 0,
   and the ping count matches `roaster_heartbeat_pings_total`.

Prints one JSON object (and writes it to `--out`). Keep `--requests` small while others compile.
Every process it starts is stopped by its PID.

    cargo build --release -p roaster && bench/scenarios/heartbeat_audit.py --requests 5000
"""
import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ADMIN = "bench-admin-token-0123456789abcdef"


def default_bin():
    if os.environ.get("ROASTER_BIN"):
        return os.environ["ROASTER_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return os.path.join(target, "release", "roaster")


def token(binary, data, scope, name):
    out = subprocess.run([binary, "token", "create", "--scope", scope, "--name", name, "--data-dir", data],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def start(binary, tmp):
    data = os.path.join(tmp, "data")
    os.makedirs(data)
    ingest = token(binary, data, "ingest", "bench-jobs")
    read = token(binary, data, "read", "bench-viewer")
    cfg = os.path.join(tmp, "roaster.toml")
    with open(cfg, "w") as f:
        f.write('[server]\nhuman_listen = "127.0.0.1:0"\nrobot_listen = "127.0.0.1:0"\n'
                '[ingest]\ngraphite_tcp_listen = "off"\ngraphite_udp_listen = "off"\n'
                'statsd_udp_listen = "off"\nstatsd_tcp_listen = "off"\n')
    env = dict(os.environ, ROASTER_ADMIN_TOKEN=ADMIN)
    proc = subprocess.Popen([binary, "serve", "--config", cfg, "--data-dir", data], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with open(os.path.join(data, "listeners.json")) as f:
                return proc, json.load(f), ingest, read
        except (OSError, ValueError):
            time.sleep(0.05)
    proc.kill()
    sys.exit("roaster did not start")


def timed(conn, method, path, tok, body=None, expect=None):
    headers = {"Authorization": "Bearer " + tok}
    if body is not None:
        headers["Content-Type"] = "application/json"
    t0 = time.perf_counter()
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    dt = time.perf_counter() - t0
    if (expect is None and r.status >= 300) or (expect is not None and r.status != expect):
        sys.exit(f"{method} {path}: {r.status} {data[:200]!r}")
    return dt, data


def summary(lat):
    lat = sorted(lat)
    return {
        "p50_ms": round(statistics.median(lat) * 1000, 3),
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 3),
        "per_s": round(len(lat) / sum(lat), 1),
    }


def metric(conn, read, name):
    _, text = timed(conn, "GET", "/metrics", read)
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--bin", default=default_bin())
    ap.add_argument("--out")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="roaster-hb-bench-")
    proc, listeners, ingest, read = start(a.bin, tmp)
    try:
        human = http.client.HTTPConnection(*listeners["human-http"].rsplit(":", 1))
        robot = http.client.HTTPConnection(*listeners["robot-http"].rsplit(":", 1))
        n = a.requests
        beats = 50
        for i in range(beats):
            timed(human, "PUT", f"/api/v1/heartbeats/hb-{i}", ADMIN, b'{"period":"1h","grace":"5m"}')
        gets = [timed(human, "GET", "/api/v1/switches", read)[0] for _ in range(n)]
        puts = [timed(human, "PUT", "/api/v1/switches/compaction", ADMIN,
                      b'{"state":"paused"}' if i % 2 else b'{"state":"open"}')[0] for i in range(n)]
        # Audited but refused before any file or storage work: the middleware's own cost.
        refused = [timed(human, "PUT", "/api/v1/switches/no-such-switch", ADMIN, b'{"state":"open"}',
                         expect=404)[0] for _ in range(n)]
        pings = [timed(robot, "POST", f"/api/v1/heartbeats/hb-{i % beats}/{'success' if (i // beats) % 2 else 'start'}",
                       ingest)[0] for i in range(n)]
        # Verification: every mutation is in the audit trail, nothing dropped.
        deadline = time.time() + 30
        want = 2 * n + beats + 2
        while True:
            seen, cursor = 0, None
            while True:
                q = {"kind": "audit", "limit": "1000"}
                if cursor:
                    q["cursor"] = cursor
                _, body = timed(human, "GET", "/api/v1/events?" + urllib.parse.urlencode(q), read)
                v = json.loads(body)["data"]
                seen += len(v["events"])
                cursor = v.get("next_cursor")
                if not cursor:
                    break
            if seen >= want or time.time() > deadline:
                break
            time.sleep(0.2)
        dropped = metric(human, read, "roaster_audit_events_dropped_total")
        _, text = timed(human, "GET", "/metrics", read)
        pinged = sum(float(l.split()[1]) for l in text.decode().splitlines()
                     if l.startswith("roaster_heartbeat_pings_total{"))
        result = {
            "requests": n,
            "get_not_audited": summary(gets),
            "put_audited": summary(puts),
            "put_audited_404_no_io": summary(refused),
            "heartbeat_ping": summary(pings),
            "audit_events_stored": seen,
            "audit_events_expected": want,
            "audit_events_dropped": dropped,
            "pings_counted": pinged,
            "verified": seen == want and dropped == 0 and pinged == n,
            "binary": a.bin,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    sys.exit(0 if result["verified"] else 1)


if __name__ == "__main__":
    main()
