//! Robot-facing ingest: everything between a robot's socket and storage.
//!
//! How a sample travels:
//!
//! ```text
//! socket ─► listener (graphite tcp/udp, statsd udp/tcp, robot HTTP router)
//!        ─► kill switch (open: go on; paused: do not read / 503; blackholed: count and discard)
//!        ─► allow-list (plaintext) or bearer token (HTTP)
//!        ─► wire decoder (bytes in, values + per-line errors out; shape limits)
//!        ─► series resolution (per-connection cache; on a miss: cardinality limits, sink.resolve)
//!        ─► bounded queue (points) ─► writer thread ─► SampleSink::write
//! ```
//!
//! StatsD metrics stop at the aggregator; each flush interval its output takes the same
//! resolution → queue path.
//!
//! Design constraints and invariants:
//! - **The ingest path never touches the relational store.** Its only way out is
//!   [`SampleSink`]; robot traffic has its own runtime (the server's `roaster-robot`),
//!   listeners and bounded queues, so robots cannot take the human plane's budget.
//! - **Async tasks never block on storage.** Sink calls happen on ingest's writer threads,
//!   on UDP reader threads, or in `spawn_blocking` jobs; tasks are spawned only through
//!   `spawn_ingest` onto the current (robot) runtime.
//! - **Everything is bounded** by a named [`IngestConfig`] field: lines, packets, bodies,
//!   labels, series, the queue, batches, connections, caches, the rejections ring.
//! - **A bad line costs a line**: each rejection is counted per source and reason
//!   (`roaster_ingest_dropped_total`) and the last few are kept ([`Ingest::rejections`]).
//! - **Load is shed, never queued without bound**: HTTP answers 429 (queue full) or 503
//!   (paused, storage unavailable) with `Retry-After`; plaintext TCP stops reading when the
//!   queue is full; UDP drops and counts (`queue_full`).
//!
//! - **Paused UDP is not read** (the issue: "plaintext sockets are not read"): the kernel
//!   buffer keeps what it can hold, delivered when the source is reopened, and drops the
//!   overflow. Those drops are counted exactly for our socket as
//!   `roaster_ingest_udp_socket_drops_total{source}` (the kernel's per-socket counter in
//!   `/proc/net/udp`), not as `dropped_total{reason="paused"}`: reading and discarding would
//!   lose even what the buffer could have kept for a short pause. The host-wide
//!   `roaster_ingest_udp_rcvbuf_errors_total` is exported too.
//!
//! Shutdown order ([`Ingest::drain`]): cancel `stop` (accept loops, connections, the StatsD
//! flush timer and the UDP reader threads all watch it) → wait for the task tracker → join
//! the UDP threads → one last StatsD flush → wait until the queue is empty. The writer
//! threads end when the last `Ingest` handle and task are gone.
//!
//! When you change a source, also touch: [`SOURCE_NAMES`] (switch names are persisted in
//! `switches.json`), the server's config example (`[ingest]`), and `tests/`.
//!
//! Modules: [`config`] (knobs), [`sink`] (traits consumed), [`switch`] (kill switches),
//! [`source`] (source names), [`telemetry`] (metric names, rejections), `queue` (bounded
//! queue + writer threads), `limiter` (cardinality), `udp` (batched UDP receives),
//! `graphite`, [`statsd`], [`sketchlog`] (StatsD timer sketches on disk), `http`
//! (remote-write, Influx, JSON), `cidr` (allow-list).

#![warn(missing_docs)]

pub mod cidr;
pub mod config;
mod error;
mod graphite;
mod http;

mod limiter;
pub mod priority;
mod queue;
pub mod sink;
pub mod sketchlog;
pub mod source;
pub mod statsd;
pub mod switch;
pub mod telemetry;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use model::telemetry::Exposition;
use model::{Clock, Timestamp};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::IngestConfig;
pub use error::IngestError;
pub use sink::{SampleSink, SinkError, TokenCheck, WriteOutcome};
pub use source::{SOURCE_NAMES, Source};
pub use switch::{SwitchError, SwitchHandle, SwitchState, Switches};
pub use telemetry::Rejection;

use crate::limiter::Limiter;
use crate::queue::Queue;
use crate::telemetry::{IngestDropped, Metrics, Rejections};

/// The addresses the plaintext listeners actually bound (port 0 resolved); `None` when the
/// listener is disabled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BoundAddrs {
    /// Graphite plaintext over TCP.
    pub graphite_tcp: Option<SocketAddr>,
    /// Graphite plaintext over UDP.
    pub graphite_udp: Option<SocketAddr>,
    /// StatsD over UDP.
    pub statsd_udp: Option<SocketAddr>,
    /// StatsD over TCP.
    pub statsd_tcp: Option<SocketAddr>,
}

/// State shared by every listener, handler and thread of one [`Ingest`].
pub(crate) struct Shared {
    pub(crate) cfg: IngestConfig,
    pub(crate) limits: wire::WireLimits,
    pub(crate) templates: Option<wire::graphite::Templates>,
    pub(crate) allow: cidr::AllowList,
    pub(crate) auth: Arc<dyn TokenCheck>,
    pub(crate) switches: Arc<Switches>,
    switch: Vec<SwitchHandle>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Arc<Metrics>,
    rejections: Rejections,
    pub(crate) queue: Queue,
    pub(crate) limiter: Limiter,
    pub(crate) statsd: statsd::StatsdState,
    /// Cancelled by `drain` or by the caller's shutdown token: listeners stop reading.
    pub(crate) stop: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// Reader threads (UDP), joined by `drain`.
    pub(crate) threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    draining: AtomicBool,
    next_shard: AtomicUsize,
}

impl Shared {
    /// The kill switch of a source.
    pub(crate) fn switch(&self, source: Source) -> SwitchState {
        self.switch
            .get(source.index())
            .map_or(SwitchState::Open, SwitchHandle::state)
    }

    /// Counts `count` dropped points.
    pub(crate) fn dropped(&self, source: Source, reason: &'static str, count: usize) {
        IngestDropped {
            source,
            reason,
            count: count as u64,
        }
        .emit(&self.metrics);
    }

    /// Counts one rejected line and keeps it for the rejections list.
    pub(crate) fn reject(&self, source: Source, reason: &'static str, excerpt: &str, now: Timestamp) {
        self.dropped(source, reason, 1);
        self.rejections.push(source, reason, excerpt, now);
    }

    /// Counts a decoder's line error and keeps it.
    pub(crate) fn reject_line(&self, source: Source, e: &wire::LineError, now: Timestamp) {
        let text = format!("{} ({})", e.excerpt, e.detail);
        self.reject(source, e.reason.as_str(), &text, now);
    }

    /// A fresh shard number, so that unrelated connections spread over the writers.
    pub(crate) fn shard(&self) -> usize {
        self.next_shard.fetch_add(1, Ordering::Relaxed)
    }
}

/// Spawns an ingest task onto the current runtime (the robot plane's), tracked for drain.
pub(crate) fn spawn_ingest<F>(shared: &Shared, fut: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    shared.tracker.spawn(fut);
}

/// The ingest service: listeners, HTTP handlers, queues and writer threads.
pub struct Ingest {
    shared: Arc<Shared>,
}

impl Ingest {
    /// Validates `cfg`, starts the writer threads and prepares (but does not bind) listeners.
    /// `switches` must have every name of [`SOURCE_NAMES`] registered.
    pub fn new(
        cfg: IngestConfig,
        sink: Arc<dyn SampleSink>,
        auth: Arc<dyn TokenCheck>,
        switches: Arc<Switches>,
        clock: Arc<dyn Clock>,
    ) -> Result<Ingest, IngestError> {
        cfg.validate()?;
        let templates = if cfg.graphite_templates.is_empty() {
            None
        } else {
            Some(
                wire::graphite::Templates::parse(&cfg.graphite_templates)
                    .map_err(|e| IngestError::Templates(e.to_string()))?,
            )
        };
        let allow = cidr::AllowList::parse(&cfg.plaintext_allow_cidrs).map_err(|e| config::ConfigError {
            key: "plaintext_allow_cidrs",
            problem: e.to_string(),
        })?;
        let mut switch = Vec::with_capacity(Source::ALL.len());
        for s in Source::ALL {
            switch.push(
                switches
                    .handle(s.as_str())
                    .ok_or(IngestError::MissingSwitch(s.as_str()))?,
            );
        }
        let metrics = Arc::new(Metrics::new());
        let queue = Queue::start(
            cfg.queue_capacity_points,
            cfg.writer_threads,
            Arc::clone(&sink),
            Arc::clone(&metrics),
            cfg.robot_thread_nice,
        )
        .map_err(IngestError::Spawn)?;
        let limits = wire::WireLimits {
            max_line_bytes: cfg.max_line_bytes,
            max_labels: cfg.max_labels_per_series,
            max_name_bytes: cfg.max_name_bytes,
            max_label_value_bytes: cfg.max_label_value_bytes,
        };
        let limiter = Limiter {
            max_series_per_metric: cfg.max_series_per_metric,
            max_series_total: cfg.max_series_total,
            sink,
            metrics: Arc::clone(&metrics),
        };
        let statsd = statsd::StatsdState::new(&cfg);
        let rejections = Rejections::new(cfg.rejections_kept_per_source);
        Ok(Ingest {
            shared: Arc::new(Shared {
                cfg,
                limits,
                templates,
                allow,
                auth,
                switches,
                switch,
                clock,
                metrics,
                rejections,
                queue,
                limiter,
                statsd,
                stop: CancellationToken::new(),
                tracker: TaskTracker::new(),
                threads: Mutex::new(Vec::new()),
                draining: AtomicBool::new(false),
                next_shard: AtomicUsize::new(0),
            }),
        })
    }

    /// Binds the plaintext listeners (Graphite TCP/UDP, StatsD UDP/TCP) and starts serving
    /// them until `shutdown` is cancelled or [`Ingest::drain`] is called. Must be called
    /// inside the robot runtime. A listen address of `""` or `"off"` disables a listener;
    /// port 0 picks a free port, reported in the result.
    pub async fn start_listeners(&self, shutdown: CancellationToken) -> Result<BoundAddrs, IngestError> {
        let sh = &self.shared;
        let mut bound = BoundAddrs::default();
        let addr = |key: &'static str, s: &str| {
            config::listen_addr(s).map_err(|_| IngestError::BadListenAddr {
                key,
                addr: s.to_owned(),
            })
        };
        if let Some(a) = addr("graphite_tcp_listen", &sh.cfg.graphite_tcp_listen)? {
            bound.graphite_tcp = Some(graphite::start_tcp(Arc::clone(sh), a).await?);
        }
        if let Some(a) = addr("graphite_udp_listen", &sh.cfg.graphite_udp_listen)? {
            bound.graphite_udp = Some(graphite::start_udp(Arc::clone(sh), a)?);
        }
        if let Some(a) = addr("statsd_udp_listen", &sh.cfg.statsd_udp_listen)? {
            bound.statsd_udp = Some(statsd::start_udp(Arc::clone(sh), a)?);
        }
        if let Some(a) = addr("statsd_tcp_listen", &sh.cfg.statsd_tcp_listen)? {
            bound.statsd_tcp = Some(statsd::start_tcp(Arc::clone(sh), a).await?);
        }
        statsd::start_flusher(Arc::clone(sh));
        let stop = sh.stop.clone();
        spawn_ingest(sh, async move {
            tokio::select! {
                () = shutdown.cancelled() => stop.cancel(),
                () = stop.cancelled() => {}
            }
        });
        Ok(bound)
    }

    /// The robot-plane HTTP routes: `POST /api/v1/write` (Prometheus remote-write),
    /// `POST /write` and `POST /api/v2/write` (InfluxDB line protocol, `?precision=`),
    /// `POST /api/v1/ingest` (Roaster JSON). Each needs a token with the `ingest` scope; see
    /// the `http` module for statuses.
    pub fn robot_router(&self) -> axum::Router {
        http::router(Arc::clone(&self.shared))
    }

    /// Graceful shutdown: stops reading, flushes the StatsD aggregates, and returns once
    /// every queued point has been written to the sink.
    pub async fn drain(&self) {
        let sh = &self.shared;
        sh.draining.store(true, Ordering::Release);
        sh.stop.cancel();
        sh.tracker.close();
        sh.tracker.wait().await;
        let threads: Vec<_> = std::mem::take(&mut *sh.threads.lock());
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        statsd::flush_now(sh).await;
        if let Some(log) = sh.statsd.sketch_log.get() {
            log.close();
        }
        sh.queue.wait_empty().await;
        tracing::info!("ingest drained");
    }

    /// Stores each flush's timer sketches in `log` from now on (the server opens it in the
    /// data directory); `false` when a log was already attached.
    pub fn attach_sketch_log(&self, log: Arc<sketchlog::SketchLog>) -> bool {
        self.shared.statsd.sketch_log.set(log).is_ok()
    }

    /// The attached sketch log, for quantile queries.
    pub fn sketch_log(&self) -> Option<Arc<sketchlog::SketchLog>> {
        self.shared.statsd.sketch_log.get().cloned()
    }

    /// Flushes the StatsD aggregator now (as the interval timer does) and queues its output.
    pub async fn flush_statsd(&self) {
        statsd::flush_now(&self.shared).await;
    }

    /// Waits until every point queued so far has been written to the sink.
    pub async fn wait_queue_empty(&self) {
        self.shared.queue.wait_empty().await;
    }

    /// The last `rejections_kept_per_source` rejected lines of each source.
    pub fn rejections(&self) -> Vec<Rejection> {
        self.shared.rejections.all()
    }

    /// Points stored from a source so far (`roaster_ingest_points_total{source}`).
    pub fn points_total(&self, source: Source) -> u64 {
        self.shared.metrics.points_total(source)
    }

    /// Points dropped from a source for a reason (`roaster_ingest_dropped_total`).
    pub fn dropped_total(&self, source: Source, reason: &str) -> u64 {
        self.shared.metrics.dropped_total(source, reason)
    }

    /// StatsD metrics observed by the aggregator so far (a hook for tests and benchmarks).
    pub fn statsd_observed(&self) -> u64 {
        self.shared.statsd.observed()
    }

    /// Writes ingest's own figures in Prometheus text format.
    pub fn render_metrics(&self, out: &mut Exposition) {
        let sh = &self.shared;
        sh.metrics
            .statsd_keys
            .set(i64::try_from(sh.statsd.key_count()).unwrap_or(i64::MAX));
        sh.metrics.render(out, sh.queue.depth(), sh.queue.capacity());
        sh.statsd.render_metrics(out);
        if let Some(log) = sh.statsd.sketch_log.get() {
            log.render_metrics(out);
        }
    }

    /// `Ok` when ingest can take more data; otherwise a reason code:
    /// `shutting_down` or `ingest_queue_saturated` (queue at least 90 % full).
    pub fn readiness(&self) -> Result<(), String> {
        let sh = &self.shared;
        if sh.draining.load(Ordering::Acquire) {
            return Err("shutting_down".into());
        }
        if sh.queue.depth().saturating_mul(10) >= sh.queue.capacity().saturating_mul(9) {
            return Err("ingest_queue_saturated".into());
        }
        Ok(())
    }
}
