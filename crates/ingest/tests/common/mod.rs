//! Shared test fixtures: an in-memory `SampleSink` (a real implementation over a
//! `Mutex<BTreeMap>`, not a mock), a token check, and an `Ingest` on port 0.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ingest::{Ingest, IngestConfig, SOURCE_NAMES, SampleSink, SinkError, Switches, TokenCheck, WriteOutcome};
use model::{ManualClock, Point, SeriesId, SeriesKey, Timestamp};
use parking_lot::{Condvar, Mutex};

/// Now, for every test: 2023-11-14T22:13:20Z.
pub const NOW_MS: i64 = 1_700_000_000_000;

#[derive(Default)]
struct Inner {
    ids: BTreeMap<SeriesKey, SeriesId>,
    keys: BTreeMap<SeriesId, SeriesKey>,
    points: Vec<Point>,
    /// While true, `write` blocks (a slow storage).
    gate_closed: bool,
    /// Points older than this are refused as too old.
    min_ts: i64,
}

/// Storage in memory.
#[derive(Default)]
pub struct MemSink {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl MemSink {
    pub fn new() -> Arc<MemSink> {
        Arc::new(MemSink::default())
    }

    /// Makes `write` block until [`MemSink::open_gate`].
    pub fn close_gate(&self) {
        self.inner.lock().gate_closed = true;
    }

    pub fn open_gate(&self) {
        self.inner.lock().gate_closed = false;
        self.changed.notify_all();
    }

    pub fn refuse_older_than(&self, ts: i64) {
        self.inner.lock().min_ts = ts;
    }

    /// Every stored point as (series, ts, value), in arrival order.
    pub fn samples(&self) -> Vec<(String, i64, f64)> {
        let g = self.inner.lock();
        g.points
            .iter()
            .map(|p| (g.keys[&p.series].to_string(), p.ts, p.value))
            .collect()
    }

    /// Waits (on the sink's condition variable) until at least `n` points are stored.
    pub fn wait_points(&self, n: usize) -> Vec<(String, i64, f64)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut g = self.inner.lock();
        while g.points.len() < n {
            if self.changed.wait_until(&mut g, deadline).timed_out() {
                panic!("timed out waiting for {n} points, have {}", g.points.len());
            }
        }
        drop(g);
        self.samples()
    }
}

impl SampleSink for MemSink {
    fn lookup(&self, key: &SeriesKey) -> Option<SeriesId> {
        self.inner.lock().ids.get(key).copied()
    }

    fn resolve(&self, key: &SeriesKey) -> Result<SeriesId, SinkError> {
        let mut g = self.inner.lock();
        if let Some(id) = g.ids.get(key) {
            return Ok(*id);
        }
        let id = SeriesId(g.ids.len() as u64 + 1);
        g.ids.insert(key.clone(), id);
        g.keys.insert(id, key.clone());
        Ok(id)
    }

    fn series_count(&self) -> usize {
        self.inner.lock().ids.len()
    }

    fn series_count_for_name(&self, name: &str) -> usize {
        self.inner.lock().ids.keys().filter(|k| k.name() == name).count()
    }

    fn write(&self, points: &[Point], _durable: bool) -> Result<WriteOutcome, SinkError> {
        let mut g = self.inner.lock();
        while g.gate_closed {
            self.changed.wait(&mut g);
        }
        let mut out = WriteOutcome::default();
        for p in points {
            if !g.keys.contains_key(&p.series) {
                return Err(SinkError::Rejected(format!("unknown series {:?}", p.series)));
            }
            if p.ts < g.min_ts {
                out.too_old += 1;
            } else {
                g.points.push(*p);
                out.accepted += 1;
            }
        }
        drop(g);
        self.changed.notify_all();
        Ok(out)
    }
}

/// Accepts exactly one token.
pub struct OneToken(pub &'static str);

impl TokenCheck for OneToken {
    fn allows_ingest(&self, bearer_token: &str) -> bool {
        bearer_token == self.0
    }
}

pub const TOKEN: &str = "rst_ingest_test";

/// A config with every listener on loopback port 0.
pub fn config() -> IngestConfig {
    IngestConfig {
        graphite_tcp_listen: "127.0.0.1:0".into(),
        graphite_udp_listen: "127.0.0.1:0".into(),
        statsd_udp_listen: "127.0.0.1:0".into(),
        statsd_tcp_listen: "127.0.0.1:0".into(),
        // the tests flush by hand; the timer must not interfere
        statsd_flush_interval_ms: 3_600_000,
        ..IngestConfig::default()
    }
}

pub struct Fixture {
    pub ingest: Arc<Ingest>,
    pub sink: Arc<MemSink>,
    pub switches: Arc<Switches>,
    pub clock: Arc<ManualClock>,
    pub addrs: ingest::BoundAddrs,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub dir: tempfile::TempDir,
}

pub async fn start(cfg: IngestConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let switches = Switches::open(&dir.path().join("switches.json"), &SOURCE_NAMES).unwrap();
    let sink = MemSink::new();
    let clock = Arc::new(ManualClock::new(Timestamp(NOW_MS)));
    let ingest = Arc::new(
        Ingest::new(
            cfg,
            sink.clone(),
            Arc::new(OneToken(TOKEN)),
            switches.clone(),
            clock.clone(),
        )
        .unwrap(),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let addrs = ingest.start_listeners(shutdown.clone()).await.unwrap();
    Fixture {
        ingest,
        sink,
        switches,
        clock,
        addrs,
        shutdown,
        dir,
    }
}

/// Polls a counter-like condition; for effects that have no hook (drops are not stored).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
