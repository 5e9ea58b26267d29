//! HTTP ingest, in process: remote-write and Influx line protocol points/s through the
//! robot router (HTTP/1.1, token check, body read, decode, series resolution, queue, writer
//! thread, durable ack) into a sink that keeps series ids in a map and counts points.
//!
//! What it measures: `BENCH_REQUESTS` (default 200) requests of `BENCH_SERIES` series
//! (default 1000) × 10 samples each, from 2 concurrent clients (a new connection per
//! request), per protocol. CPU is the process's, clients included.
//!
//! Run: `cargo bench -p ingest --bench http_ingest`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ingest::{Ingest, IngestConfig, SOURCE_NAMES, SampleSink, SinkError, Switches, TokenCheck, WriteOutcome};
use model::{Label, Point, SeriesId, SeriesKey, SystemClock};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[derive(Default)]
struct MapSink(Mutex<HashMap<SeriesKey, SeriesId>>);

impl SampleSink for MapSink {
    fn lookup(&self, key: &SeriesKey) -> Option<SeriesId> {
        self.0.lock().get(key).copied()
    }
    fn resolve(&self, key: &SeriesKey) -> Result<SeriesId, SinkError> {
        let mut m = self.0.lock();
        let next = SeriesId(m.len() as u64);
        Ok(*m.entry(key.clone()).or_insert(next))
    }
    fn series_count(&self) -> usize {
        self.0.lock().len()
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

struct AnyToken;
impl TokenCheck for AnyToken {
    fn allows_ingest(&self, _: &str) -> bool {
        true
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (t(11) + t(12)) as f64 / 100.0
}

async fn post(addr: std::net::SocketAddr, path: &str, extra: &str, body: &[u8]) -> u16 {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\nAuthorization: Bearer t\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    String::from_utf8_lossy(&out)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let requests = env("BENCH_REQUESTS", 200);
    let series = env("BENCH_SERIES", 1000);
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
            statsd_udp_listen: "off".into(),
            statsd_tcp_listen: "off".into(),
            ..IngestConfig::default()
        };
        let ingest = Ingest::new(cfg, Arc::new(MapSink::default()), Arc::new(AnyToken), switches, Arc::new(SystemClock))
            .expect("ingest");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = ingest.robot_router();
        tokio::spawn(async move { axum::serve(listener, router).await });

        // request r carries samples r*10 .. r*10+9 of every series
        let mut rw = Vec::new();
        let mut influx = Vec::new();
        for r in 0..requests {
            let mut samples = Vec::new();
            let mut text = String::new();
            for s in 0..series {
                let key = SeriesKey::new(
                    "node_cpu_seconds_total",
                    vec![Label::new("instance", format!("host{}", s / 8)), Label::new("cpu", (s % 8).to_string())],
                )
                .expect("key");
                for i in 0..10 {
                    let ts = 1_700_000_000_000 + ((r * 10 + i) * 10_000) as i64;
                    samples.push(wire::Sample {
                        key: key.clone(),
                        timestamp_ms: Some(ts),
                        value: (s + i) as f64,
                    });
                    text.push_str(&format!("cpu,host=host{},cpu={} usage={} {ts}\n", s / 8, s % 8, s + i));
                }
            }
            rw.push(wire::remote_write::encode(&wire::remote_write::write_request(&samples)).expect("encode"));
            influx.push(text.into_bytes());
        }
        let points = requests * series * 10;
        for (name, path, extra, bodies) in [
            ("remote-write", "/api/v1/write", "Content-Encoding: snappy\r\n", rw),
            ("influx", "/write?precision=ms", "", influx),
        ] {
            let bodies = Arc::new(bodies);
            let cpu0 = cpu_seconds();
            let t0 = Instant::now();
            let mut clients = Vec::new();
            for c in 0..2 {
                let bodies = Arc::clone(&bodies);
                clients.push(tokio::spawn(async move {
                    let mut bad = 0;
                    for b in bodies.iter().skip(c).step_by(2) {
                        if post(addr, path, extra, b).await != 204 {
                            bad += 1;
                        }
                    }
                    bad
                }));
            }
            let mut bad = 0;
            for c in clients {
                bad += c.await.unwrap_or(1);
            }
            let wall = t0.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu0;
            println!(
                "{name}: {points} points in {requests} requests ({bad} not 204) in {wall:.2} s = {:.2} M points/s; cpu {:.0} ns/point",
                points as f64 / wall / 1e6,
                cpu * 1e9 / points as f64
            );
        }
    });
}
