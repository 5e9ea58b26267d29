//! StatsD over UDP and TCP: packets are parsed with `wire::statsd`, aggregated per flush
//! interval by [`aggregator::Aggregator`] (Etsy StatsD semantics), and the flushed samples
//! travel the same resolve → limits → queue path as every other source.
//!
//! - UDP: one reader thread per socket receives batches of up to `udp_batch_datagrams`
//!   datagrams per system call (`crate::udp`: `recvmmsg`, a forced-large kernel buffer),
//!   parses them and feeds the aggregator under one lock per batch. It never does flush
//!   work, so the kernel buffer only has to absorb the short moment the aggregator lock is
//!   held by a flush (`take_interval`). Parsing on the reader thread, with no hand-off to a
//!   worker, was measured to keep up (see `benches/statsd_udp.rs`): a hand-off would add a
//!   copy and a queue per datagram for nothing on a 2-core machine.
//! - TCP: newline-separated metrics, read like Graphite's TCP lines.
//! - Flush: a task ticks every `statsd_flush_interval_ms`, closes the interval under the
//!   aggregator's lock (`take_interval`: one cheap pass; sorting timers, building series,
//!   resolving and writing happen after the lock is released), resolves the series in
//!   a blocking job (a flusher-owned cache of series ids, bounded) and queues the points with
//!   backpressure. [`crate::Ingest::drain`] flushes one last time.
//!
//! Both transports feed one aggregator, so a key sent over UDP and TCP is one series. Flushed
//! points are therefore counted under `roaster_ingest_points_total{source="statsd-udp"}`;
//! metrics received are counted per transport in `roaster_ingest_statsd_metrics_total`.
//! The per-timer sketches of each flush go to the sketch log ([`crate::sketchlog`]) when
//! the server attached one ([`crate::Ingest::attach_sketch_log`]), written in the same
//! blocking job that resolves the flushed series.

pub mod aggregator;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use model::telemetry::{Counter, Exposition};
use model::{Point, SeriesId, SeriesKey, Timestamp};
use parking_lot::Mutex;

use crate::graphite::{Lines, read_lines};
use crate::queue::Batch;
use crate::telemetry::reason;
use crate::udp::{Recv, UdpReader, bind_udp};
use crate::{IngestConfig, IngestError, Shared, Source, spawn_ingest};

use self::aggregator::Aggregator;

type Hasher = foldhash::fast::RandomState;

/// StatsD metrics received (parsed and handed to the aggregator), by transport.
pub const METRICS_TOTAL: &str = "roaster_ingest_statsd_metrics_total";
/// StatsD flushes done.
pub const FLUSHES_TOTAL: &str = "roaster_ingest_statsd_flushes_total";

/// The aggregator and the flusher's state.
pub(crate) struct StatsdState {
    agg: Mutex<Aggregator>,
    /// Metrics observed, by transport: [udp, tcp].
    observed: [Counter; 2],
    flushes: Counter,
    /// One flush at a time (timer and drain may race).
    flushing: tokio::sync::Mutex<()>,
    /// Flushed key → series id; cleared when it reaches `cache_cap`.
    cache: Mutex<HashMap<SeriesKey, SeriesId, Hasher>>,
    cache_cap: usize,
    /// Where each flush's timer sketches are stored (attached once by the server).
    pub(crate) sketch_log: std::sync::OnceLock<Arc<crate::sketchlog::SketchLog>>,
}

impl StatsdState {
    pub(crate) fn new(cfg: &IngestConfig) -> StatsdState {
        let acfg = cfg.aggregator_config();
        StatsdState {
            agg: Mutex::new(Aggregator::new(acfg)),
            observed: Default::default(),
            flushes: Counter::default(),
            flushing: tokio::sync::Mutex::new(()),
            cache: Mutex::new(HashMap::with_hasher(Hasher::default())),
            // every key yields a handful of series (count/rate, timer statistics)
            cache_cap: cfg.statsd_max_keys.saturating_mul(16),
            sketch_log: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn observed(&self) -> u64 {
        self.observed.iter().map(Counter::get).sum()
    }

    pub(crate) fn key_count(&self) -> usize {
        self.agg.lock().key_count()
    }

    pub(crate) fn render_metrics(&self, out: &mut Exposition) {
        out.family(METRICS_TOTAL, "counter", "StatsD metrics received, by transport.");
        for (i, s) in [Source::StatsdUdp, Source::StatsdTcp].into_iter().enumerate() {
            let n = self.observed.get(i).map_or(0, Counter::get);
            out.sample(METRICS_TOTAL, &[("source", s.as_str())], n as f64);
        }
        out.counter(FLUSHES_TOTAL, "StatsD flushes done.", self.flushes.get());
    }
}

/// Parses a packet (or a chunk of TCP lines) and feeds the aggregator.
pub(crate) fn observe_packet(sh: &Shared, source: Source, packet: &[u8]) {
    observe_packets(sh, source, std::iter::once(packet));
}

/// Parses packets and feeds the aggregator, taking its lock once for all of them (a UDP
/// batch), so a flood of one-metric datagrams does not pay a lock per datagram.
pub(crate) fn observe_packets<'p>(sh: &Shared, source: Source, packets: impl Iterator<Item = &'p [u8]>) {
    let mut errors = Vec::new();
    let mut refused: Vec<(&'static str, String)> = Vec::new();
    let mut n = 0u64;
    {
        let mut agg = sh.statsd.agg.lock();
        for packet in packets {
            wire::statsd::visit_packet(packet, &sh.limits, |r| match r {
                Ok(m) => match agg.observe(&m) {
                    Ok(()) => n += 1,
                    Err(e) => refused.push((e.as_str(), format!("{} ({e})", m.name))),
                },
                Err(e) => errors.push(e),
            });
        }
    }
    let i = usize::from(source == Source::StatsdTcp);
    if let Some(c) = sh.statsd.observed.get(i) {
        c.add(n);
    }
    if errors.is_empty() && refused.is_empty() {
        return;
    }
    let now = sh.clock.now();
    for e in &errors {
        sh.reject_line(source, e, now);
    }
    for (code, r) in &refused {
        sh.reject(source, code, r, now);
    }
}

/// Binds the StatsD UDP socket and starts its reader thread.
pub(crate) fn start_udp(sh: Arc<Shared>, addr: SocketAddr) -> Result<SocketAddr, IngestError> {
    let source = Source::StatsdUdp;
    let socket = bind_udp(&sh, source, addr)?;
    let local = socket.local_addr().map_err(|e| IngestError::Bind {
        listener: source.as_str(),
        addr,
        source: e,
    })?;
    let sh2 = Arc::clone(&sh);
    let t = std::thread::Builder::new()
        .name("roaster-statsd-udp".into())
        .spawn(move || {
            crate::priority::lower_current_thread(sh2.cfg.robot_thread_nice);
            let mut reader = UdpReader::new(&sh2, socket, source);
            loop {
                match reader.recv(&sh2) {
                    Recv::Batch => observe_packets(&sh2, source, reader.packets()),
                    Recv::Nothing => {}
                    Recv::Stop => return,
                }
            }
        })
        .map_err(IngestError::Spawn)?;
    sh.threads.lock().push(t);
    Ok(local)
}

/// Binds the StatsD TCP listener and starts accepting.
pub(crate) async fn start_tcp(sh: Arc<Shared>, addr: SocketAddr) -> Result<SocketAddr, IngestError> {
    crate::graphite::listen_tcp(sh, addr, Source::StatsdTcp, |sh, stream| {
        Box::pin(read_lines(sh, stream, Lines::Statsd))
    })
    .await
}

/// Starts the flush timer.
pub(crate) fn start_flusher(sh: Arc<Shared>) {
    let sh2 = Arc::clone(&sh);
    spawn_ingest(&sh, async move {
        let every = Duration::from_millis(sh2.cfg.statsd_flush_interval_ms);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = sh2.stop.cancelled() => return,
                _ = tick.tick() => flush_now(&sh2).await,
            }
        }
    });
}

/// Flushes the aggregator and queues its output (waiting for room in the queue).
pub(crate) async fn flush_now(sh: &Arc<Shared>) {
    let _one = sh.statsd.flushing.lock().await;
    let now = sh.clock.now();
    // only closing the interval holds the lock; sorting timers and building series do not
    let pending = sh.statsd.agg.lock().take_interval(now);
    sh.statsd.flushes.inc();
    let sh2 = Arc::clone(sh);
    let job = tokio::task::spawn_blocking(move || {
        let out = pending.finish();
        if let Some(log) = sh2.statsd.sketch_log.get() {
            log.append(now.millis(), &out.sketches);
        }
        resolve_flushed(&sh2, out.samples, now)
    });
    let Ok(points) = job.await else {
        return;
    };
    if points.is_empty() {
        return;
    }
    let source = Source::StatsdUdp;
    let shard = sh.shard();
    for chunk in points.chunks(sh.cfg.batch_max_points) {
        let batch = Batch {
            points: chunk.to_vec(),
            source,
            durable: false,
            ack: None,
        };
        if sh.queue.submit(batch, shard, &sh.metrics).await.is_err() {
            sh.dropped(source, reason::QUEUE_FULL, chunk.len());
        }
    }
}

/// Resolves flushed samples to points; refused series are counted and kept as rejections.
fn resolve_flushed(sh: &Shared, samples: Vec<(SeriesKey, f64)>, now: Timestamp) -> Vec<Point> {
    let source = Source::StatsdUdp;
    let mut points = Vec::with_capacity(samples.len());
    let mut cache = sh.statsd.cache.lock();
    for (key, value) in samples {
        let series = match cache.get(&key) {
            Some(id) => *id,
            None => {
                if !wire::key_within_limits(&key, &sh.limits) {
                    sh.reject(
                        source,
                        wire::Reason::BadName.as_str(),
                        &format!("{key} (flushed name exceeds the limits)"),
                        now,
                    );
                    continue;
                }
                match sh.limiter.resolve(&key) {
                    Ok(id) => {
                        if cache.len() >= sh.statsd.cache_cap {
                            cache.clear();
                        }
                        cache.insert(key, id);
                        id
                    }
                    Err(r) => {
                        sh.reject(source, r.reason, &format!("{key} ({})", r.detail), now);
                        continue;
                    }
                }
            }
        };
        points.push(Point {
            series,
            ts: now.millis(),
            value,
        });
    }
    points
}
