#!/usr/bin/env python3
"""Query latency beside Prometheus and VictoriaMetrics on the same data (issue 4, "Figures").

    /usr/bin/python3 bench/scenarios/query_peers.py [--data $BENCH_WORK/data/n100k] [--reps 20]
        [--servers roaster,vm,prom] [--md FILE] [--out FILE] [--idle-wait 180]

Data. The shared workload (`../shared/bench/peers/gen.py`: series `host{h}.cpu{c}.{metric}`, 10
metrics per cpu: 5 gauges, 3 counters `interrupts ctx_switches bytes_in`, 2 constants; 360 points
10 s apart) in two shapes:

* plain: the dotted names as generated, over Graphite TCP (Roaster, VictoriaMetrics);
* labelled: name `{metric}` with labels `host`, `cpu`. Made once from the plain files by streaming
  them (cached beside the data set in `<data>-labelled/`, keyed by the source manifest):
  - Roaster: `lab.host12.cpu3.usage_user v ts` through the Graphite template
    `lab.* .host.cpu.measurement` (filter `lab.*`, skip the first part), which Roaster's template
    code (`wire::graphite::Templates`) turns into `usage_user{cpu="cpu3",host="host12"}`. (The
    InfluxDB-style `host.measurement.field` would give `cpu3_usage_user{host="host12"}` and lose
    the cpu label, so it is not used.) The plain names match no filter and stay as they are.
  - VictoriaMetrics: Graphite 1.1 tags, `usage_user;host=host12;cpu=cpu3 v ts`.
  - Prometheus 2.42 has no Graphite input: the shared `promwrite` tool sends the plain files by
    remote write and itself turns each line into `{__name__="usage_user",host=..,cpu=..}`, as
    `bench.py prom` does (out-of-order window 7 d in prometheus.yml; the data is in order per
    series anyway). Prometheus therefore holds the labelled shape only; its "plain" queries are
    asked of the labelled series (said per query below).

The servers are loaded one after the other and then measured side by side. Each gets a fresh data
dir under $BENCH_WORK/query-peers and listens on 127.0.0.1 only (Roaster's Graphite listener on
port 2103, since VictoriaMetrics has 2003). Per server: start, load both shapes, confirm with count
queries that every point is queryable, settle (Roaster `POST /api/v1/admin/compact`,
VictoriaMetrics force_flush + force_merge, as `bench.py` does before its queries; Prometheus keeps
its head), wait until the machine is idle (`bench.wait_quiet`) and measure the first aggregate's
memory; the server then keeps running, idle, while the next one loads. Once all are loaded and the
machine is idle again, each query is timed on every server in `--rounds` alternated rounds (the
order rotated each round), so the ratios compare the same minutes (before 2026-11-21 each server
ran alone and was timed minutes apart, and the sub-millisecond ratios moved with the machine).

Queries (instant ones at T = end + 1 s, where `[1h]` covers every point; VictoriaMetrics gets
`nocache=1`), each over HTTP with Python's urllib, 1 warm-up + `--reps`, median and p90; a timed
run fetches and reads the answer without parsing it, as `../shared/bench/peers/bench.py` times its
queries (the warm-up's answer is parsed and compared; before 2026-11-21 the timed runs parsed too,
which added ~0.1 ms of client work to every server's one-series figure):

* `empty_answer`: no query: a GET of each server's health endpoint (Roaster `/healthz`, VM
  `/health`, Prometheus `/-/healthy`), the floor of urllib + HTTP that every urllib row stands on.
  This row and the one-series rows are cheap, so they get `max(--reps, 500)` timed runs.
* `one_series`: `query_range` of one series over its full range, step 10 s. Roaster and VM:
  `{__name__="host0.cpu0.usage_user"}`; Prometheus: `usage_user{host="host0",cpu="cpu0"}`.
* `one_series_labelled`: the same series in the labelled shape on all three.
* `one_series_keepalive`, `one_series_labelled_keepalive`: the same two, 500 requests (or `--reps`
  if more) made by one `curl` per round over one keep-alive connection, as Grafana keeps its connections;
  urllib's new connection and request handling cost ~0.15 ms on this machine (an empty
  `/healthz` answer), more than the servers take, so these rows show the servers' own latency
  better.
* `agg_all`: `sum(avg_over_time({__name__=~"host.+"}[1h]))` over every plain series (all points).
  Prometheus: 10 sequential queries `sum(avg_over_time(M{host=~"host.+"}[1h]))`, one per metric
  name, added in Python (PromQL drops `__name__` in `*_over_time`, so one query over all names
  fails with "vector cannot contain metrics with the same labelset"), as `bench.py` does.
* `by_host_one`: `sum by (host) (avg_over_time(usage_user[1h]))` (labelled, same text for all).
* `by_host_all`: the same over all 10 labelled metrics, as ONE query all three accept:
  `sum by (host) (avg_over_time(usage_user[1h])) + sum by (host) (avg_over_time(usage_system[1h]))
  + ...` (10 terms). `sum by (host) (avg_over_time({host=~".+"}[1h]))` is refused by Prometheus for
  the labelset clash above.
* `rate_counters`: `sum by (host) (rate(interrupts[5m])) + sum by (host) (rate(ctx_switches[5m]))
  + sum by (host) (rate(bytes_in[5m]))` (all counter series; one value per host).
* `topk_gauge`: `topk(10, avg_over_time(usage_user[1h]))`.
* Roaster and VictoriaMetrics only (Prometheus 2.42 refuses one selector over several names here;
  Roaster drops `__name__` lazily, as Prometheus 3 does): `by_host_all_1sel`
  `sum by (host) (avg_over_time({host=~"host.+"}[1h]))` and `rate_counters_1sel`
  `sum by (host) (rate({__name__=~"interrupts|ctx_switches|bytes_in"}[5m]))`; their answers are
  compared with the Prometheus answer of the multi-term form (`by_host_all`, `rate_counters`).

Answers: the warm-up answer of each server is compared with the others' (same label sets without
`__name__`, same timestamps, values within relative 1e-6 / absolute 1e-9; NaN equals NaN). A
WARNING line per mismatching pair goes to stderr and into the JSON. VictoriaMetrics' `rate` does
not extrapolate to the window's edges as Prometheus does (it uses the last sample before the
window instead), so `rate_counters` is expected to differ for VM by a few percent; that is flagged
as a mismatch like any other.

Memory: for `agg_all` on each server, `echo 5 > /proc/PID/clear_refs` resets the peak RSS, the
query runs once, and VmHWM minus the VmRSS read just before is the peak extra RSS. Measured on the
process's first aggregate ("cold": right after loading and settling, before any other query) and
3 times after the timed reps (allocators that keep freed memory show ~0 there). Prometheus'
figure covers its 10 per-name queries.

Output: progress on stderr; one JSON line on stdout; a markdown table (query x server median/p90,
ratios against each peer and the issue's goals: each query <= 0.5x Prometheus and <= 1x VM
median, the aggregate <= 0.5x VM) written to `--md` (default $BENCH_WORK/query-peers-<series>.md).

Bounds: each load waits at most `--load-timeout` s; each HTTP request at most `--http-timeout` s;
each query's repetitions are cut to fit `--query-budget` s (the reps actually run are reported).
Needs: the sender tools built (`send`, `promwrite` in $BENCH_WORK/target/release), `apt-get install
victoria-metrics prometheus`, and a release build of Roaster in $ROASTER_BIN (default
target/release/roaster).
"""
import argparse
import glob
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PEERS = os.environ.get("BENCH_PEERS", os.path.join(REPO, "..", "shared", "bench", "peers"))
sys.path.insert(0, PEERS)
import bench  # noqa: E402  (the shared harness: peers' start/stop/flush, wait_quiet, pct)
import gen  # noqa: E402  (the metric names of the workload)

W = os.environ.get("BENCH_WORK", "/tmp/peers-bench")
METRICS = gen.METRICS
COUNTERS = gen.COUNTERS
EXAMPLE_METRIC = "usage_user"
LABELLED_VERSION = 1  # bump when the labelled files' format changes
REL_TOL, ABS_TOL = 1e-6, 1e-9
ROASTER_TEMPLATE = "lab.* .host.cpu.measurement"
RUNNING = []  # the servers started and not yet stopped
ROASTER_GRAPHITE_PORT = 2103  # VictoriaMetrics, running beside it, has 2003
CHEAP_REPS = 500  # timed runs of the sub-millisecond rows (at least)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- labelled copy of the data set

def make_labelled(src, dst):
    """Writes `vm.K.txt` (Graphite tags) and `roaster.K.txt` (`lab.` prefix, for the template) from
    the plain `graphite.K.txt` files, streaming 16 MiB chunks. Reused when already made from the
    same source manifest."""
    man = json.load(open(os.path.join(src, "manifest.json")))
    stamp = {"version": LABELLED_VERSION, "source": os.path.abspath(src), "source_manifest": man}
    plain = sorted(glob.glob(os.path.join(src, "graphite.*.txt")))
    want = [os.path.join(dst, "%s.%d.txt" % (kind, k)) for kind in ("roaster", "vm") for k in range(len(plain))]
    stamp_path = os.path.join(dst, "labelled.json")
    if os.path.exists(stamp_path) and all(os.path.exists(p) for p in want):
        try:
            if json.load(open(stamp_path)) == stamp:
                log("labelled copy: reusing", dst)
                return
        except ValueError:
            pass
    os.makedirs(dst, exist_ok=True)
    if os.path.exists(stamp_path):
        os.remove(stamp_path)
    t0 = time.time()
    pat = re.compile(rb"^([^.\n]+)\.([^.\n]+)\.([^ \n]+) ", re.M)
    for k, path in enumerate(plain):
        vm_tmp = os.path.join(dst, "vm.%d.txt.tmp" % k)
        ro_tmp = os.path.join(dst, "roaster.%d.txt.tmp" % k)
        with open(path, "rb") as fi, open(vm_tmp, "wb") as fv, open(ro_tmp, "wb") as fr:
            while True:
                chunk = fi.read(16 << 20)
                if not chunk:
                    break
                if not chunk.endswith(b"\n"):
                    chunk += fi.readline()
                fv.write(pat.sub(rb"\3;host=\1;cpu=\2 ", chunk))
                fr.write(b"lab." + chunk[:-1].replace(b"\n", b"\nlab.") + b"\n")
        os.replace(vm_tmp, os.path.join(dst, "vm.%d.txt" % k))
        os.replace(ro_tmp, os.path.join(dst, "roaster.%d.txt" % k))
    json.dump(stamp, open(stamp_path, "w"), indent=1)
    log("labelled copy: wrote %s in %.1f s" % (dst, time.time() - t0))


# ---------------------------------------------------------------- servers

def proc_status(pid, key):
    for line in open("/proc/%d/status" % pid):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


class QueryError(Exception):
    """The server answered a query with an error or a non-JSON body."""


class Mixin:
    """Query helpers shared by the three servers (the peers' process handling is bench.py's)."""
    params = {}
    headers = {}

    def api(self, path, params, timeout):
        url = self.url(path, params)
        if getattr(self, "fetched", None) is not None:
            self.fetched.append(url)  # recorded by `timed` during the warm-up
        req = urllib.request.Request(url, headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            raise QueryError("HTTP %d: %s" % (e.code, e.read()[:300].decode("utf-8", "replace")))
        return self.parse(body)

    def url(self, path, params):
        return self.http + path + "?" + urllib.parse.urlencode(dict(params, **self.params))

    @staticmethod
    def parse(body):
        try:
            doc = json.loads(body)
        except ValueError:
            raise QueryError("not JSON: %r" % body[:200])
        if doc.get("status") != "success":
            raise QueryError("%s: %s" % (doc.get("errorType"), doc.get("error")))
        return doc["data"]

    def instant(self, q, t, timeout):
        return self.api("/api/v1/query", {"query": q, "time": t}, timeout)

    def range(self, q, s, e, step, timeout):
        return self.api("/api/v1/query_range", {"query": q, "start": s, "end": e, "step": step}, timeout)

    def range_url(self, q, s, e, step):
        return self.url("/api/v1/query_range", {"query": q, "start": s, "end": e, "step": step})

    def scalar_of(self, q, t, timeout=120):
        try:
            res = self.instant(q, t, timeout)["result"]
        except (QueryError, OSError):
            return 0.0
        return float(res[0]["value"][1]) if res else 0.0


class Roaster(Mixin, bench.Roaster):
    def cmd(self):
        binary = os.path.abspath(os.environ.get("ROASTER_BIN", os.path.join(REPO, "target/release/roaster")))
        conf = os.path.join(self.dir, "roaster.toml")
        with open(conf, "w") as f:
            # delayed_name_removal: query b selects ten metric names and aggregates them in one
            # query, which Prometheus 2.42 refuses (it drops __name__ before `sum`) and which
            # VictoriaMetrics and Prometheus 3's delayed name removal accept. Roaster defaults to
            # 2.42's behaviour; the benchmark opts in to the delayed form so b is one query.
            f.write("[ingest]\ngraphite_templates = [%s]\ngraphite_tcp_listen = \"127.0.0.1:%d\"\n"
                    "graphite_udp_listen = \"off\"\n\n[query]\ndelayed_name_removal = true\n"
                    % (json.dumps(ROASTER_TEMPLATE), self.graphite_port))
        self.flags = [binary, "serve", "--config", conf, "--data-dir", os.path.join(self.dir, "data")]
        self.config_text = open(conf).read()
        return self.flags

    graphite_port = ROASTER_GRAPHITE_PORT

    def wait_ready(self):
        bench.wait_port(8080)
        bench.wait_port(self.graphite_port)
        for _ in range(300):
            try:
                bench.http_get(self.http + "/healthz")
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        raise RuntimeError("roaster: /healthz did not answer within 60 s")

    @property
    def headers(self):
        return {"Authorization": "Bearer " + self.token}

    def version(self):
        binary = os.path.abspath(os.environ.get("ROASTER_BIN", os.path.join(REPO, "target/release/roaster")))
        v = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(binary))) if os.path.exists(binary) else "?"
        return "%s (%s, built %s; worktree HEAD %s)" % (v, binary, built, head or "?")


class VM(Mixin, bench.VM):
    params = {"nocache": 1}


class Prom(Mixin, bench.Prom):
    def cmd(self):
        flags = bench.Prom.cmd(self)
        with open(os.path.join(self.dir, "prometheus.yml"), "w") as f:
            f.write("global:\n  scrape_interval: 1h\nscrape_configs: []\n"
                    "storage:\n  tsdb:\n    out_of_order_time_window: 7d\n")
        return flags


SERVERS = {"roaster": Roaster, "vm": VM, "prom": Prom}
HEALTH = {"roaster": "/healthz", "vm": "/health", "prom": "/-/healthy"}
LABEL = {"roaster": "Roaster", "vm": "VictoriaMetrics", "prom": "Prometheus"}


# ---------------------------------------------------------------- queries

def sum_terms(fmt):
    return " + ".join(fmt % m for m in METRICS)


def queries_for(key, man):
    """(id, description per server, callable(server, timeout) -> canonical answer)."""
    s, e = man["start"], man["end"]
    t = e + 1
    ex = man["example_series"]  # host0.cpu0.usage_user
    h, c, m = ex.split(".")
    labelled_sel = '%s{host="%s",cpu="%s"}' % (m, h, c)
    plain_sel = '{__name__="%s"}' % ex
    by_host_one = "sum by (host) (avg_over_time(%s[1h]))" % EXAMPLE_METRIC
    by_host_all = sum_terms("sum by (host) (avg_over_time(%s[1h]))")
    rate = " + ".join("sum by (host) (rate(%s[5m]))" % c_ for c_ in COUNTERS)
    topk = "topk(10, avg_over_time(%s[1h]))" % EXAMPLE_METRIC
    by_host_all_1sel = 'sum by (host) (avg_over_time({host=~"host.+"}[1h]))'
    rate_1sel = 'sum by (host) (rate({__name__=~"%s"}[5m]))' % "|".join(COUNTERS)
    agg = 'sum(avg_over_time({__name__=~"host.+"}[1h]))'

    def rng(q):
        # one series: compared by its points only (its labels differ between the two shapes)
        f = lambda srv, to: {(): v for v in canon(srv.range(q, s, e, "10s", to)).values()}  # noqa: E731
        f.cheap = True
        return f

    def rng_curl(q):
        # the answer through urllib (compared as above), the timing by curl (see `timed_curl`)
        f = rng(q)
        f.curl_url = lambda srv: srv.range_url(q, s, e, "10s")
        return f

    def inst(q):
        return lambda srv, to: canon(srv.instant(q, t, to))

    def prom_agg(srv, to):
        tot = 0.0
        for name in METRICS:
            res = srv.instant('sum(avg_over_time(%s{host=~"host.+"}[1h]))' % name, t, to)["result"]
            tot += float(res[0]["value"][1]) if res else 0.0
        return {(): tot}

    def empty_answer(srv, to):
        # no query at all: what the client and HTTP cost with an (almost) empty answer
        url = srv.http + HEALTH[key]
        if getattr(srv, "fetched", None) is not None:
            srv.fetched.append(url)
        bench.http_get(url, timeout=to, headers=srv.headers)
        return {}
    empty_answer.cheap = True

    qs = [("empty_answer", "GET %s (no query: the floor of client + HTTP)" % HEALTH[key], empty_answer)]
    if key == "prom":
        qs.append(("one_series", "query_range %s step=10s (labelled: Prometheus has no dotted names)" % labelled_sel,
                   rng(labelled_sel)))
    else:
        qs.append(("one_series", "query_range %s step=10s" % plain_sel, rng(plain_sel)))
    qs.append(("one_series_labelled", "query_range %s step=10s" % labelled_sel, rng(labelled_sel)))
    # the same two timed by curl over one keep-alive connection: without Python's per-request
    # connection set-up and parsing, the figure is close to what the server itself takes
    if key == "prom":
        qs.append(("one_series_keepalive", "query_range %s step=10s, curl keep-alive (labelled)" % labelled_sel,
                   rng_curl(labelled_sel)))
    else:
        qs.append(("one_series_keepalive", "query_range %s step=10s, curl keep-alive" % plain_sel,
                   rng_curl(plain_sel)))
    qs.append(("one_series_labelled_keepalive", "query_range %s step=10s, curl keep-alive" % labelled_sel,
               rng_curl(labelled_sel)))
    if key == "prom":
        qs.append(("agg_all", '10 sequential queries sum(avg_over_time(M{host=~"host.+"}[1h])), one per metric, added',
                   prom_agg))
    else:
        qs.append(("agg_all", agg, inst(agg)))
    qs.append(("by_host_one", by_host_one, inst(by_host_one)))
    qs.append(("by_host_all", by_host_all, inst(by_host_all)))
    qs.append(("rate_counters", rate, inst(rate)))
    qs.append(("topk_gauge", topk, inst(topk)))
    if key != "prom":  # one selector over several names: Prometheus 2.42 refuses these (labelset clash)
        qs.append(("by_host_all_1sel", by_host_all_1sel, inst(by_host_all_1sel)))
        qs.append(("rate_counters_1sel", rate_1sel, inst(rate_1sel)))
    return qs


def canon(data):
    """{labels without __name__: value or [(t, v)...]} from a Prometheus API `data`."""
    out = {}
    for r in data["result"]:
        k = tuple(sorted((a, b) for a, b in r.get("metric", {}).items() if a != "__name__"))
        if "values" in r:
            out[k] = [(float(ts), float(v)) for ts, v in r["values"]]
        else:
            out[k] = float(r["value"][1])
    return out


def close(a, b):
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return False


def rel(a, b):
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    return abs(a - b) / max(abs(a), abs(b), ABS_TOL)


def compare(x, y):
    """(agree, detail) for two canonical answers."""
    if set(x) != set(y):
        only_x, only_y = sorted(set(x) - set(y))[:3], sorted(set(y) - set(x))[:3]
        return False, "label sets differ: %d vs %d series; only left e.g. %s, only right e.g. %s" % (
            len(x), len(y), only_x, only_y)
    worst, bad = 0.0, 0
    for k in x:
        a, b = x[k], y[k]
        if isinstance(a, list):
            if [p[0] for p in a] != [p[0] for p in b]:
                return False, "timestamps differ for %s: %d vs %d points" % (k, len(a), len(b))
            pairs = [(p[1], q[1]) for p, q in zip(a, b)]
        else:
            pairs = [(a, b)]
        for u, v in pairs:
            worst = max(worst, rel(u, v))
            if not close(u, v):
                bad += 1
    if bad:
        return False, "%d values differ, max relative difference %.3g" % (bad, worst)
    return True, "max relative difference %.3g" % worst


# ---------------------------------------------------------------- load, then measure side by side

def load_server(key, a, man, lab_dir, deadline):
    """Starts one server on a fresh data dir, loads both shapes, confirms every point is
    queryable, settles it and measures its first (cold) aggregate. Returns (server, pid, record);
    the server keeps running (it is in RUNNING) for the interleaved measurements."""
    srv = SERVERS[key](a.work, man)
    total = man["total_points"]
    plain = sorted(glob.glob(os.path.join(a.data, "graphite.*.txt")))
    rec = {"server": LABEL[key], "version": srv.version()}
    srv.fresh()
    try:
        pid = srv.start()
    except BaseException:  # not ready in time, or a signal while waiting: stop what started
        srv.stop()
        raise
    RUNNING.append(srv)
    try:
        rec["flags"] = getattr(srv, "flags", None)
        rec["queries"] = {}
        if key == "roaster":
            rec["config"] = srv.config_text
        time.sleep(1)
        t_load = time.time()
        senders = os.path.join(W, "target", "release")
        if key == "prom":
            steps = [("labelled (remote write)", [os.path.join(senders, "promwrite"), "127.0.0.1:9090", "2000"] + plain)]
        else:
            lab = sorted(glob.glob(os.path.join(lab_dir, "%s.*.txt" % ("roaster" if key == "roaster" else "vm"))))
            send = [os.path.join(senders, "send"), "tcp", "127.0.0.1:%d" % srv.graphite_port]
            steps = [("plain (graphite)", send + plain), ("labelled (graphite)", send + lab)]
        for what, cmd in steps:
            left = max(1, int(min(a.load_timeout, deadline - time.time())))
            log("%s: loading %s" % (key, what))
            r = subprocess.run(["timeout", str(left)] + cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError("%s sender failed (%d): %s" % (what, r.returncode, r.stderr[-500:]))
        counts = {}
        checks = [("labelled", sum_terms("sum(count_over_time(%s[2h]))"))]
        if key != "prom":
            checks.insert(0, ("plain", 'sum(count_over_time({__name__=~"host.+"}[2h]))'))
        for what, q in checks:
            stop_at = min(time.time() + a.load_timeout, deadline)
            n = 0.0
            while time.time() < stop_at:
                n = srv.scalar_of(q, man["end"] + 60, a.http_timeout)
                if n >= total:
                    break
                time.sleep(1)
            counts[what] = n
            if n < total:
                raise RuntimeError("%s: %s count %d of %d points after the load timeout" % (key, what, n, total))
        rec["points_confirmed"] = counts
        rec["load_seconds"] = round(time.time() - t_load, 1)
        log("%s: all points queryable after %.1f s %s" % (key, rec["load_seconds"], counts))
        if key != "prom" and not a.no_settle:
            t = time.time()
            rec["settle"] = srv.flush()
            rec["settle_seconds"] = round(time.time() - t, 1)
        rec["busy_cores_before_cold_aggregate"] = bench.wait_quiet(max_wait=a.idle_wait, cores=a.idle_cores)
        rec["peak_rss_load_bytes"] = proc_status(pid, "VmHWM")  # load + settle (clear_refs resets it below)
        agg = [f for q, _, f in queries_for(key, man) if q == "agg_all"][0]
        try:  # the first aggregate of this process, before any warm-up
            rec["agg_all_peak_extra_rss_cold_bytes"] = peak_extra_rss(pid, lambda: agg(srv, a.http_timeout), 1)[0]
        except Exception as e:  # noqa: BLE001
            rec["agg_all_peak_extra_rss_error"] = str(e)[:300]
        return srv, pid, rec
    except BaseException:  # a failed load must not keep running beside the others
        srv.stop()
        RUNNING.remove(srv)
        raise


SPIN_COUNTERS = ("roaster_human_busy_polls_total", "roaster_human_accept_polls_total",
                 "roaster_human_busy_poll_preempted_total", "roaster_human_busy_poll_cool_downs_total")


def spin_counters(srv):
    """Roaster's busy-poll counters from its /metrics ({sample: value}); {} for a peer or an older
    build without them."""
    if not isinstance(srv, Roaster):
        return {}
    try:
        text = bench.http_get(srv.http + "/metrics", headers=srv.headers).decode()
    except Exception:  # noqa: BLE001 - diagnostics only
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith(SPIN_COUNTERS):
            sample, value = line.rsplit(" ", 1)
            out[sample] = float(value)
    return out


def measure_side_by_side(loaded, a, man, deadline):
    """Times every query on every loaded server in alternated rounds: for each query, a warm-up
    on each server (its parsed answer is kept for the comparison), then `--rounds` rounds in which
    each server in turn (the order rotated every round) runs its share of the timed reps. So a
    minute in which the machine is slower falls on all servers alike, and the ratios compare the
    same minutes. Fills each record's "queries" and returns {key: {qid: answer}}."""
    answers = {k: {} for k in loaded}
    per_key = {k: {qid: (desc, fn) for qid, desc, fn in queries_for(k, man)} for k in loaded}
    qids = []
    for k in loaded:
        qids += [q for q in per_key[k] if q not in qids]
    for qid in qids:
        if time.time() > deadline:
            for k in loaded:
                if qid in per_key[k]:
                    loaded[k][2]["queries"][qid] = {"q": per_key[k][qid][0], "error": "skipped: --max-seconds reached"}
            continue
        plans = {}  # key -> (timed block runner, reps); a server whose warm-up failed is left out
        for k, (srv, pid, rec) in loaded.items():
            if qid not in per_key[k]:
                continue
            desc, fn = per_key[k][qid]
            try:
                answer, runner, reps = warm_up(fn, srv, a)
            except Exception as e:  # noqa: BLE001 - one failing query must not end the run
                rec["queries"][qid] = {"q": desc, "error": str(e)[:500]}
                log("%s %s: ERROR %s" % (k, qid, e))
                continue
            answers[k][qid] = answer
            plans[k] = (runner, reps)
        ts = {k: [] for k in plans}
        cpu = {k: 0.0 for k in plans}
        round_medians = {k: [] for k in plans}
        order = list(plans)
        spins_before = {k: spin_counters(loaded[k][0]) for k in plans}
        for r in range(a.rounds if order else 0):
            turn = r % len(order)
            for k in order[turn:] + order[:turn]:
                runner, reps = plans[k]
                n = reps // a.rounds + (1 if r < reps % a.rounds else 0)
                if n == 0 or ts[k] is None:
                    continue
                srv, pid, rec = loaded[k]
                try:
                    block, cpu_s = runner(n)
                except Exception as e:  # noqa: BLE001
                    rec["queries"][qid] = {"q": per_key[k][qid][0], "error": str(e)[:500]}
                    log("%s %s: ERROR %s" % (k, qid, e))
                    ts[k] = None  # no more rounds for it, and no figure
                    continue
                ts[k] += block
                cpu[k] += cpu_s
                round_medians[k].append(round(statistics.median(block), 3))
        for k in plans:
            if not ts[k]:
                continue
            srv, pid, rec = loaded[k]
            st = latency_stats(ts[k], cpu[k] * 1000 / len(ts[k]))
            if getattr(per_key[k][qid][1], "curl_url", None):
                st["client"] = "curl keep-alive"
            rec["queries"][qid] = dict(st, q=per_key[k][qid][0], series_returned=len(answers[k][qid]),
                                       round_medians_ms=round_medians[k])
            spins_after = spin_counters(srv)
            if spins_after:
                # how Roaster's spinning fared over this row's timed reps (and the peers' turns)
                rec["queries"][qid]["spin_counters"] = {
                    sample: int(v - spins_before[k].get(sample, 0)) for sample, v in spins_after.items()}
            log("%s %-30s median %9.3f ms  p90 %9.3f ms  server CPU %9.2f ms  (%d reps)" % (
                k, qid, st["median_ms"], st["p90_ms"], st["server_cpu_ms_mean"], st["reps"]))
    return answers


def warm_up(fn, srv, a):
    """Runs `fn` once (the warm-up, its answer parsed) and returns (answer, runner, reps): `runner(n)`
    times n more runs and returns (latencies in ms, server CPU seconds). Timed runs over urllib
    fetch the URLs the warm-up asked, in order, and read the bodies without parsing them, as
    `../shared/bench/peers/bench.py` times its queries (the client's JSON decoding would add the
    same ~0.1 ms to every server and hide the servers' differences). Rows with `curl_url` are timed
    by ONE curl process over one keep-alive connection per block (its first request opens the
    connection and is not counted). Sub-millisecond rows get max(--reps, 500) reps; the others
    --reps, cut to fit --query-budget seconds."""
    pid = srv.proc.pid
    srv.fetched = []
    t = time.perf_counter()
    try:
        answer = fn(srv, a.http_timeout)
    finally:
        urls, srv.fetched = srv.fetched, None
    warm = time.perf_counter() - t
    curl_url = getattr(fn, "curl_url", None)
    if curl_url:
        url = curl_url(srv)
        return answer, lambda n: curl_block(url, srv.headers, n, pid), max(a.reps, CHEAP_REPS)
    reps = max(a.reps, CHEAP_REPS) if getattr(fn, "cheap", False) else a.reps
    reps = max(3, min(reps, int(a.query_budget / max(warm, 1e-6))))

    def runner(n):
        ts = []
        c0 = bench.proc_cpu(pid)
        for _ in range(n):
            t = time.perf_counter()
            for u in urls:
                bench.http_get(u, timeout=600, headers=srv.headers)
            ts.append((time.perf_counter() - t) * 1000)
        return ts, bench.proc_cpu(pid) - c0
    return answer, runner, reps


def latency_stats(ts, cpu_ms):
    """Median, p90, min, max of the latencies `ts` (ms), their count and the server CPU per run."""
    return {"median_ms": round(statistics.median(ts), 3), "p90_ms": round(bench.pct(ts, 0.9), 3),
            "min_ms": round(min(ts), 3), "max_ms": round(max(ts), 3), "reps": len(ts),
            "server_cpu_ms_mean": round(cpu_ms, 2)}


def curl_block(url, headers, n, pid):
    """n requests of `url` by one curl process over one keep-alive connection (curl reuses it for
    every URL on its command line), plus one first request that opens it and is not counted; each
    request's `time_total` is its latency. Returns (latencies in ms, server CPU seconds)."""
    args = ["curl", "-s", "--fail"]
    for k, v in headers.items():
        args += ["-H", "%s: %s" % (k, v)]
    args += ["-w", "%{http_code} %{time_total}\n"]
    for _ in range(n + 1):
        args += ["-o", "/dev/null", url]
    c0 = bench.proc_cpu(pid)
    out = subprocess.run(args, capture_output=True, text=True, timeout=300).stdout.split("\n")
    cpu_s = (bench.proc_cpu(pid) - c0) * n / (n + 1)
    rows = [ln.split() for ln in out if ln.strip()]
    if len(rows) != n + 1 or any(code != "200" for code, _ in rows):
        raise QueryError("curl: %d answers, codes %s" % (len(rows), sorted({r[0] for r in rows})))
    return [float(t) * 1000 for _, t in rows[1:]], cpu_s


def peak_extra_rss(pid, fn, times=3):
    out = []
    for _ in range(times):
        before = proc_status(pid, "VmRSS")
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
        fn()
        out.append(proc_status(pid, "VmHWM") - before)
    return out


def stop_all():
    for srv in list(RUNNING):
        log("%s: stopping PID %d" % (srv.name, srv.proc.pid))
        srv.stop()
        RUNNING.remove(srv)


# ---------------------------------------------------------------- report

def fmt_ms(st):
    if not st or "median_ms" not in st:
        return "error" if st else "—"
    return "%s / %s" % (num(st["median_ms"]), num(st["p90_ms"]))


def num(x):
    return "{:,.2f}".format(x) if x < 100 else "{:,.0f}".format(x)


def ratio(a, b):
    if not a or not b or "median_ms" not in a or "median_ms" not in b or not b["median_ms"]:
        return None
    return a["median_ms"] / b["median_ms"]


def markdown(result):
    recs = {r["key"]: r for r in result["servers"]}
    qids = []
    for r in result["servers"]:
        for q in r.get("queries", {}):
            if q not in qids:
                qids.append(q)
    lines = ["# Query latency: Roaster beside Prometheus and VictoriaMetrics", "",
             "Data: %s (%d series x %d points = %s points), plain + labelled shapes; %d timed reps after a warm-up "
             "(fewer where `--query-budget` cut them, %d for the sub-millisecond rows: see the JSON), split into %d "
             "rounds alternated across the servers; started %s UTC, took %.0f s." % (
                 result["data"], result["series"], result["points_per_series"], "{:,}".format(result["total_points"]),
                 result["reps"], max(result["reps"], CHEAP_REPS), result["rounds"], result["started_utc"],
                 result["seconds"]), "",
             "| query | Roaster ms (median / p90) | VictoriaMetrics | Prometheus | Roaster / Prometheus (goal ≤ 0.5) "
             "| Roaster / VM (goal ≤ 1; aggregate ≤ 0.5) | answers |",
             "|---|---|---|---|---|---|---|"]
    for q in qids:
        ro, vm, pr = (recs.get(k, {}).get("queries", {}).get(q) for k in ("roaster", "vm", "prom"))
        goal_vm = 0.5 if q == "agg_all" else 1.0
        cells = []
        for r_, goal in ((ratio(ro, pr), 0.5), (ratio(ro, vm), goal_vm)):
            if q == "empty_answer":  # not a query: the floor every row stands on
                cells.append("—" if r_ is None else "%.2f× (floor, no goal)" % r_)
                continue
            cells.append("—" if r_ is None else "%.2f× %s" % (r_, "met" if r_ <= goal else "**not met**"))
        agree = result["agreement"].get(q, {})
        agree_s = "; ".join("%s %s" % (pair, "ok" if v["agree"] else "**differ**") for pair, v in agree.items()) or "—"
        lines.append("| `%s` | %s | %s | %s | %s | %s | %s |" % (q, fmt_ms(ro), fmt_ms(vm), fmt_ms(pr), cells[0], cells[1], agree_s))
    lines += ["", "Answers: `ok` = same label sets (and timestamps), values within relative %g. The `*_1sel` rows are "
              "compared with Prometheus' answer to the multi-term form (`by_host_all`, `rate_counters`), which it "
              "can evaluate. VictoriaMetrics' `rate` does not extrapolate to the window edges (it uses the sample "
              "before the window), so it differs from Prometheus and Roaster there by design." % REL_TOL]
    lines += ["", "Server CPU time per query (utime+stime of the server process over the timed reps / reps; "
              "10 ms ticks, so small figures are coarse). Wall-clock is the figure of record; CPU shows what a "
              "query costs independently of other load and of how many cores a server spreads it over:", "",
              "| query | Roaster CPU ms | VictoriaMetrics | Prometheus | Roaster / Prometheus | Roaster / VM |",
              "|---|---|---|---|---|---|"]
    for q in qids:
        c = [recs.get(k, {}).get("queries", {}).get(q, {}).get("server_cpu_ms_mean") for k in ("roaster", "vm", "prom")]

        def cr(x, y):
            return "%.2f×" % (x / y) if x is not None and y else "—"
        lines.append("| `%s` | %s | %s | %s | %s | %s |" % (
            q, *("—" if v is None else num(v) for v in c), cr(c[0], c[2]), cr(c[0], c[1])))
    lines += ["", "Peak extra RSS during `agg_all` (VmHWM after `echo 5 > /proc/PID/clear_refs`, minus VmRSS just "
              "before): the process's first aggregate (cold, before any warm-up), then 3 runs after the timed reps:", ""]
    for r in result["servers"]:
        x = r.get("agg_all_peak_extra_rss_bytes")
        cold = r.get("agg_all_peak_extra_rss_cold_bytes")
        lines.append("- %s: cold %s; after the reps %s (RSS before the queries %.0f MiB, peak while loading %.0f MiB)" % (
            r["server"], "—" if cold is None else "%.1f MiB" % (cold / 2**20),
            ", ".join("%.1f MiB" % (v / 2**20) for v in x) if x else r.get("agg_all_peak_extra_rss_error", "—"),
            r.get("rss_before_queries_bytes", 0) / 2**20, r.get("peak_rss_load_bytes", 0) / 2**20))
    lines += ["", "Query texts:", ""]
    for r in result["servers"]:
        for q, st in r.get("queries", {}).items():
            lines.append("- %s `%s`: `%s`%s" % (r["server"], q, st["q"], (" — ERROR " + st["error"]) if "error" in st else ""))
    lines += ["", "Servers:", ""]
    for r in result["servers"]:
        lines.append("- %s %s: load %s s, busy cores before queries %s%s" % (
            r["server"], r.get("version", "?"), r.get("load_seconds", "?"), r.get("busy_cores_before_queries", "?"),
            (", ERROR " + r["error"]) if "error" in r else ""))
    if result["mismatches"]:
        lines += ["", "Answer mismatches:", ""] + ["- " + m for m in result["mismatches"]]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(W, "data", "n100k"))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10, help="alternated rounds each query's timed reps are split into")
    ap.add_argument("--servers", default="roaster,vm,prom")
    ap.add_argument("--work", default=os.path.join(W, "query-peers"))
    ap.add_argument("--md", default=None)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--idle-wait", type=float, default=180, help="max seconds to wait for an idle machine")
    ap.add_argument("--idle-cores", type=float, default=0.35)
    ap.add_argument("--load-timeout", type=float, default=900)
    ap.add_argument("--http-timeout", type=float, default=300)
    ap.add_argument("--query-budget", type=float, default=300, help="max seconds of timed reps per query and server")
    ap.add_argument("--max-seconds", type=float, default=3600, help="whole run; later steps are skipped past it")
    ap.add_argument("--no-settle", action="store_true", help="skip compaction / force_merge before the queries")
    a = ap.parse_args()
    def on_term(signum, _frame):
        log("signal %d: stopping the servers that run (by their PIDs) and exiting" % signum)
        for srv in RUNNING:  # at once; the finally block then waits for them
            if srv.proc.poll() is None:
                srv.proc.send_signal(signal.SIGTERM)
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    t0 = time.time()
    deadline = t0 + a.max_seconds
    a.data = os.path.abspath(a.data)
    man = json.load(open(os.path.join(a.data, "manifest.json")))
    a.md = a.md or os.path.join(W, "query-peers-n%d.md" % man["series"])
    lab_dir = a.data.rstrip("/") + "-labelled"
    keys = [k.strip() for k in a.servers.split(",") if k.strip()]
    for k in keys:
        if k not in SERVERS:
            ap.error("unknown server %r (roaster, vm, prom)" % k)
    if any(k != "prom" for k in keys):
        make_labelled(a.data, lab_dir)
    result = {"scenario": "query_peers", "data": a.data, "series": man["series"],
              "points_per_series": man["points_per_series"], "total_points": man["total_points"],
              "reps": a.reps, "rounds": a.rounds, "started_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(t0)),
              "servers": [], "agreement": {}, "mismatches": []}
    loaded, answers = {}, {}
    try:
        for k in keys:
            try:
                srv, pid, rec = load_server(k, a, man, lab_dir, deadline)
                loaded[k] = (srv, pid, rec)
            except Exception as e:  # noqa: BLE001 - report it and go on with the next server
                log("%s: FAILED %s" % (k, e))
                rec = {"server": LABEL[k], "error": str(e)[:500]}
            rec["key"] = k
            result["servers"].append(rec)
        quiet = bench.wait_quiet(max_wait=a.idle_wait, cores=a.idle_cores)
        for srv, pid, rec in loaded.values():
            rec["busy_cores_before_queries"] = quiet
            rec["rss_before_queries_bytes"] = proc_status(pid, "VmRSS")
        answers = measure_side_by_side(loaded, a, man, deadline)
        for k, (srv, pid, rec) in loaded.items():
            agg = [f for q, _, f in queries_for(k, man) if q == "agg_all"][0]
            try:
                extra = peak_extra_rss(pid, lambda: agg(srv, a.http_timeout))
                rec["agg_all_peak_extra_rss_bytes"] = extra
                log("%s: agg_all peak extra RSS %s MiB" % (k, [round(x / 2**20, 1) for x in extra]))
            except Exception as e:  # noqa: BLE001
                rec["agg_all_peak_extra_rss_error"] = str(e)[:300]
            rec["rss_after_queries_bytes"] = proc_status(pid, "VmRSS")
    finally:
        stop_all()
    for k in ("roaster", "vm"):  # the one-selector forms answer what Prometheus' multi-term forms answer
        for q in ("by_host_all", "rate_counters"):
            if q in answers.get("prom", {}):
                answers.setdefault("prom", {})[q + "_1sel"] = answers["prom"][q]
    pairs = [("roaster", "prom"), ("roaster", "vm"), ("vm", "prom")]
    qids = sorted({q for ans in answers.values() for q in ans})
    for q in qids:
        for x, y in pairs:
            if q in answers.get(x, {}) and q in answers.get(y, {}):
                ok, detail = compare(answers[x][q], answers[y][q])
                result["agreement"].setdefault(q, {})["%s-%s" % (x, y)] = {"agree": ok, "detail": detail}
                if not ok:
                    msg = "%s: %s vs %s: %s" % (q, LABEL[x], LABEL[y], detail)
                    result["mismatches"].append(msg)
                    log("WARNING answer mismatch: " + msg)
    result["seconds"] = round(time.time() - t0, 1)
    md = markdown(result)
    with open(a.md, "w") as f:
        f.write(md)
    log("markdown table written to", a.md)
    line = json.dumps(result)
    if a.out:
        with open(a.out, "w") as f:
            f.write(line + "\n")
    print(line, flush=True)


if __name__ == "__main__":
    main()
