//! StatsD over UDP, in process: packet loss at a paced send rate.
//!
//! What it measures: one metric per packet (`keyN:1|c`, 10,000 keys), sent from one thread
//! at `BENCH_RATES` packets/s (default `400000,800000`) for `BENCH_SECONDS` (default 1) each;
//! reports sent, aggregated and lost packets, the kernel's UDP receive-buffer overflows
//! (`RcvbufErrors` from /proc/net/snmp, host-wide) and the effective SO_RCVBUF. The issue's
//! target is 0 loss at 400,000 packets/s. The sender shares the machine's cores with the
//! receiver, so this is a lower bound on what an external sender would see.
//!
//! Run: `cargo bench -p ingest --bench statsd_udp`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ingest::{Ingest, IngestConfig, SOURCE_NAMES, SampleSink, SinkError, Switches, TokenCheck, WriteOutcome};
use model::{Point, SeriesId, SeriesKey, SystemClock};

struct NullSink;
impl SampleSink for NullSink {
    fn lookup(&self, _: &SeriesKey) -> Option<SeriesId> {
        Some(SeriesId(0))
    }
    fn resolve(&self, _: &SeriesKey) -> Result<SeriesId, SinkError> {
        Ok(SeriesId(0))
    }
    fn series_count(&self) -> usize {
        0
    }
    fn series_count_for_name(&self, _: &str) -> usize {
        0
    }
    fn write(&self, points: &[Point], _: bool) -> Result<WriteOutcome, SinkError> {
        Ok(WriteOutcome {
            accepted: points.len(),
            too_old: 0,
        })
    }
}

struct NoTokens;
impl TokenCheck for NoTokens {
    fn allows_ingest(&self, _: &str) -> bool {
        false
    }
}

fn rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(h), Some(v)) = (udp.next(), udp.next()) else {
        return 0;
    };
    let col = h.split_whitespace().position(|x| x == "RcvbufErrors");
    col.and_then(|c| v.split_whitespace().nth(c))
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) of this process's threads whose name starts with `prefix`
/// (thread names are cut to 15 bytes in /proc).
fn thread_cpu_seconds(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // after the ")" of the command name come fields 3 (state) ... 14 (utime), 15 (stime)
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        ticks += field(11) + field(12);
    }
    ticks as f64 / 100.0
}

fn main() {
    let rates: Vec<u64> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "400000,800000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let switches = Switches::open(&dir.path().join("switches.json"), &SOURCE_NAMES).expect("switches");
        let cfg = IngestConfig {
            graphite_tcp_listen: "off".into(),
            graphite_udp_listen: "off".into(),
            statsd_udp_listen: "127.0.0.1:0".into(),
            statsd_tcp_listen: "off".into(),
            ..IngestConfig::default()
        };
        let ingest = Arc::new(
            Ingest::new(cfg, Arc::new(NullSink), Arc::new(NoTokens), switches, Arc::new(SystemClock)).expect("ingest"),
        );
        let addrs = ingest
            .start_listeners(tokio_util::sync::CancellationToken::new())
            .await
            .expect("listen");
        let addr = addrs.statsd_udp.expect("statsd udp");
        let packets: Vec<Vec<u8>> = (0..10_000).map(|k| format!("key{k}:1|c").into_bytes()).collect();
        for rate in rates {
            let before = ingest.statsd_observed();
            let errs0 = rcvbuf_errors();
            let cpu0 = thread_cpu_seconds("roaster-statsd");
            let total = rate * seconds;
            let p = packets.clone();
            let sent = tokio::task::spawn_blocking(move || {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
                let t0 = Instant::now();
                let mut sent = 0u64;
                while sent < total {
                    // pace in 1 ms slices
                    let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
                    while sent < due.min(total) {
                        let _ = s.send_to(&p[(sent % 10_000) as usize], addr);
                        sent += 1;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                (sent, t0.elapsed())
            })
            .await
            .expect("sender");
            // wait until the reader has caught up (no change for 200 ms)
            let mut last = ingest.statsd_observed();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let now = ingest.statsd_observed();
                if now == last {
                    break;
                }
                last = now;
            }
            let got = last - before;
            let lost = sent.0.saturating_sub(got);
            let cpu = thread_cpu_seconds("roaster-statsd") - cpu0;
            println!(
                "statsd udp: target {rate}/s, sent {} in {:.2} s ({:.0}/s), aggregated {got}, lost {lost} ({:.3} %), RcvbufErrors +{}, reader thread {:.2} cpu s per million",
                sent.0,
                sent.1.as_secs_f64(),
                sent.0 as f64 / sent.1.as_secs_f64(),
                lost as f64 * 100.0 / sent.0.max(1) as f64,
                rcvbuf_errors() - errs0,
                cpu / (sent.0.max(1) as f64 / 1e6)
            );
        }
        let mut e = model::telemetry::Exposition::new();
        ingest.render_metrics(&mut e);
        for l in e.finish().lines().filter(|l| l.starts_with("roaster_ingest_udp") || l.starts_with("roaster_ingest_statsd")) {
            println!("  {l}");
        }
    });
}
