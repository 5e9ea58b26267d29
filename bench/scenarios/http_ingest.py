#!/usr/bin/env python3
"""HTTP ingest beside VictoriaMetrics: Prometheus remote-write and Influx line protocol, same payloads.

issue 3: "Remote-write and Influx line: points/s beside VictoriaMetrics on the same payloads".

    bench/scenarios/http_ingest.py [--data /tmp/peers-bench/data/n10k] [--peers vm,roaster,roaster-noack]
                                   [--formats remote_write,influx] [--conns 4] [--batch 5000]

For each format, the shared Graphite workload (`../shared/bench/peers/gen.py`; default 10,000 series
x 360 points) is turned into request bodies ONCE, before any clock starts, and cached under
$BENCH_WORK/http-ingest-cache:

* remote_write: WriteRequest protobuf, snappy-compressed, `--batch` samples per request, one
  TimeSeries per sample (as Prometheus sends). `hostH.cpuC.metric v ts` becomes
  `rw_metric{host="hostH",cpu="cpuC"}` at ts*1000 ms.
* influx: Telegraf-shaped lines, one line per host/cpu/timestamp carrying that cpu's fields:
  `ix,host=hostH,cpu=cpuC usage_user=63.94,temp=73.65,... TS_NS`; Roaster and VictoriaMetrics
  both store field F of measurement `ix` as series `ix_F`. `--batch` fields (points) per request.

Then each peer in turn (fresh data dir, nothing else of ours running): start it, POST every body
over `--conns` concurrent keep-alive HTTP/1.1 connections (a thread each, bodies dealt round-robin),
and measure

* accepted: points / (first byte -> last 2xx response); non-2xx answers are retried after
  Retry-After (bounded), and counted;
* queryable: points / (first byte -> `sum(count_over_time({__name__=~"rw_.+"}[2h]))` returns them all),
  as the shared harness does it: poll the server's own ingest counter (VictoriaMetrics
  `vm_rows_inserted_total{type=...}`, Roaster `roaster_ingest_points_total{source=...}`) every 0.25 s
  until it reaches the total, then the count query until it agrees, for at most `--query-timeout` s;
* CPU seconds of the server per million points (utime+stime from /proc, start of send -> queryable),
  and peak RSS (VmHWM).

VictoriaMetrics is started as ../shared/bench/peers/bench.py does (`victoria-metrics
-storageDataPath=... -httpListenAddr=127.0.0.1:8428 -retentionPeriod=1y`) and takes remote-write at
`/api/v1/write` and Influx line at `/write`. Roaster is `$ROASTER_BIN serve` (default
target/release/roaster) with `ROASTER_ADMIN_TOKEN`; bodies go to its robot plane 127.0.0.1:8081 with
a token of `ingest` scope made by `roaster token create` before start (the admin token if that
fails), queries to the human plane 127.0.0.1:8080.

Peers: `vm`; `roaster` (default config: HTTP ingest answers 2xx only after the WAL fsync,
`http_durable_ack = true`, fsync every 100 ms); `roaster-noack` (`ROASTER_INGEST_HTTP_DURABLE_ACK=false`:
answers once the points are queued, as VictoriaMetrics does, which acknowledges before its data is
on disk). With durable acks, each connection waits out an fsync per request, so throughput depends on
concurrency (`--conns`) and batch size more than on CPU.

Loopback only; every process started is stopped by its PID; each peer x format is bounded by
`--send-timeout` + `--query-timeout`. Prints one JSON line per peer x format and a final summary
line; `--out FILE` also writes them as a JSON list.

Snappy: the `cramjam` module compresses (pip install cramjam). Without it the bodies are valid
literal-only snappy streams (uncompressed, larger) and the output says `"snappy": "literal"`.
"""
import argparse
import glob
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

CLK = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
VM_BIN = "victoria-metrics"
ROASTER_HUMAN = ("127.0.0.1", 8080)
ROASTER_ROBOT = ("127.0.0.1", 8081)
VM_HTTP = ("127.0.0.1", 8428)
MAX_RETRIES_PER_BODY = 50  # bounded retries of one body after 429/503
RETRY_AFTER_CAP_S = 1.0  # never wait longer than this between retries, whatever Retry-After says

try:
    import cramjam  # type: ignore

    def snappy(raw):
        return bytes(cramjam.snappy.compress_raw(raw))

    SNAPPY = "cramjam"
except ImportError:  # literal-only snappy: a valid raw stream that any decoder accepts

    def snappy(raw):
        out = bytearray(varint(len(raw)))
        for i in range(0, len(raw), 65536):
            chunk = raw[i : i + 65536]
            n = len(chunk) - 1
            if n < 60:
                out.append(n << 2)
            elif n < 256:
                out += bytes([60 << 2, n])
            else:
                out += bytes([61 << 2]) + struct.pack("<H", n)
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


def graphite_lines(data_dir, limit):
    """Yield (host, cpu, metric, value_text, ts) from the shard files, at most `limit` lines."""
    n = 0
    for f in sorted(glob.glob(os.path.join(data_dir, "graphite.*.txt"))):
        with open(f) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) != 3:
                    continue
                h, c, m = parts[0].split(".", 2)
                yield h, c, m, parts[1], int(parts[2])
                n += 1
                if limit and n >= limit:
                    return


def encode_remote_write(data_dir, batch, limit):
    labels = {}
    bodies, cur, n, points = [], [], 0, 0
    for h, c, m, v, ts in graphite_lines(data_dir, limit):
        key = (h, c, m)
        lb = labels.get(key)
        if lb is None:
            lb = labels[key] = label("__name__", "rw_" + m) + label("cpu", c) + label("host", h)
        sample = b"\x09" + struct.pack("<d", float(v)) + b"\x10" + varint(ts * 1000)
        cur.append(field(0x0A, lb + field(0x12, sample)))
        n += 1
        points += 1
        if n == batch:
            bodies.append(snappy(b"".join(cur)))
            cur, n = [], 0
    if cur:
        bodies.append(snappy(b"".join(cur)))
    return bodies, points


def encode_influx(data_dir, batch, limit):
    bodies, lines, npts, points = [], [], 0, 0
    cur_key, fields = None, []

    def close_line():
        nonlocal npts, lines
        if cur_key:
            h, c, ts = cur_key
            lines.append(f"ix,host={h},cpu={c} {','.join(fields)} {ts * 1_000_000_000}\n")

    for h, c, m, v, ts in graphite_lines(data_dir, limit):
        key = (h, c, ts)
        if key != cur_key:
            close_line()
            fields = []
            cur_key = key
            if npts >= batch:
                bodies.append("".join(lines).encode())
                lines, npts = [], 0
        fields.append(f"{m}={v}")
        npts += 1
        points += 1
    close_line()
    if lines:
        bodies.append("".join(lines).encode())
    return bodies, points


def load_bodies(fmt, data_dir, batch, limit, cache):
    """Pre-encoded bodies for `fmt`, from the cache when it was built for the same inputs."""
    os.makedirs(cache, exist_ok=True)
    tag = f"{os.path.basename(os.path.normpath(data_dir))}-{fmt}-{batch}-{limit}-{SNAPPY}"
    path = os.path.join(cache, tag + ".bin")
    if os.path.exists(path):
        bodies = []
        with open(path, "rb") as fh:
            points = struct.unpack("<Q", fh.read(8))[0]
            while True:
                hdr = fh.read(4)
                if not hdr:
                    break
                bodies.append(fh.read(struct.unpack("<I", hdr)[0]))
        return bodies, points, 0.0
    t = time.time()
    enc = encode_remote_write if fmt == "remote_write" else encode_influx
    bodies, points = enc(data_dir, batch, limit)
    with open(path + ".tmp", "wb") as fh:
        fh.write(struct.pack("<Q", points))
        for b in bodies:
            fh.write(struct.pack("<I", len(b)))
            fh.write(b)
    os.replace(path + ".tmp", path)
    return bodies, points, time.time() - t


def proc_cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def proc_hwm(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def wait_port(addr, timeout=60):
    t = time.time()
    while time.time() - t < timeout:
        try:
            socket.create_connection(addr, 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"port {addr[1]} not ready after {timeout}s")


class Server:
    """One peer process: start, endpoints, stop by PID."""

    def __init__(self, work):
        self.dir = os.path.join(work, self.name)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        self.proc = None

    def start(self, cmd, env=None):
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir,
                                     start_new_session=True, env=env)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def metric(self, prefix):
        """Sum of the /metrics samples whose line starts with `prefix` (0 when unreachable)."""
        req = urllib.request.Request("http://%s:%d/metrics" % self.query_addr, headers=self.query_headers())
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read().decode()
        except Exception:
            return 0.0
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    def query_count(self, prefix, t):
        q = 'sum(count_over_time({__name__=~"%s_.+"}[2h]))' % prefix
        url = "http://%s:%d/api/v1/query?" % self.query_addr + urllib.parse.urlencode(
            {"query": q, "time": t, "nocache": 1})
        req = urllib.request.Request(url, headers=self.query_headers())
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                res = json.loads(r.read()).get("data", {}).get("result", [])
        except Exception:
            return 0.0
        return float(res[0]["value"][1]) if res else 0.0


class VM(Server):
    name = "victoria-metrics"
    query_addr = VM_HTTP
    ingest_addr = VM_HTTP
    paths = {"remote_write": "/api/v1/write", "influx": "/write"}

    def run(self):
        self.start([VM_BIN, "-storageDataPath=" + os.path.join(self.dir, "data"),
                    "-httpListenAddr=%s:%d" % VM_HTTP, "-retentionPeriod=1y"])
        wait_port(VM_HTTP)

    def query_headers(self):
        return {}

    def progress(self, fmt):
        kind = "promremotewrite" if fmt == "remote_write" else "influx"
        return self.metric('vm_rows_inserted_total{type="%s"}' % kind)

    def ingest_headers(self):
        return {}

    def version(self):
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", "victoria-metrics"],
                              capture_output=True, text=True).stdout


class Roaster(Server):
    name = "roaster"
    query_addr = ROASTER_HUMAN
    ingest_addr = ROASTER_ROBOT
    paths = {"remote_write": "/api/v1/write", "influx": "/write"}

    def __init__(self, work, binary, admin, durable_ack=True):
        if not durable_ack:
            self.name = "roaster-noack"
        super().__init__(work)
        self.bin, self.admin, self.durable_ack = binary, admin, durable_ack

    def run(self):
        data = os.path.join(self.dir, "data")
        os.makedirs(data, exist_ok=True)
        r = subprocess.run([self.bin, "token", "create", "--scope", "ingest", "--name", "bench",
                            "--data-dir", data], capture_output=True, text=True)
        tok = r.stdout.strip().splitlines()
        self.ingest_token = tok[-1] if r.returncode == 0 and tok else self.admin
        self.token_kind = "ingest" if self.ingest_token != self.admin else "admin"
        # the "queryable" check counts every rw_* name in one query: Prometheus 3's delayed name
        # removal (Roaster's default, 2.42's eager drop, refuses it)
        env = dict(os.environ, ROASTER_ADMIN_TOKEN=self.admin, ROASTER_QUERY_DELAYED_NAME_REMOVAL="true")
        env["ROASTER_INGEST_HTTP_DURABLE_ACK"] = "true" if self.durable_ack else "false"
        self.start([self.bin, "serve", "--data-dir", data], env)
        wait_port(ROASTER_HUMAN)
        wait_port(ROASTER_ROBOT)

    def query_headers(self):
        return {"Authorization": "Bearer " + self.admin}

    def progress(self, fmt):
        source = "remote-write" if fmt == "remote_write" else "influx"
        return self.metric('roaster_ingest_points_total{source="%s"' % source)

    def ingest_headers(self):
        return {"Authorization": "Bearer " + self.ingest_token}

    def version(self):
        return subprocess.run([self.bin, "--version"], capture_output=True, text=True).stdout.strip()


def send_all(server, fmt, bodies, conns, deadline):
    """POST every body over `conns` keep-alive connections; returns counters and the last-2xx time."""
    path = server.paths[fmt]
    if fmt == "remote_write":
        base = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
                "X-Prometheus-Remote-Write-Version": "0.1.0"}
    else:
        base = {"Content-Type": "text/plain; charset=utf-8"}
    base.update(server.ingest_headers())
    stats = {"requests": 0, "non_2xx": 0, "retried": 0, "failed_bodies": 0, "errors": 0,
             "status": {}}
    lock = threading.Lock()

    def worker(mine):
        c = http.client.HTTPConnection(*server.ingest_addr, timeout=60)
        local = {"requests": 0, "non_2xx": 0, "retried": 0, "failed_bodies": 0, "errors": 0}
        status = {}
        for body in mine:
            for attempt in range(MAX_RETRIES_PER_BODY):
                if time.time() > deadline:
                    local["failed_bodies"] += 1
                    break
                try:
                    c.request("POST", path, body=body, headers=dict(base, **{"Content-Length": str(len(body))}))
                    r = c.getresponse()
                    r.read()
                except (OSError, http.client.HTTPException):
                    local["errors"] += 1
                    c.close()
                    c = http.client.HTTPConnection(*server.ingest_addr, timeout=60)
                    continue
                local["requests"] += 1
                status[r.status] = status.get(r.status, 0) + 1
                if 200 <= r.status < 300:
                    break
                local["non_2xx"] += 1
                if r.status in (429, 503):
                    local["retried"] += 1
                    try:
                        wait = float(r.getheader("Retry-After") or 0.1)
                    except ValueError:
                        wait = 0.1
                    time.sleep(min(max(wait, 0.01), RETRY_AFTER_CAP_S))
                    continue
                local["failed_bodies"] += 1
                break
            else:
                local["failed_bodies"] += 1
        c.close()
        with lock:
            for k, v in local.items():
                stats[k] += v
            for k, v in status.items():
                stats["status"][str(k)] = stats["status"].get(str(k), 0) + v

    ts = [threading.Thread(target=worker, args=(bodies[i::conns],)) for i in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return stats


def measure(server, fmt, bodies, points, man, args):
    server.run()
    pid = server.proc.pid
    prefix = "rw" if fmt == "remote_write" else "ix"
    res = {"peer": server.name, "version": server.version(), "format": fmt, "points": points,
           "requests_planned": len(bodies), "batch": args.batch, "conns": args.conns,
           "wire_bytes": sum(len(b) for b in bodies), "snappy": SNAPPY if fmt == "remote_write" else None}
    if isinstance(server, Roaster):
        res["token_scope"] = server.token_kind
    try:
        c0, t0 = proc_cpu(pid), time.time()
        stats = send_all(server, fmt, bodies, args.conns, t0 + args.send_timeout)
        t_acc = time.time()
        res.update(stats)
        res["accepted_seconds"] = round(t_acc - t0, 3)
        res["accepted_points_per_s"] = round(points / (t_acc - t0))
        qt = man["end"] + 60
        # As ../shared/bench/peers/bench.py: wait for the server's own ingest counter, then confirm
        # with the real query API (a count query issued before the data is there can be cached).
        got, t_q, t_prog = 0.0, None, None
        qdeadline = time.time() + args.query_timeout
        while time.time() < qdeadline:
            if t_prog is None:
                if server.progress(fmt) < points:
                    time.sleep(0.25)
                    continue
                t_prog = time.time()
            got = server.query_count(prefix, qt)
            if got >= points:
                t_q = time.time()
                break
            time.sleep(0.25)
        res["progress_counter_seconds"] = round(t_prog - t0, 3) if t_prog else None
        c1 = proc_cpu(pid)
        res["queryable_points_seen"] = got
        if t_q is not None:
            res["queryable_seconds"] = round(t_q - t0, 3)
            res["queryable_points_per_s"] = round(points / (t_q - t0))
        else:
            res["queryable_seconds"] = None
            res["queryable_points_per_s"] = None
            res["note"] = f"count query saw {got:.0f} of {points} points within {args.query_timeout}s"
        res["cpu_s_per_million_points"] = round((c1 - c0) / points * 1e6, 3)
        res["peak_rss_mib"] = round(proc_hwm(pid) / 2**20, 1)
        if server.proc.poll() is not None:
            res["exited"] = server.proc.returncode
    finally:
        server.stop()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    work = os.environ.get("BENCH_WORK", "/tmp/peers-bench")
    ap.add_argument("--data", default=os.path.join(work, "data/n10k"))
    ap.add_argument("--peers", default="vm,roaster,roaster-noack")
    ap.add_argument("--formats", default="remote_write,influx")
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--batch", type=int, default=5000, help="points per request")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N lines (0 = all)")
    ap.add_argument("--send-timeout", type=float, default=120)
    ap.add_argument("--query-timeout", type=float, default=60)
    ap.add_argument("--work", default=os.path.join(work, "http-ingest"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    man = json.load(open(os.path.join(args.data, "manifest.json")))
    binary = os.path.abspath(os.environ.get("ROASTER_BIN", os.path.join(REPO, "target/release/roaster")))
    admin = os.environ.get("ROASTER_ADMIN_TOKEN", "bench-admin-token-0123456789abcdef")
    cache = os.path.join(os.environ.get("BENCH_WORK", "/tmp/peers-bench"), "http-ingest-cache")
    results = []
    for fmt in args.formats.split(","):
        bodies, points, enc_s = load_bodies(fmt, args.data, args.batch, args.limit, cache)
        print(f"# {fmt}: {len(bodies)} bodies, {points} points (encoded in {enc_s:.1f}s)", file=sys.stderr)
        for p in args.peers.split(","):
            if p == "vm":
                server = VM(args.work)
            elif p in ("roaster", "roaster-noack"):
                server = Roaster(args.work, binary, admin, durable_ack=(p == "roaster"))
            else:
                sys.exit(f"unknown peer {p}: vm, roaster or roaster-noack")
            r = measure(server, fmt, bodies, points, man, args)
            print(json.dumps(r), flush=True)
            results.append(r)
    summary = {"scenario": "http_ingest", "dataset": os.path.basename(os.path.normpath(args.data)),
               "rows": [{k: r.get(k) for k in ("peer", "format", "accepted_points_per_s", "queryable_points_per_s",
                                                 "cpu_s_per_million_points", "peak_rss_mib", "non_2xx", "failed_bodies")}
                        for r in results]}
    print(json.dumps(summary), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results + [summary], fh, indent=1)


if __name__ == "__main__":
    main()
