#!/usr/bin/env python3
"""Robot flood: ingest driven past what Roaster can absorb while a person uses the human plane.

issue 3: "ingest driven at 2x what it can absorb while a client queries the human plane:
human-plane p99 <= 100 ms, 0 errors on the human plane".

    bench/scenarios/robot_flood.py [--duration 60] [--tcp-senders 4] [--rw-conns 4]
                                   [--probe-interval 0.05] [--out FILE]

What it does (loopback only, bounded in time, stops everything it started by PID):

1. Starts `$ROASTER_BIN serve` (default target/release/roaster) with a fresh data dir under
   $BENCH_WORK/robot-flood and `ROASTER_ADMIN_TOKEN`, waits for both planes.
2. Baseline: the human-plane prober alone for `--baseline` seconds (idle latencies).
3. Flood for `--duration` seconds:
   * Graphite plaintext over TCP: `--tcp-senders` processes of the shared sender
     (`$BENCH_WORK/target/release/send tcp 127.0.0.1:2003 FILE`, one file of
     `$BENCH_WORK/data/n100k/graphite.*.txt` each, restarted when it finishes). The sender is
     closed-loop and unpaced: it pushes as fast as the socket takes bytes, and it alone reaches
     32-35 M lines/s into a discard sink (../shared/bench/peers/results.md), so whatever Roaster
     absorbs, the offered load is that capacity; `offered_over_absorbed` below uses it.
   * Prometheus remote-write to the robot plane (127.0.0.1:8081/api/v1/write, bearer token):
     `--rw-conns` keep-alive connections in a separate process, looping over pre-encoded
     snappy bodies (`--rw-batch` samples each, from the n10k shard files); every status counted,
     429/503 not retried (the flood must not politely back off).
   * The human-plane prober, in the main process (the flood runs in other processes, so the
     prober never waits on Python's GIL for them): every `--probe-interval` s one of
     `GET /healthz`, `GET /api/v1/switches`, `GET /api/v1/query?query={__name__="EXAMPLE"}` in
     turn, over one keep-alive connection with the admin token, 10 s client timeout. An error is
     any non-200 answer, timeout or connection failure.
4. Reads /metrics before and after the flood: points absorbed per source
   (`roaster_ingest_points_total`), `roaster_ingest_dropped_total` by source and reason, queue
   depth, time ingest spent blocked on a full queue, the engine's storage-lock waits by lock and
   operation (`roaster_storage_lock_wait_seconds`); server CPU seconds (from /proc).
5. Stops the senders, then the server (SIGTERM, 60 s grace), and prints ONE JSON line:
   human-plane p50/p90/p99/max latency and errors (per endpoint and all together, baseline and
   flood), absorbed points/s, remote-write status counts, drop counters, and `pass` = (flood
   p99 <= 100 ms and 0 human-plane errors).

Python's `cramjam` (pip install cramjam) snappy-compresses the remote-write bodies; without it
they are literal-only snappy streams (valid, uncompressed).
"""
import argparse
import glob
import http.client
import json
import multiprocessing
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse

CLK = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
HUMAN = ("127.0.0.1", 8080)
ROBOT = ("127.0.0.1", 8081)
GRAPHITE = ("127.0.0.1", 2003)
P99_GOAL_MS = 100.0
SENDER_SINK_LINES_PER_S = 32e6  # shared sender into a discard sink, ../shared/bench/peers/results.md
PROBE_TIMEOUT_S = 10.0
SHUTDOWN_GRACE_S = 60

try:
    import cramjam  # type: ignore

    def snappy(raw):
        return bytes(cramjam.snappy.compress_raw(raw))

    SNAPPY = "cramjam"
except ImportError:

    def snappy(raw):
        out = bytearray(varint(len(raw)))
        for i in range(0, len(raw), 65536):
            chunk = raw[i : i + 65536]
            n = len(chunk) - 1
            out += bytes([n << 2]) if n < 60 else (bytes([60 << 2, n]) if n < 256 else bytes([61 << 2]) + struct.pack("<H", n))
            out += chunk
        return bytes(out)

    SNAPPY = "literal"


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def field(tag, b):
    return bytes([tag]) + varint(len(b)) + b


def label(name, value):
    return field(0x0A, field(0x0A, name.encode()) + field(0x12, value.encode()))


def rw_bodies(data_dir, batch, max_points):
    """Remote-write bodies from the first `max_points` lines of the n10k shards (`rwflood_METRIC`)."""
    bodies, cur, n = [], [], 0
    for f in sorted(glob.glob(os.path.join(data_dir, "graphite.*.txt"))):
        with open(f) as fh:
            for i, line in enumerate(fh):
                if i >= max_points // 4:
                    break
                parts = line.split()
                if len(parts) != 3:
                    continue
                h, c, m = parts[0].split(".", 2)
                lb = label("__name__", "rwflood_" + m) + label("cpu", c) + label("host", h)
                smp = b"\x09" + struct.pack("<d", float(parts[1])) + b"\x10" + varint(int(parts[2]) * 1000)
                cur.append(field(0x0A, lb + field(0x12, smp)))
                n += 1
                if n == batch:
                    bodies.append(snappy(b"".join(cur)))
                    cur, n = [], 0
    if cur:
        bodies.append(snappy(b"".join(cur)))
    return bodies


def rw_flood(bodies, batch, conns, token, stop_at, q):
    """Child process: `conns` threads POST bodies round and round until `stop_at`; result on `q`."""
    import threading

    lock = threading.Lock()
    tot = {"requests": 0, "points_sent": 0, "points_2xx": 0, "errors": 0, "status": {}}
    hdr = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
           "X-Prometheus-Remote-Write-Version": "0.1.0", "Authorization": "Bearer " + token}

    def worker(k):
        c = http.client.HTTPConnection(*ROBOT, timeout=30)
        st, loc, i = {}, {"requests": 0, "points_sent": 0, "points_2xx": 0, "errors": 0}, k
        while time.time() < stop_at:
            body = bodies[i % len(bodies)]
            i += conns
            try:
                c.request("POST", "/api/v1/write", body=body, headers=hdr)
                r = c.getresponse()
                r.read()
            except (OSError, http.client.HTTPException):
                loc["errors"] += 1
                c.close()
                time.sleep(0.01)
                c = http.client.HTTPConnection(*ROBOT, timeout=30)
                continue
            loc["requests"] += 1
            loc["points_sent"] += batch
            st[r.status] = st.get(r.status, 0) + 1
            if 200 <= r.status < 300:
                loc["points_2xx"] += batch
        c.close()
        with lock:
            for key, v in loc.items():
                tot[key] += v
            for key, v in st.items():
                tot["status"][str(key)] = tot["status"].get(str(key), 0) + v

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    q.put(tot)


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return round(xs[lo] + (xs[hi] - xs[lo]) * (k - lo), 2)


def summarise(samples):
    """samples: list of (endpoint, ms or None for error, detail)."""
    out = {}
    for name in sorted({s[0] for s in samples}) + ["all"]:
        sel = [s for s in samples if name == "all" or s[0] == name]
        ok = [s[1] for s in sel if s[1] is not None]
        errs = [s[2] for s in sel if s[1] is None]
        out[name] = {"requests": len(sel), "errors": len(errs), "p50_ms": pct(ok, 0.5), "p90_ms": pct(ok, 0.9),
                     "p99_ms": pct(ok, 0.99), "max_ms": round(max(ok), 2) if ok else None}
        if errs:
            out[name]["first_errors"] = errs[:5]
    return out


class Prober:
    """The human: one keep-alive connection, three cheap requests in turn."""

    def __init__(self, token, example, at):
        self.h = {"Authorization": "Bearer " + token}
        q = urllib.parse.urlencode({"query": '{__name__="%s"}' % example, "time": at})
        self.reqs = [("healthz", "/healthz"), ("switches", "/api/v1/switches"), ("query", "/api/v1/query?" + q)]
        self.c = None
        self.i = 0

    def one(self):
        name, path = self.reqs[self.i % len(self.reqs)]
        self.i += 1
        t = time.perf_counter()
        try:
            if self.c is None:
                self.c = http.client.HTTPConnection(*HUMAN, timeout=PROBE_TIMEOUT_S)
            self.c.request("GET", path, headers=self.h)
            r = self.c.getresponse()
            r.read()
            ms = (time.perf_counter() - t) * 1000
            if r.status != 200:
                return (name, None, f"HTTP {r.status}")
            return (name, ms, None)
        except (OSError, http.client.HTTPException) as e:
            if self.c is not None:
                self.c.close()
            self.c = None
            return (name, None, f"{type(e).__name__}: {e}")

    def run(self, seconds, interval):
        out, end = [], time.time() + seconds
        nxt = time.time()
        while time.time() < end:
            out.append(self.one())
            nxt += interval
            d = nxt - time.time()
            if d > 0:
                time.sleep(d)
            else:
                nxt = time.time()
        return out


def scrape(token):
    """/metrics as {line-prefix-without-value: value}; {} when unreachable (not counted as a probe)."""
    try:
        c = http.client.HTTPConnection(*HUMAN, timeout=30)
        c.request("GET", "/metrics", headers={"Authorization": "Bearer " + token})
        text = c.getresponse().read().decode()
        c.close()
    except (OSError, http.client.HTTPException):
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def family(m, name):
    return {k: v for k, v in m.items() if k == name or k.startswith(name + "{")}


def delta(after, before, name):
    a, b = family(after, name), family(before, name)
    return {k: round(v - b.get(k, 0.0), 3) for k, v in a.items() if v - b.get(k, 0.0) != 0}


SERVER_HISTOGRAMS = [  # server-side timings whose change over the flood is reported
    "roaster_human_request_duration_seconds",
    "roaster_human_query_wait_seconds",
    "roaster_tsdb_append_lock_wait_seconds",
    "roaster_ingest_sink_wait_seconds",
    "roaster_tsdb_wal_fsync_seconds",
]


LOCK_WAITS = "roaster_storage_lock_wait_seconds"


def lock_waits(after, before):
    """hist_delta of each (lock, op) of the engine's storage-lock wait histograms, keyed "lock=..,op=.."."""
    out = {}
    for k in after:
        if not k.startswith(LOCK_WAITS + "_count{"):
            continue
        inner = k[len(LOCK_WAITS + "_count{") : -1]

        def one(m):
            r = {}
            for kk, v in m.items():
                if kk.startswith(LOCK_WAITS + "_bucket{" + inner + ","):
                    r[LOCK_WAITS + "_bucket{" + kk[len(LOCK_WAITS + "_bucket{" + inner + ",") :]] = v
                elif kk in (LOCK_WAITS + "_count{" + inner + "}", LOCK_WAITS + "_sum{" + inner + "}"):
                    r[kk.split("{")[0]] = v
            return r

        h = hist_delta(one(after), one(before), LOCK_WAITS)
        if h:
            out[inner.replace('"', "")] = h
    return out


def hist_delta(after, before, name):
    """count, mean and bucket-bound p50/p99 (upper `le` bound reached) of a histogram over all its labels."""
    buckets = {}
    for k, v in after.items():
        if k.startswith(name + "_bucket{"):
            le = k.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + v - before.get(k, 0.0)
    cnt = sum(v - before.get(k, 0.0) for k, v in after.items() if k.split("{")[0] == name + "_count")
    tot = sum(v - before.get(k, 0.0) for k, v in after.items() if k.split("{")[0] == name + "_sum")
    if not cnt:
        return None
    out = {"count": cnt, "mean_ms": round(tot / cnt * 1000, 2)}
    for label, q in (("p50_le_ms", 0.5), ("p99_le_ms", 0.99)):
        for bound in sorted(buckets):
            if buckets[bound] >= q * cnt:
                out[label] = bound * 1000
                break
    return out


def proc_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def proc_hwm(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def sys_busy():
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK


def loadavg():
    return float(open("/proc/loadavg").read().split()[0])


def wait_port(addr, timeout=60):
    t = time.time()
    while time.time() - t < timeout:
        try:
            socket.create_connection(addr, 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"port {addr[1]} not ready after {timeout}s")


def stop(proc, grace):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    work = os.environ.get("BENCH_WORK", "/tmp/peers-bench")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--baseline", type=float, default=5)
    ap.add_argument("--tcp-senders", type=int, default=4)
    ap.add_argument("--rw-conns", type=int, default=4)
    ap.add_argument("--rw-batch", type=int, default=2000)
    ap.add_argument("--rw-points", type=int, default=400_000, help="distinct points in the remote-write bodies")
    ap.add_argument("--probe-interval", type=float, default=0.05)
    ap.add_argument("--flood-data", default=os.path.join(work, "data/n100k"))
    ap.add_argument("--rw-data", default=os.path.join(work, "data/n10k"))
    ap.add_argument("--sender", default=os.path.join(work, "target/release/send"))
    ap.add_argument("--work", default=os.path.join(work, "robot-flood"))
    ap.add_argument("--keep", action="store_true", help="keep the data dir afterwards")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.duration > 300:
        sys.exit("--duration is capped at 300 s (shared machine)")
    binary = os.path.abspath(os.environ.get("ROASTER_BIN", os.path.join(REPO, "target/release/roaster")))
    token = os.environ.get("ROASTER_ADMIN_TOKEN", "bench-admin-token-0123456789abcdef")
    man = json.load(open(os.path.join(a.flood_data, "manifest.json")))
    files = sorted(glob.glob(os.path.join(a.flood_data, "graphite.*.txt")))
    if not files:
        sys.exit(f"no graphite.*.txt in {a.flood_data}")
    bodies = rw_bodies(a.rw_data, a.rw_batch, a.rw_points) if a.rw_conns > 0 else []

    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    data = os.path.join(a.work, "data")
    log = open(os.path.join(a.work, "server.log"), "w")
    srv = subprocess.Popen([binary, "serve", "--data-dir", data], stdout=log, stderr=subprocess.STDOUT,
                           cwd=a.work, start_new_session=True, env=dict(os.environ, ROASTER_ADMIN_TOKEN=token))
    senders, rw = [], None
    res = {"scenario": "robot_flood", "roaster": binary, "duration_s": a.duration,
           "tcp_senders": a.tcp_senders, "rw_conns": a.rw_conns, "rw_batch": a.rw_batch, "snappy": SNAPPY}
    try:
        wait_port(HUMAN)
        wait_port(ROBOT)
        wait_port(GRAPHITE)
        prober = Prober(token, man["example_series"], man["end"])
        base = prober.run(a.baseline, a.probe_interval)

        res["loadavg_before"] = loadavg()
        m0, c0, t0, b0 = scrape(token), proc_cpu(srv.pid), time.time(), sys_busy()
        stop_at = t0 + a.duration
        if bodies:
            q = multiprocessing.Queue()
            rw = multiprocessing.Process(target=rw_flood, args=(bodies, a.rw_batch, a.rw_conns, token, stop_at, q))
            rw.start()
        passes = [0] * a.tcp_senders
        sender_log = open(os.path.join(a.work, "senders.log"), "w")

        def launch(k):
            return subprocess.Popen([a.sender, "tcp", "%s:%d" % GRAPHITE, files[k % len(files)]],
                                    stdout=sender_log, stderr=subprocess.STDOUT, start_new_session=True)

        senders = [launch(k) for k in range(a.tcp_senders)]
        samples = []
        while time.time() < stop_at:
            samples += prober.run(min(1.0, stop_at - time.time()), a.probe_interval)
            for k, p in enumerate(senders):
                if p.poll() is not None and time.time() < stop_at - 1:
                    passes[k] += 1
                    senders[k] = launch(k)
        t1 = time.time()
        m1, c1, b1 = scrape(token), proc_cpu(srv.pid), sys_busy()
        res["loadavg_after"] = loadavg()
        for p in senders:
            stop(p, 5)
        rw_res = None
        if rw is not None:
            rw_res = q.get(timeout=60)
            rw.join(10)
        absorbed = sum(delta(m1, m0, "roaster_ingest_points_total").values())
        secs = t1 - t0
        res.update({
            "human_plane_baseline": summarise(base),
            "human_plane_flood": summarise(samples),
            "absorbed_points": absorbed,
            "absorbed_points_per_s": round(absorbed / secs),
            "absorbed_by_source": delta(m1, m0, "roaster_ingest_points_total"),
            "offered_over_absorbed": round(SENDER_SINK_LINES_PER_S / (absorbed / secs), 1) if absorbed else None,
            "tcp_sender_passes_completed": passes,
            "remote_write": rw_res,
            "dropped": delta(m1, m0, "roaster_ingest_dropped_total"),
            "dropped_total_at_end": family(m1, "roaster_ingest_dropped_total"),
            "queue_depth_at_end": family(m1, "roaster_ingest_queue_depth_points"),
            "queue_capacity": family(m1, "roaster_ingest_queue_capacity_points"),
            "queue_blocked_seconds": delta(m1, m0, "roaster_ingest_queue_blocked_seconds_total"),
            "server_timings": {n: hist_delta(m1, m0, n) for n in SERVER_HISTOGRAMS},
            "storage_lock_waits": lock_waits(m1, m0),
            "server_cpu_s": round(c1 - c0, 2),
            "server_busy_cores": round((c1 - c0) / secs, 2),
            # The machine is shared: cores busy with anything (ours, the server, other people's builds).
            "machine_busy_cores": round((b1 - b0) / secs, 2),
            "cores": os.cpu_count(),
            "server_peak_rss_mib": round(proc_hwm(srv.pid) / 2**20, 1),
            "metrics_scraped": bool(m0) and bool(m1),
        })
        fl = res["human_plane_flood"]["all"]
        res["pass"] = fl["errors"] == 0 and fl["p99_ms"] is not None and fl["p99_ms"] <= P99_GOAL_MS
    finally:
        for p in senders:
            stop(p, 5)
        if rw is not None and rw.is_alive():
            rw.terminate()
            rw.join(5)
        t = time.time()
        stop(srv, SHUTDOWN_GRACE_S)
        res["server_shutdown_s"] = round(time.time() - t, 2)
        res["server_exit"] = srv.returncode
        if not a.keep:
            shutil.rmtree(data, ignore_errors=True)
    print(json.dumps(res), flush=True)
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
