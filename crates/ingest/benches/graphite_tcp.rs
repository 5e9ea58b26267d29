//! Graphite plaintext over TCP, in process: the whole ingest path except storage.
//!
//! What it measures: points/s and CPU per point from four TCP connections writing
//! `hostN.cpuM.usage_user VALUE TS` lines until every point has reached the sink (read,
//! split, parse, series-id cache, resolve on first sight, batching, queue, writer thread).
//! The sink keeps series ids in a map and counts points; it stands in for tsdb, whose own
//! append cost is measured by tsdb's benches. The target for the whole path is
//! ≈ 450 ns of CPU per point including storage, so this path must stay well below that.
//!
//! Run: `cargo bench -p ingest --bench graphite_tcp` (release profile). Size with
//! `BENCH_SERIES` (default 10000), `BENCH_POINTS` per series (default 100), `BENCH_CONNS`
//! (default 4). CPU time is the process's (client writers included), from /proc/self/stat.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use ingest::{Ingest, IngestConfig, SOURCE_NAMES, SampleSink, SinkError, Switches, TokenCheck, WriteOutcome};
use model::{Point, SeriesId, SeriesKey, SystemClock};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt as _;

#[derive(Default)]
struct CountingSink {
    ids: Mutex<HashMap<SeriesKey, SeriesId>>,
    points: AtomicUsize,
    done: tokio::sync::Notify,
    target: AtomicUsize,
}

impl SampleSink for CountingSink {
    fn lookup(&self, key: &SeriesKey) -> Option<SeriesId> {
        self.ids.lock().get(key).copied()
    }
    fn resolve(&self, key: &SeriesKey) -> Result<SeriesId, SinkError> {
        let mut ids = self.ids.lock();
        let next = SeriesId(ids.len() as u64);
        Ok(*ids.entry(key.clone()).or_insert(next))
    }
    fn series_count(&self) -> usize {
        self.ids.lock().len()
    }
    fn series_count_for_name(&self, _name: &str) -> usize {
        // Graphite paths are names: one series per name
        1
    }
    fn write(&self, points: &[Point], _durable: bool) -> Result<WriteOutcome, SinkError> {
        let n = self.points.fetch_add(points.len(), Ordering::AcqRel) + points.len();
        if n >= self.target.load(Ordering::Acquire) {
            self.done.notify_one();
        }
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

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of this process, in seconds (assumes USER_HZ = 100).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

fn main() {
    let series = env("BENCH_SERIES", 10_000);
    let per_series = env("BENCH_POINTS", 100);
    let conns = env("BENCH_CONNS", 4).max(1);
    let total = series * per_series;

    // pre-built payloads, one per connection: its series, point by point in time order
    let payloads: Vec<Vec<u8>> = (0..conns)
        .map(|c| {
            let mut buf = Vec::new();
            for p in 0..per_series {
                for s in (c..series).step_by(conns) {
                    let line = format!(
                        "host{}.cpu{}.usage_user {}.{} {}\n",
                        s / 8,
                        s % 8,
                        (s + p) % 100,
                        p % 10,
                        1_700_000_000 + p * 10
                    );
                    buf.extend_from_slice(line.as_bytes());
                }
            }
            buf
        })
        .collect();
    let bytes: usize = payloads.iter().map(Vec::len).sum();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("roaster-robot")
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let switches = Switches::open(&dir.path().join("switches.json"), &SOURCE_NAMES).expect("switches");
        let sink = Arc::new(CountingSink::default());
        sink.target.store(total, Ordering::Release);
        let cfg = IngestConfig {
            graphite_tcp_listen: "127.0.0.1:0".into(),
            graphite_udp_listen: "off".into(),
            statsd_udp_listen: "off".into(),
            statsd_tcp_listen: "off".into(),
            ..IngestConfig::default()
        };
        let ingest = Ingest::new(cfg, sink.clone(), Arc::new(NoTokens), switches, Arc::new(SystemClock)).expect("ingest");
        let addrs = ingest
            .start_listeners(tokio_util::sync::CancellationToken::new())
            .await
            .expect("listen");
        let addr = addrs.graphite_tcp.expect("graphite tcp");
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        for p in payloads {
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                s.write_all(&p).await.expect("write");
                s.shutdown().await.expect("shutdown");
            });
        }
        let wait = sink.done.notified();
        if sink.points.load(Ordering::Acquire) < total {
            wait.await;
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        println!(
            "graphite tcp: {total} points ({series} series x {per_series}, {conns} conns, {:.1} MB) in {wall:.3} s = {:.2} M points/s; cpu {cpu:.2} s = {:.0} ns/point",
            bytes as f64 / 1e6,
            total as f64 / wall / 1e6,
            cpu * 1e9 / total as f64
        );
    });
}
