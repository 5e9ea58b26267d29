#!/usr/bin/env python3
"""StatsD over UDP, one counter increment per datagram, 10,000 keys: Roaster's loss curve.

usage: statsd_udp.py [--rates 100000,200000,400000,600000,800000] [--secs 10] [--batch 64] [--gso]

For each rate: `statsd-blast` (crates/ingest/src/bin/statsd-blast.rs: sendmmsg, BATCH datagrams
per system call, paced against a monotonic clock, packets pre-built from the shared workload
$BENCH_WORK/data/statsd/statsd.txt; with --gso, UDP segmentation offload: equal-length datagrams
leave the sender as one buffer the kernel cuts into datagrams before they reach Roaster's socket,
which makes the sender about 5x cheaper) offers RATE datagrams/s for SECS seconds to a fresh Roaster;
after two flushes the scenario compares what was sent with what Roaster flushed and stored (sum
of every `<key>.count` series through the PromQL query API, as the shared statsd_bench.py does)
and reads the drop counters: Roaster's own `roaster_ingest_dropped_total{source="statsd-udp"}`
and `roaster_ingest_udp_socket_drops_total{source="statsd-udp"}` from /metrics, and the
host-wide kernel `Udp: RcvbufErrors` from /proc/net/snmp. The sender and the server share the
machine's cores, so the sender's own CPU seconds are reported beside Roaster's, and so is the
StatsD UDP reader thread's time waiting for a CPU while runnable (/proc/PID/task/TID/schedstat):
when that is large, loss comes from CPU starvation (e.g. a shared machine: with autogroup
scheduling, nice values only count within a session), not from Roaster's per-datagram cost.

--nice N (negative, needs root) runs Roaster and the sender at that nice value, with Roaster's
robot threads left at it too (ROASTER_INGEST_ROBOT_THREAD_NICE=0): a way to approximate an idle
machine on a shared, busy one during development. Final figures: idle machine, no --nice.

Roaster listens on non-default ports (--port-base, default 18000: human plane +80, StatsD +125)
so that the scenario does not collide with another Roaster on the machine. Every process started
is stopped by its PID. Prints one JSON line per rate, a table, and writes
$BENCH_OUT/statsd-roaster-curve.json.
"""
import argparse, json, os, re, signal, subprocess, sys, time, urllib.parse, urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "..", "shared", "bench", "peers"))
from bench import proc_cpu, proc_hwm, wait_port, wait_quiet  # noqa: E402

TOKEN = "bench-admin-token-0123456789"


def udp_counters():
    lines = [l.split() for l in open("/proc/net/snmp") if l.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))


def get(url, timeout=300):
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def flushed_total(human):
    """Sum of every flushed StatsD counter (`<key>.count`) Roaster has stored, via PromQL."""
    q = 'sum(sum_over_time({__name__=~"host.+\\\\.count"}[6h]))'
    res = json.loads(get(human + "/api/v1/query?" + urllib.parse.urlencode({"query": q})))["data"]["result"]
    return float(res[0]["value"][1]) if res else 0.0


METRIC_LINE = re.compile(r'^(roaster_ingest_dropped_total|roaster_ingest_udp_socket_drops_total|'
                         r'roaster_ingest_udp_datagrams_total|roaster_ingest_udp_receive_buffer_bytes)'
                         r'(\{[^}]*\})?\s+(\S+)$')


def roaster_counters(human):
    """Roaster's own StatsD-UDP counters from /metrics: {name or name{reason}: value}."""
    out = {}
    for line in get(human + "/metrics").decode().splitlines():
        m = METRIC_LINE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if labels and 'source="statsd-udp"' not in labels and "source" in labels:
            continue
        reason = re.search(r'reason="([^"]*)"', labels)
        key = name + ("{%s}" % reason.group(1) if reason else "")
        out[key] = out.get(key, 0.0) + value
    return out


def reader_sched(pid):
    """(on-CPU s, runnable-but-waiting s) of Roaster's StatsD UDP reader thread (schedstat)."""
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            if open("/proc/%d/task/%s/comm" % (pid, tid)).read().strip().startswith("roaster-statsd"):
                run, wait, _ = open("/proc/%d/task/%s/schedstat" % (pid, tid)).read().split()
                return int(run) / 1e9, int(wait) / 1e9
        except OSError:
            continue
    return 0.0, 0.0


def delta(after, before):
    """Counter increases during the run (non-zero ones); gauges (`_bytes`) as they are."""
    out = {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) and not k.endswith("_bytes")}
    out.update({k: v for k, v in after.items() if k.endswith("_bytes")})
    return out


def send(blast, addr, data_file, rate, secs, batch, gso, prefix):
    """Runs the sender; returns its JSON line."""
    p = subprocess.Popen(prefix + [blast, addr, data_file, str(rate), str(secs), str(batch)] + (["--gso"] if gso else []),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=secs * 4 + 30)
    return json.loads(out.strip().splitlines()[-1]) if p.returncode == 0 else {"error": err.strip()}, p


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="100000,200000,400000,600000,800000")
    ap.add_argument("--secs", type=float, default=10)
    ap.add_argument("--batch", type=int, default=64, help="datagrams per sendmmsg")
    ap.add_argument("--gso", action="store_true", help="send with UDP segmentation offload (see above)")
    ap.add_argument("--nice", type=int, default=None, help="run Roaster and the sender at this nice value (see above)")
    ap.add_argument("--port-base", type=int, default=18000)
    ap.add_argument("--quiet-wait", type=float, default=180,
                    help="seconds to wait at most for an idle machine before each rate (0: don't)")
    work = os.environ.get("BENCH_WORK", "/tmp/peers-bench")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    ap.add_argument("--data", default=os.path.join(work, "data", "statsd", "statsd.txt"))
    ap.add_argument("--run-dir", default=os.path.join(work, "run", "statsd-roaster"))
    ap.add_argument("--out", default=os.environ.get("BENCH_OUT", os.path.join(work, "results")))
    ap.add_argument("--roaster", default=os.environ.get("ROASTER_BIN", os.path.join(target, "release", "roaster")))
    ap.add_argument("--blast", default=os.environ.get("STATSD_BLAST", os.path.join(target, "release", "statsd-blast")))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    subprocess.run(["rm", "-rf", a.run_dir], check=True)
    data_dir = os.path.join(a.run_dir, "data")
    os.makedirs(data_dir)
    human_port, statsd_port = a.port_base + 80, a.port_base + 125
    human = "http://127.0.0.1:%d" % human_port
    env = dict(os.environ, ROASTER_ADMIN_TOKEN=TOKEN,
               ROASTER_SERVER_HUMAN_LISTEN="127.0.0.1:%d" % human_port,
               ROASTER_SERVER_ROBOT_LISTEN="off",
               ROASTER_INGEST_GRAPHITE_TCP_LISTEN="off", ROASTER_INGEST_GRAPHITE_UDP_LISTEN="off",
               ROASTER_INGEST_STATSD_TCP_LISTEN="off",
               ROASTER_INGEST_STATSD_UDP_LISTEN="127.0.0.1:%d" % statsd_port,
               # flushed_total sums sum_over_time over every `.count` name in one query, which
               # needs Prometheus 3's delayed name removal (the default, 2.42's, refuses it)
               ROASTER_QUERY_DELAYED_NAME_REMOVAL="true")
    prefix = []
    if a.nice is not None:
        prefix = ["nice", "-n", str(a.nice)]
        env["ROASTER_INGEST_ROBOT_THREAD_NICE"] = "0"
    flush_s = 10.0  # Roaster's default StatsD flush interval
    rs = subprocess.Popen(prefix + [a.roaster, "serve", "--data-dir", data_dir], env=env,
                          stdout=open(os.path.join(a.run_dir, "roaster.log"), "w"), stderr=subprocess.STDOUT,
                          start_new_session=True)
    res = {"peer": "roaster", "sender": "statsd-blast (%s, %d datagrams per call)" % ("UDP GSO" if a.gso else "sendmmsg", a.batch),
           "version": subprocess.run([a.roaster, "--version"], capture_output=True, text=True).stdout.strip(),
           "packet": "one counter increment per datagram, %d distinct keys" % sum(1 for _ in open(a.data)),
           "secs_per_rate": a.secs, "cores": os.cpu_count(), "nice": a.nice, "rates": []}
    try:
        wait_port(human_port)
        time.sleep(2)
        for rate in [int(x) for x in a.rates.split(",")]:
            quiet = wait_quiet(max_wait=a.quiet_wait) if a.quiet_wait > 0 else None
            s0, u0, m0, c0 = flushed_total(human), udp_counters(), roaster_counters(human), proc_cpu(rs.pid)
            t0 = reader_sched(rs.pid)
            r0 = os.times()
            sinfo, _ = send(a.blast, "127.0.0.1:%d" % statsd_port, a.data, rate, a.secs, a.batch, a.gso, prefix)
            r1 = os.times()
            c1 = proc_cpu(rs.pid)
            t1 = reader_sched(rs.pid)
            if "error" in sinfo:
                raise RuntimeError("sender failed: " + sinfo["error"])
            time.sleep(flush_s * 2 + 1)
            s1, u1, m1 = flushed_total(human), udp_counters(), roaster_counters(human)
            got = s1 - s0
            sender_cpu = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
            r = {"target_pps": rate, "sent": sinfo["sent"], "achieved_send_pps": sinfo["achieved_pps"],
                 "send_seconds": sinfo["seconds"], "sendmmsg_calls": sinfo["syscalls"],
                 "flushed_count": got, "lost": sinfo["sent"] - got,
                 "loss_pct": round(100 * (1 - got / sinfo["sent"]), 3),
                 "kernel_udp_RcvbufErrors": u1["RcvbufErrors"] - u0["RcvbufErrors"],
                 "roaster_counters": delta(m1, m0),
                 "roaster_cpu_s": round(c1 - c0, 2),
                 # the UDP reader's time on a CPU, and runnable but waiting for one (CPU starvation)
                 "udp_reader_cpu_s": round(t1[0] - t0[0], 2), "udp_reader_wait_s": round(t1[1] - t0[1], 2),
                 "roaster_cpu_s_per_million": round((c1 - c0) / (sinfo["sent"] / 1e6), 2),
                 "sender_cpu_s": round(sender_cpu, 2),
                 "sender_cpu_user_s": round(r1.children_user - r0.children_user, 2),
                 "sender_cpu_sys_s": round(r1.children_system - r0.children_system, 2),
                 "roaster_peak_rss_bytes": proc_hwm(rs.pid), "busy_cores_before": quiet}
            print(json.dumps(r), flush=True)
            res["rates"].append(r)
    finally:
        rs.send_signal(signal.SIGTERM)
        try:
            rs.wait(30)
        except subprocess.TimeoutExpired:
            rs.kill()
    ok = [r for r in res["rates"] if r["lost"] <= 0]
    res["max_lossless_pps"] = max((r["achieved_send_pps"] for r in ok), default=0)
    json.dump(res, open(os.path.join(a.out, "statsd-roaster-curve%s.json" % ("-gso" if a.gso else "")), "w"), indent=1)
    print("\n| target pkt/s | achieved pkt/s | sent | flushed | loss % | RcvbufErrors | socket drops | "
          "roaster dropped | roaster CPU s | UDP reader CPU s / waiting for CPU s | sender CPU s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in res["rates"]:
        c = r["roaster_counters"]
        dropped = sum(v for k, v in c.items() if k.startswith("roaster_ingest_dropped_total"))
        print("| %d | %d | %d | %d | %.3f | %d | %d | %d | %.2f | %.2f / %.2f | %.2f |" % (
            r["target_pps"], r["achieved_send_pps"], r["sent"], r["flushed_count"], r["loss_pct"],
            r["kernel_udp_RcvbufErrors"], c.get("roaster_ingest_udp_socket_drops_total", 0), dropped,
            r["roaster_cpu_s"], r["udp_reader_cpu_s"], r["udp_reader_wait_s"], r["sender_cpu_s"]))
    print(json.dumps({k: v for k, v in res.items() if k != "rates"}))


if __name__ == "__main__":
    main()
