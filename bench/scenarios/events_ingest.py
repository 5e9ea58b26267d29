#!/usr/bin/python3
"""Sustained event ingest through the robot plane, with full-text indexing (issue 5).

    bench/scenarios/events_ingest.py [--seconds 20] [--batch 500] [--conns 2] [--bin PATH] [--out FILE]

Goal (issue 5): >= 20,000 events/s sustained, batches of 500, on the 2-core reference machine;
resending 1,000 already-stored events answers about as fast as a fresh batch of 1,000.

What it does (stdlib only; loopback only; every process it starts is stopped by its PID):

1. Builds `--templates` request bodies of `--batch` realistic events each BEFORE any clock
   starts: kinds (deploy.*, chef.run, package.*, user.*, file.changed, cron.run, ansible.*),
   60 hosts, services, labels (team, env, dc), one-line summaries, and JSON payloads with text
   (versions, file lists, diffs, ~300-600 bytes). Ids (`--ids`) are 36-character UUID-shaped
   strings, random (`uuid4`, default) or time-ordered (`uuid7`), or the short sequential
   `XXXXXXXX-NNN` of earlier sessions (`short`); an 8-character placeholder in each is
   replaced by the body's sequence number at send time (one bytes.replace), so every event
   sent is new. Times: `--time-spread recent` (default) puts each event within
   ~100 s before sending, as agents that report changes as they happen; `hour` spreads them
   over the last hour (backfill; every time-ordered index is then written at random places).
2. Starts `roaster serve` (`--bin`, default $ROASTER_BIN, else $CARGO_TARGET_DIR or
   target/release/roaster) on a fresh temp data dir, human and robot planes on free ports,
   plaintext listeners off, default `[events]` config (WAL, synchronous=NORMAL, 2 shard files
   since session 5) plus `--events-config KEY=VALUE` lines (e.g. `sqlite_shards=1`); creates
   an ingest token with `roaster token create` before start, given the same `[events]` keys as
   `ROASTER_EVENTS_*` variables (it creates the event store, whose layout is then fixed).
3. Sends bodies over `--conns` keep-alive HTTP/1.1 connections (a thread each) for
   `--seconds`; counts `stored` from each answer. Reports:
   * events_per_s: stored events / (first byte -> last answer), wall clock, end to end;
   * server_cpu_s_per_1k_events: server utime+stime (/proc) over the same span per 1,000 stored;
   * server_write_bytes_per_event: the server's /proc/PID/io write_bytes over the span per event;
   * verified: the server's own `roaster_events_stored_total` (GET /metrics) equals the
     answers' sum, and the last body's first event is returned by GET /api/v1/events (a
     full-text search for a word of its summary, on its host, at its millisecond).
4. Idempotency: `--resend-rounds` times, POSTs a fresh batch of 1,000 events and then the
   same batch again; reports the median latency of each (the resend must store nothing).

Prints one JSON object (and writes it to `--out` when given). Keep `--seconds` <= 30 while
other people compile; the lead runs it on an idle machine:

    CARGO_TARGET_DIR=/work/target-store cargo build --release -p roaster && \
        bench/scenarios/events_ingest.py --seconds 30            # uuid4 ids
        bench/scenarios/events_ingest.py --seconds 30 --ids short  # sessions 2-3's ids
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

CLK = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
ADMIN = "bench-admin-token-0123456789abcdef"
PLACEHOLDER = b"XXXXXXXX"
TIME_PLACEHOLDER = b"99999999"  # the top 8 of 13 digits of a unix-ms time, set at send time

KINDS = [
    ("deploy.started", "deploy {svc} {ver} started by {user}"),
    ("deploy.finished", "deploy {svc} {ver} finished on {host}"),
    ("chef.run", "chef applied recipe {recipe} on {host}: {n} resources updated"),
    ("package.installed", "package {pkg} {ver} installed on {host}"),
    ("package.removed", "package {pkg} removed from {host}"),
    ("user.added", "user {user} added to group {group}"),
    ("user.removed", "user {user} removed from {host}"),
    ("file.changed", "file /etc/{svc}/{svc}.conf changed on {host}"),
    ("cron.run", "cron job {recipe} finished in {n} s"),
    ("ansible.start", "ansible playbook {recipe}.yml started against {host}"),
    ("ansible.finished", "ansible playbook {recipe}.yml finished: {n} changed"),
]
HOSTS = [f"web{i:02d}" for i in range(1, 31)] + [f"db{i:02d}" for i in range(1, 11)] + [
    f"cache{i:02d}" for i in range(1, 21)
]
SERVICES = ["shop", "search", "checkout", "auth", "postgres", "redis", "nginx", "billing"]
PKGS = ["nginx", "openssl", "postgresql-17", "redis-server", "linux-image-6.8", "curl", "python3"]
RECIPES = ["base", "hardening", "ntp", "forgotten-cleanup", "users", "logrotate", "backup"]
USERS = ["alice", "bob", "carol", "dave", "erin", "ci-bot", "deployer"]
WORDS = "the quick change rolled config restart reload upgrade patch security kernel disk \
memory network timeout retry rollback canary blue green cluster shard replica primary".split()


def make_id(rng, i, ids):
    """An event id with PLACEHOLDER in it (the body's sequence number at send time).

    uuid4: 36 characters, UUID-shaped; the first 28 are random per template event and the
    placeholder ends the id, so ids land at random places in any index over them, as
    random (v4) UUIDs do. uuid7: the placeholder leads (time-ordered, as v7 UUIDs and
    ULIDs are), then random. short: `XXXXXXXX-NNN` (sessions 2-3's bench; sequential).
    """
    p = PLACEHOLDER.decode()
    if ids == "short":
        return f"{p}-{i:03d}"
    r = "%020x" % rng.getrandbits(80)
    if ids == "uuid7":
        return f"{p}-{r[:4]}-7{r[4:7]}-{r[7:11]}-{r[11:20]}{i:03x}"
    return f"{r[:8]}-{r[8:12]}-4{r[12:15]}-{r[15:19]}-{i:04x}{p}"


def make_event(rng, i, t_ms, spread, ids="uuid4"):
    kind, fmt = rng.choice(KINDS)
    host = rng.choice(HOSTS)
    svc = rng.choice(SERVICES)
    f = {
        "svc": svc,
        "ver": f"{rng.randint(1, 9)}.{rng.randint(0, 40)}.{rng.randint(0, 99)}",
        "user": rng.choice(USERS),
        "host": host,
        "recipe": rng.choice(RECIPES),
        "pkg": rng.choice(PKGS),
        "group": rng.choice(["sudo", "docker", "adm", "ops"]),
        "n": rng.randint(0, 120),
    }
    files = [f"/etc/{svc}/{rng.choice(WORDS)}.d/{rng.choice(WORDS)}.conf" for _ in range(rng.randint(1, 6))]
    payload = {
        "version": f["ver"],
        "changed_files": files,
        "diff": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))),
        "run_id": rng.randint(1, 10**9),
        "exit_code": rng.choice([0, 0, 0, 0, 1, 2]),
    }
    return {
        "id": make_id(rng, i, ids),
        # recent: the top digits are filled in at send time, the low 5 are random (a 100 s
        # window, as agents that send events as they happen); hour: any time in the last hour
        "time": int(TIME_PLACEHOLDER.decode() + "%05d" % rng.randint(0, 99_999)) if spread == "recent"
        else t_ms - rng.randint(0, 3_600_000),
        "kind": kind,
        "host": host,
        "service": svc if rng.random() < 0.7 else None,
        "actor": f["user"],
        "subject": f["pkg"] if kind.startswith("package") else None,
        "labels": {"team": rng.choice(["web", "db", "platform"]), "env": rng.choice(["prod", "staging"]),
                   "dc": rng.choice(["fra1", "ams2", "lon1"])},
        "severity": rng.choice(["info"] * 8 + ["warning", "critical"]),
        "summary": fmt.format(**f),
        "payload": payload,
    }


def make_templates(count, batch, t_ms, spread, ids="uuid4", seed=42):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        events = [make_event(rng, i, t_ms, spread, ids) for i in range(batch)]
        for e in events:
            for k in [k for k, v in e.items() if v is None]:
                del e[k]
        out.append(json.dumps(events, separators=(",", ":")).encode())
    return out


def proc_write_bytes(pid):
    """Bytes the process caused to be written to storage (/proc/PID/io write_bytes)."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK


class Server:
    def __init__(self, binary, work, events_config=()):
        self.binary, self.work = binary, work
        self.events_config = events_config
        self.data = os.path.join(work, "data")
        self.proc = None

    def start(self):
        cfg = os.path.join(self.work, "roaster.toml")
        with open(cfg, "w") as f:
            f.write('[server]\nhuman_listen = "127.0.0.1:0"\nrobot_listen = "127.0.0.1:0"\nlog_level = "warn"\n'
                    '[ingest]\ngraphite_tcp_listen = "off"\ngraphite_udp_listen = "off"\n'
                    'statsd_udp_listen = "off"\nstatsd_tcp_listen = "off"\n')
            if self.events_config:
                f.write("[events]\n" + "".join(kv + "\n" for kv in self.events_config))
        os.makedirs(self.data, exist_ok=True)
        # `token create` makes the event store when none exists: give it the same [events]
        # settings (its layout, e.g. sqlite_shards, is fixed at creation)
        token_env = dict(os.environ, **{"ROASTER_EVENTS_" + kv.split("=", 1)[0].strip().upper():
                                        kv.split("=", 1)[1].strip().strip('"') for kv in self.events_config})
        out = subprocess.run([self.binary, "token", "create", "--scope", "ingest", "--name", "bench",
                              "--data-dir", self.data], capture_output=True, text=True, check=True,
                             env=token_env)
        self.ingest_token = out.stdout.strip()
        env = dict(os.environ, ROASTER_ADMIN_TOKEN=ADMIN)
        self.log = open(os.path.join(self.work, "server.log"), "w")
        self.proc = subprocess.Popen([self.binary, "serve", "--config", cfg, "--data-dir", self.data],
                                     env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.time() + 60
        path = os.path.join(self.data, "listeners.json")
        while time.time() < deadline:
            try:
                with open(path) as f:
                    ls = json.load(f)
                self.human = tuple(ls["human-http"].rsplit(":", 1))
                self.robot = tuple(ls["robot-http"].rsplit(":", 1))
                return
            except (OSError, ValueError, KeyError):
                if self.proc.poll() is not None:
                    sys.exit(f"roaster exited early; see {self.work}/server.log")
                time.sleep(0.05)
        sys.exit("roaster did not start within 60 s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path):
        c = http.client.HTTPConnection(self.human[0], int(self.human[1]), timeout=60)
        c.request("GET", path, headers={"Authorization": f"Bearer {ADMIN}"})
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body

    def metric(self, name):
        _, body = self.get("/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None


def post(conn, token, body):
    conn.request("POST", "/api/v1/events", body=body,
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    return r.status, data


def fill(template, n):
    """The body to send: a unique id prefix and (for --time-spread recent) the current time."""
    top = b"%08d" % (int(time.time() * 1000) // 100_000 - 1)
    return template.replace(PLACEHOLDER, b"%08d" % n).replace(TIME_PLACEHOLDER, top)


def sustained(server, templates, conns, seconds):
    lock = threading.Lock()
    state = {"seq": 0, "stored": 0, "dups": 0, "rejected": 0, "errors": 0, "last": None, "first": None,
             "end": 0.0}
    stop_at = [0.0]

    def worker():
        conn = http.client.HTTPConnection(server.robot[0], int(server.robot[1]), timeout=60)
        while True:
            with lock:
                if time.time() >= stop_at[0]:
                    break
                n = state["seq"]
                state["seq"] += 1
            body = fill(templates[n % len(templates)], n)
            status, data = post(conn, server.ingest_token, body)
            now = time.time()
            with lock:
                state["end"] = max(state["end"], now)
                if status != 200:
                    state["errors"] += 1
                    continue
                a = json.loads(data)
                state["stored"] += a["stored"]
                state["dups"] += a["duplicates"]
                state["rejected"] += a["rejected"]
                state["last"] = n
        conn.close()

    cpu0 = proc_cpu(server.proc.pid)
    wb0 = proc_write_bytes(server.proc.pid)
    t0 = time.time()
    stop_at[0] = t0 + seconds
    ts = [threading.Thread(target=worker) for _ in range(conns)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = state["end"] - t0
    cpu = proc_cpu(server.proc.pid) - cpu0
    written = proc_write_bytes(server.proc.pid) - wb0
    return state, wall, cpu, written


def resend(server, rounds, t_ms, spread, ids):
    conn = http.client.HTTPConnection(server.robot[0], int(server.robot[1]), timeout=60)
    fresh, again = [], []
    for r in range(rounds):
        body = fill(make_templates(1, 1000, t_ms, spread, ids, seed=1000 + r)[0], 0)
        body = body.replace(b"00000000", b"R%07d" % r)
        t = time.perf_counter()
        s1, d1 = post(conn, server.ingest_token, body)
        fresh.append(time.perf_counter() - t)
        t = time.perf_counter()
        s2, d2 = post(conn, server.ingest_token, body)
        again.append(time.perf_counter() - t)
        a1, a2 = json.loads(d1), json.loads(d2)
        assert s1 == 200 and a1["stored"] == 1000, a1
        assert s2 == 200 and a2["stored"] == 0 and a2["duplicates"] == 1000, a2
    conn.close()
    return statistics.median(fresh), statistics.median(again)


def default_bin():
    if os.environ.get("ROASTER_BIN"):
        return os.environ["ROASTER_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    return os.path.join(target, "release", "roaster")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--conns", type=int, default=2)
    ap.add_argument("--templates", type=int, default=40)
    ap.add_argument("--time-spread", choices=["recent", "hour"], default="recent",
                    help="event times: within ~100 s of sending (default) or anywhere in the last hour")
    ap.add_argument("--ids", choices=["uuid4", "uuid7", "short"], default="uuid4",
                    help="event ids: random UUID-shaped (default), time-ordered UUID-shaped, or short sequential")
    ap.add_argument("--resend-rounds", type=int, default=5)
    ap.add_argument("--bin", default=default_bin())
    ap.add_argument("--events-config", action="append", default=[], metavar="KEY=VALUE",
                    help="a line for the server's [events] section (TOML), e.g. sqlite_page_size_bytes=2048")
    ap.add_argument("--keep", action="store_true", help="keep the temp data dir")
    ap.add_argument("--out")
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        sys.exit(f"no roaster binary at {args.bin}: cargo build --release -p roaster (or pass --bin)")

    t_ms = int(time.time() * 1000)
    templates = make_templates(args.templates, args.batch, t_ms, args.time_spread, args.ids)
    work = tempfile.mkdtemp(prefix="events-bench-")
    server = Server(os.path.abspath(args.bin), work, args.events_config)
    try:
        server.start()
        state, wall, cpu, written = sustained(server, templates, args.conns, args.seconds)
        stored = state["stored"]
        counted = server.metric("roaster_events_stored_total")
        # the newest body's events are searchable: a word of its first summary, on its host
        last = fill(templates[state["last"] % len(templates)], state["last"])
        first = json.loads(last)[0]
        word = first["summary"].split()[-1].strip(":")
        t = first["time"]
        status, body = server.get(f"/api/v1/events?host={first['host']}&q={word}&limit=1000"
                                  f"&from={t / 1000:.3f}&to={(t + 1) / 1000:.3f}")
        found = status == 200 and any(e["id"] == first["id"] for e in json.loads(body)["data"]["events"])
        fresh_s, resend_s = resend(server, args.resend_rounds, t_ms, args.time_spread, args.ids)
        result = {
            "scenario": "events_ingest",
            "batch": args.batch,
            "conns": args.conns,
            "time_spread": args.time_spread,
            "ids": args.ids,
            "events_config": args.events_config,
            "seconds": round(wall, 2),
            "events_stored": stored,
            "events_per_s": round(stored / wall) if wall > 0 else 0,
            "server_cpu_s": round(cpu, 2),
            "server_cpu_s_per_1k_events": round(cpu / (stored / 1000), 4) if stored else None,
            "server_write_bytes_per_event": round(written / stored) if stored else None,
            "duplicates": state["dups"],
            "rejected": state["rejected"],
            "http_errors": state["errors"],
            "verified_metric_count": counted == stored,
            "verified_search_finds_newest": found,
            "fresh_1000_batch_ms_median": round(fresh_s * 1000, 1),
            "resend_1000_duplicates_ms_median": round(resend_s * 1000, 1),
            "goal_events_per_s": 20000,
            "cpus": os.cpu_count(),
        }
        print(json.dumps(result))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
