//! Events inside the server: the `[events]` config section, the [`Events`] handle every part
//! of the server records events through (the robot plane's `POST /api/v1/events`, heartbeats,
//! the audit trail), its metrics and the periodic retention job.
//!
//! Storage is `events.db` (shard 0) and `events.K.db` (shards 1.., `[events] sqlite_shards`
//! when the store is created) in the data directory (a [`store::SqliteStore`]), reached only
//! through `Arc<dyn store::EventStore>`, so a PostgreSQL store can replace it here alone.
//!
//! Invariants:
//! - every store call blocks, so async code goes through [`Events::record`] (which runs the
//!   call in `spawn_blocking` on the caller's runtime) or its own `spawn_blocking`;
//!   [`Events::record_event`] and [`Events::record_batch`] are for code already on a blocking
//!   thread;
//! - the `events` kill switch governs the robot endpoint only; events the server records
//!   itself (audit, heartbeats) are always stored, so pausing robots never loses the audit
//!   trail;
//! - retention runs on a blocking thread every `retention_interval_ms`, deleting in chunks of
//!   `retention_chunk_rows` per transaction, so inserts interleave; audit events have their
//!   own age (`audit_retention_days`, 0 = kept forever);
//! - at shutdown the store is closed (WAL checkpoint) after both planes stopped; writes after
//!   that fail with [`store::StoreError::Closed`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use model::Clock;
use model::event::{Arrival, Event, EventError, EventInput, EventLimits};
use model::telemetry::{Counter, Exposition, Histogram};
use serde::{Deserialize, Serialize};
use store::{EventStore, ItemResult, QueryLimits, Retention, SqliteConfig, StoreError};

/// The event database's file name in the data directory.
pub const EVENTS_DB_FILE: &str = "events.db";
/// The kill switch of `POST /api/v1/events`.
pub const EVENTS_SWITCH: &str = "events";

const DAY_MS: i64 = 24 * 3600 * 1000;

/// How hard the event database syncs on commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventsSync {
    /// WAL + `synchronous=NORMAL`: an acknowledged event survives a crash of the process
    /// (kill -9); a power loss or kernel crash may lose the last commits, never corrupts.
    Normal,
    /// `synchronous=FULL`: every acknowledged event also survives a power loss, at the cost
    /// of an fsync per batch.
    Full,
}

/// `[events]`: the event store, its limits and retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Days events are kept (by event time); older ones are deleted by retention. Audit
    /// events use `audit_retention_days` instead.
    pub retention_days: u32,
    /// Days audit events (`audit.*`) are kept; 0 keeps them forever.
    pub audit_retention_days: u32,
    /// How often retention runs, in milliseconds; 0 turns it off.
    pub retention_interval_ms: u64,
    /// Events deleted per retention transaction, so inserts are never held up for long.
    pub retention_chunk_rows: usize,
    /// Most events in one `POST /api/v1/events` request.
    pub max_batch_items: usize,
    /// Largest `POST /api/v1/events` body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest payload of one event (its JSON text), in bytes.
    pub max_payload_bytes: usize,
    /// How far an event's time may lie after its arrival (clock skew), in milliseconds.
    pub max_future_skew_ms: i64,
    /// Page size of `GET /api/v1/events` when the request names no `limit`.
    pub default_page: usize,
    /// Largest `limit` of `GET /api/v1/events`.
    pub max_page: usize,
    /// Most events one `GET /api/v1/annotations` answer carries (the answer says when it
    /// was truncated).
    pub max_annotations: usize,
    /// Most label matchers in one event query.
    pub max_label_matchers: usize,
    /// Most words in one full-text query (`q`).
    pub max_search_words: usize,
    /// Commit durability of the event database: "normal" (survives a process crash) or
    /// "full" (also survives a power loss; slower).
    pub sqlite_synchronous: EventsSync,
    /// Read-only connections to the event database (concurrent searches).
    pub sqlite_readers: usize,
    /// Page cache per connection, in KiB.
    pub sqlite_cache_kib: u32,
    /// How long a statement waits for the database lock before failing, in milliseconds.
    pub sqlite_busy_timeout_ms: u64,
    /// WAL pages after which a commit checkpoints them into `events.db` (SQLite's
    /// `wal_autocheckpoint`, whose own default is 1000); larger copies hot pages less often,
    /// the `-wal` file grows to about this many 4 KiB pages (10,000 ≈ 40 MiB: about 7 % less
    /// server CPU per event than 1,000 in `bench/scenarios/events_ingest.py`).
    pub sqlite_wal_autocheckpoint_pages: u32,
    /// Full-text segments merged at a time (FTS5 `automerge`, 2..=16); larger merges less
    /// while inserting and leaves more segments for searches to read.
    pub fts_automerge: u32,
    /// How often a background thread checkpoints the WAL into `events.db`, in milliseconds;
    /// 0 leaves checkpoints to the committing writer; at most 60000. Longer copies a page that
    /// many commits rewrite once per checkpoint (1000: about 20 % fewer bytes written per event
    /// than 100). Durability does not depend on it: a commit is durable in the WAL.
    pub sqlite_checkpoint_interval_ms: u64,
    /// How many SQLite files (shards, each with its own writer) a new event store is split
    /// into, 1..=16; events go to a shard by a fixed hash of their id, so inserts use as many
    /// cores as there are shards. Fixed when the store is created: later opens use the count
    /// recorded in `events.db` and log when this differs (changing it needs an export).
    /// Each shard has its own writer, `sqlite_readers` readers and checkpointer, each with
    /// its own `sqlite_cache_kib` page cache.
    pub sqlite_shards: usize,
}

impl Default for EventsConfig {
    fn default() -> EventsConfig {
        EventsConfig {
            retention_days: 400,
            audit_retention_days: 0,
            retention_interval_ms: 3_600_000,
            retention_chunk_rows: 10_000,
            max_batch_items: 1000,
            max_body_bytes: 16 << 20,
            max_payload_bytes: 64 << 10,
            max_future_skew_ms: DAY_MS,
            default_page: 100,
            max_page: 1000,
            max_annotations: 5000,
            max_label_matchers: 16,
            max_search_words: 16,
            sqlite_synchronous: EventsSync::Normal,
            sqlite_readers: 4,
            sqlite_cache_kib: 16 * 1024,
            sqlite_busy_timeout_ms: 5000,
            sqlite_wal_autocheckpoint_pages: 10_000,
            fts_automerge: 4,
            sqlite_checkpoint_interval_ms: 1000,
            sqlite_shards: 2,
        }
    }
}

impl EventsConfig {
    /// Checks the section; the error is `(key, reason)` with the key relative to `[events]`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, v) in [
            ("retention_days", self.retention_days as usize),
            ("retention_chunk_rows", self.retention_chunk_rows),
            ("max_batch_items", self.max_batch_items),
            ("max_body_bytes", self.max_body_bytes),
            ("max_payload_bytes", self.max_payload_bytes),
            ("default_page", self.default_page),
            ("max_page", self.max_page),
            ("max_annotations", self.max_annotations),
            ("max_search_words", self.max_search_words),
            ("sqlite_readers", self.sqlite_readers),
        ] {
            if v == 0 {
                return Err((key, "must be greater than 0".into()));
            }
        }
        if self.default_page > self.max_page {
            return Err(("default_page", "must not exceed max_page".into()));
        }
        if self.max_future_skew_ms < 0 {
            return Err(("max_future_skew_ms", "must not be negative".into()));
        }
        if self.sqlite_readers > 64 {
            return Err(("sqlite_readers", "must be at most 64".into()));
        }
        if !(2..=16).contains(&self.fts_automerge) {
            return Err(("fts_automerge", "must be between 2 and 16".into()));
        }
        if self.sqlite_wal_autocheckpoint_pages == 0 {
            return Err(("sqlite_wal_autocheckpoint_pages", "must be greater than 0".into()));
        }
        if self.sqlite_checkpoint_interval_ms > 60_000 {
            return Err(("sqlite_checkpoint_interval_ms", "must be at most 60000".into()));
        }
        if !(1..=store::MAX_SHARDS).contains(&self.sqlite_shards) {
            return Err((
                "sqlite_shards",
                format!("must be between 1 and {}", store::MAX_SHARDS),
            ));
        }
        if self.sqlite_busy_timeout_ms == 0 {
            return Err(("sqlite_busy_timeout_ms", "must be greater than 0".into()));
        }
        Ok(())
    }

    /// The edge limits applied to every incoming event.
    pub fn event_limits(&self) -> EventLimits {
        EventLimits {
            max_batch_items: self.max_batch_items,
            max_payload_bytes: self.max_payload_bytes,
            max_future_skew_ms: self.max_future_skew_ms,
            ..EventLimits::default()
        }
    }

    /// How to open the SQLite store at `path`.
    pub fn sqlite_config(&self, path: std::path::PathBuf) -> SqliteConfig {
        let mut c = SqliteConfig::new(path);
        c.readers = self.sqlite_readers;
        c.busy_timeout = Duration::from_millis(self.sqlite_busy_timeout_ms);
        c.synchronous = match self.sqlite_synchronous {
            EventsSync::Normal => store::Synchronous::Normal,
            EventsSync::Full => store::Synchronous::Full,
        };
        c.cache_kib = self.sqlite_cache_kib;
        c.wal_autocheckpoint_pages = self.sqlite_wal_autocheckpoint_pages;
        c.fts_automerge = self.fts_automerge;
        c.background_checkpoint = (self.sqlite_checkpoint_interval_ms > 0)
            .then(|| Duration::from_millis(self.sqlite_checkpoint_interval_ms));
        c.max_batch_items = self.max_batch_items;
        c.max_indexed_payload_bytes = self.max_payload_bytes;
        c.retention_chunk_rows = self.retention_chunk_rows;
        c.shards = self.sqlite_shards;
        c.limits = QueryLimits {
            default_page: self.default_page,
            max_page: self.max_page,
            max_annotations: self.max_annotations,
            max_label_matchers: self.max_label_matchers,
            max_search_words: self.max_search_words,
            ..QueryLimits::default()
        };
        c
    }
}

/// Why recording events failed.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The event did not pass the envelope's checks.
    #[error("invalid event: {0}")]
    Invalid(#[from] EventError),
    /// The store refused or failed.
    #[error("event store: {0}")]
    Store(#[from] StoreError),
    /// The blocking task running the store call died.
    #[error("event store task failed: {0}")]
    Task(String),
}

/// Why an item was rejected, as the metric label and the per-item answer's `reason`.
pub fn reject_reason(e: &EventError) -> &'static str {
    match e {
        EventError::NotUtf8 { .. } => "not_utf8",
        EventError::Json(_) => "bad_json",
        EventError::BatchTooLarge { .. } => "batch_too_large",
        EventError::Missing(_) => "missing_field",
        EventError::TooLong { .. } => "too_long",
        EventError::NotOneLine(_) => "not_one_line",
        EventError::BadKind(_) => "bad_kind",
        EventError::ReservedKind(_) => "reserved_kind",
        EventError::BadId(_) => "bad_id",
        EventError::BadTime(_) | EventError::TimeOutOfRange(_) => "bad_time",
        EventError::TooFarInFuture { .. } => "too_far_in_future",
        EventError::TooManyLabels { .. } => "too_many_labels",
        EventError::BadLabelName(_) => "bad_label_name",
        EventError::PayloadTooDeep { .. } | EventError::PayloadTooLarge { .. } => "bad_payload",
    }
}

/// Every value [`reject_reason`] returns, for the metric's stable label set.
pub const REJECT_REASONS: [&str; 14] = [
    "reserved_kind",
    "not_utf8",
    "bad_json",
    "batch_too_large",
    "missing_field",
    "too_long",
    "not_one_line",
    "bad_kind",
    "bad_id",
    "bad_time",
    "too_far_in_future",
    "too_many_labels",
    "bad_label_name",
    "bad_payload",
];

/// Self-telemetry of events (rendered on `/metrics`).
#[derive(Debug, Default)]
pub struct EventMetrics {
    /// Events newly stored.
    pub stored: Counter,
    /// Events whose id was already stored.
    pub duplicates: Counter,
    /// Events rejected at the edge, by [`REJECT_REASONS`] index.
    pub rejected: [Counter; REJECT_REASONS.len()],
    /// Events read and discarded because the `events` switch is blackholed.
    pub blackholed: Counter,
    /// Requests refused because the `events` switch is paused.
    pub paused: Counter,
    /// Batches the store failed to write.
    pub store_errors: Counter,
    /// Latency of one store insert (a whole batch).
    pub insert_seconds: Histogram,
    /// Events deleted by retention.
    pub retention_deleted: Counter,
    /// Audit events deleted by retention.
    pub retention_audit_deleted: Counter,
    /// Retention passes that failed.
    pub retention_errors: Counter,
}

impl EventMetrics {
    /// Counts one rejected item.
    pub fn reject(&self, e: &EventError) {
        let reason = reject_reason(e);
        if let Some(i) = REJECT_REASONS.iter().position(|r| *r == reason)
            && let Some(c) = self.rejected.get(i)
        {
            c.inc();
        }
    }

    fn render(&self, out: &mut Exposition) {
        out.counter(
            "roaster_events_stored_total",
            "Events newly stored (robot endpoint and the server's own).",
            self.stored.get(),
        );
        out.counter(
            "roaster_events_duplicates_total",
            "Events not stored because their id already was (idempotent resends).",
            self.duplicates.get(),
        );
        out.family(
            "roaster_events_rejected_total",
            "counter",
            "Events rejected at the edge, by reason.",
        );
        for (reason, c) in REJECT_REASONS.iter().zip(&self.rejected) {
            out.sample(
                "roaster_events_rejected_total",
                &[("reason", reason)],
                c.get() as f64,
            );
        }
        out.counter(
            "roaster_events_blackholed_total",
            "Events read and discarded while the events switch is blackholed.",
            self.blackholed.get(),
        );
        out.counter(
            "roaster_events_paused_requests_total",
            "Event requests refused (503) while the events switch is paused.",
            self.paused.get(),
        );
        out.counter(
            "roaster_events_store_errors_total",
            "Event batches the store failed to write.",
            self.store_errors.get(),
        );
        out.histogram(
            "roaster_events_insert_duration_seconds",
            "Latency of one event store insert (a whole batch: one transaction per shard, in parallel).",
            &[],
            &self.insert_seconds,
        );
        out.family(
            "roaster_events_retention_deleted_total",
            "counter",
            "Events deleted by retention.",
        );
        out.sample(
            "roaster_events_retention_deleted_total",
            &[("class", "event")],
            self.retention_deleted.get() as f64,
        );
        out.sample(
            "roaster_events_retention_deleted_total",
            &[("class", "audit")],
            self.retention_audit_deleted.get() as f64,
        );
        out.counter(
            "roaster_events_retention_errors_total",
            "Retention passes over the event store that failed.",
            self.retention_errors.get(),
        );
    }
}

/// Random bits for server-assigned ids: one OS seed, then a counter through splitmix64, so
/// ids within a millisecond never collide and no syscall is made per event.
#[derive(Debug)]
struct IdBits {
    seed: u64,
    counter: AtomicU64,
}

impl IdBits {
    /// `fallback` seeds it when the OS source fails: ids stay unique within the process
    /// (the counter), only less unpredictable.
    fn new(fallback: i64) -> IdBits {
        let mut raw = [0u8; 8];
        if getrandom::fill(&mut raw).is_err() {
            raw = fallback.to_le_bytes();
        }
        IdBits {
            seed: u64::from_le_bytes(raw),
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> u128 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let hi = splitmix64(self.seed ^ n.rotate_left(17));
        (u128::from(hi) << 64) | u128::from(splitmix64(self.seed.wrapping_add(n)))
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Inner {
    store: Arc<dyn EventStore>,
    clock: Arc<dyn Clock>,
    config: EventsConfig,
    limits: EventLimits,
    ids: IdBits,
    metrics: EventMetrics,
}

/// The server's handle on the event store; cheap to clone, shared by both planes.
#[derive(Clone)]
pub struct Events(Arc<Inner>);

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("config", &self.0.config)
            .finish_non_exhaustive()
    }
}

impl Events {
    /// Opens (or creates) the event store (`events.db` and its shard files) in `data_dir`.
    /// Blocking: call it off the async workers.
    pub fn open(
        data_dir: &std::path::Path,
        config: &EventsConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Events, StoreError> {
        let store = store::SqliteStore::open(config.sqlite_config(data_dir.join(EVENTS_DB_FILE)))?;
        if store.shards() != config.sqlite_shards {
            tracing::warn!(
                recorded = store.shards(),
                configured = config.sqlite_shards,
                "the event store keeps the shard count recorded when it was created; [events] sqlite_shards applies only to a new store"
            );
        }
        Ok(Events::with_store(Arc::new(store), config, clock))
    }

    /// A handle over any store (tests, a future PostgreSQL store).
    pub fn with_store(store: Arc<dyn EventStore>, config: &EventsConfig, clock: Arc<dyn Clock>) -> Events {
        let ids = IdBits::new(clock.now().millis() ^ i64::from(std::process::id()));
        Events(Arc::new(Inner {
            store,
            clock,
            limits: config.event_limits(),
            config: config.clone(),
            ids,
            metrics: EventMetrics::default(),
        }))
    }

    /// The store, for queries (call it on a blocking thread).
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.0.store
    }

    /// The `[events]` section this handle was opened with.
    pub fn config(&self) -> &EventsConfig {
        &self.0.config
    }

    /// The edge limits incoming events are checked against.
    pub fn limits(&self) -> &EventLimits {
        &self.0.limits
    }

    /// The counters rendered on `/metrics`.
    pub fn metrics(&self) -> &EventMetrics {
        &self.0.metrics
    }

    /// Validates a client's (or the server's own) input into an [`Event`]: fills in
    /// `received_at` from the clock, `source`, and a time-ordered UUIDv7 id when it has none.
    /// A rejection is counted in `roaster_events_rejected_total`.
    pub fn validate(&self, input: EventInput, source: &str) -> Result<Event, EventError> {
        let arrival = Arrival {
            received_at: self.0.clock.now(),
            source,
            random: self.0.ids.next(),
        };
        input.validate(&arrival, &self.0.limits).inspect_err(|e| {
            self.0.metrics.reject(e);
        })
    }

    /// Stores one event. Blocking: for code on a blocking thread; async code uses
    /// [`Events::record`]. Returns whether it was new or a duplicate of a stored id.
    pub fn record_event(&self, event: Event) -> Result<ItemResult, EventsError> {
        let results = self.record_batch(std::slice::from_ref(&event))?;
        results
            .first()
            .copied()
            .ok_or_else(|| EventsError::Task("store returned no result".into()))
    }

    /// Stores a batch in one transaction (blocking), counting stored, duplicate and failed
    /// events and the insert latency.
    pub fn record_batch(&self, events: &[Event]) -> Result<Vec<ItemResult>, EventsError> {
        let m = &self.0.metrics;
        let started = Instant::now();
        let results = self.0.store.insert_batch(events).inspect_err(|_| {
            m.store_errors.inc();
        })?;
        m.insert_seconds.observe(started.elapsed());
        for r in &results {
            match r {
                ItemResult::Stored => m.stored.inc(),
                ItemResult::Duplicate => m.duplicates.inc(),
            }
        }
        Ok(results)
    }

    /// Stores a batch from async code: the store call runs in `spawn_blocking` on the
    /// caller's runtime (the robot runtime for robot requests, the human one for audit).
    pub async fn record(&self, events: Vec<Event>) -> Result<Vec<ItemResult>, EventsError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.record_batch(&events))
            .await
            .map_err(|e| EventsError::Task(e.to_string()))?
    }

    /// The retention cut-offs at `now`.
    pub fn retention_at(&self, now: model::Timestamp) -> Retention {
        let c = &self.0.config;
        let days = |d: u32| model::Timestamp(now.0.saturating_sub(i64::from(d).saturating_mul(DAY_MS)));
        Retention {
            events_before: days(c.retention_days),
            audit_before: (c.audit_retention_days > 0).then(|| days(c.audit_retention_days)),
        }
    }

    /// One retention pass (blocking): deletes what is older than the configured ages.
    pub fn run_retention(&self) -> Result<store::RetentionReport, StoreError> {
        let cut = self.retention_at(self.0.clock.now());
        let m = &self.0.metrics;
        match self.0.store.delete_older_than(&cut) {
            Ok(report) => {
                m.retention_deleted.add(report.events_deleted);
                m.retention_audit_deleted.add(report.audit_deleted);
                if report.events_deleted + report.audit_deleted > 0 {
                    tracing::info!(
                        events = report.events_deleted,
                        audit = report.audit_deleted,
                        "event retention deleted old events"
                    );
                }
                Ok(report)
            }
            Err(e) => {
                m.retention_errors.inc();
                Err(e)
            }
        }
    }

    /// Runs retention every `retention_interval_ms` until `cancel` fires (first pass right
    /// away). Spawn it on the human runtime; each pass runs on a blocking thread.
    pub async fn retention_loop(self, cancel: tokio_util::sync::CancellationToken) {
        let every = self.0.config.retention_interval_ms;
        if every == 0 {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(every));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.run_retention()).await {
                Ok(Ok(_)) => {}
                Ok(Err(StoreError::Closed)) => return,
                Ok(Err(e)) => tracing::error!(error = %e, "event retention failed"),
                Err(e) => tracing::error!(error = %e, "event retention task failed"),
            }
        }
    }

    /// Closes the store (blocking; see [`EventStore::close`]).
    pub fn close(&self) -> Result<(), StoreError> {
        self.0.store.close()
    }

    /// Renders the event metrics.
    pub fn render_metrics(&self, out: &mut Exposition) {
        self.0.metrics.render(out);
    }
}

// ---------------------------------------------------------------------------------------
// Robot plane: POST /api/v1/events
// ---------------------------------------------------------------------------------------

/// What the robot endpoint needs besides the [`Events`] handle.
#[derive(Clone)]
pub struct RobotEvents {
    /// The event store's handle.
    pub events: Events,
    /// Tokens (the `ingest` scope is required; the token's name becomes `source`).
    pub tokens: Arc<crate::tokens::TokenStore>,
    /// The `events` kill switch.
    pub switch: ingest::SwitchHandle,
    /// `Retry-After` seconds sent with 503 answers.
    pub retry_after_seconds: u64,
}

/// The robot-plane route `POST /api/v1/events`; merge it into the robot router.
///
/// Body: one event object or an array of at most `[events] max_batch_items`, each in the
/// envelope of [`model::event::EventInput`]. Answers (JSON):
/// - 200 `{"stored":N,"duplicates":N,"rejected":N,"blackholed":false,"results":[{"index":0,
///   "id":"…","status":"stored"|"duplicate"},{"index":1,"status":"rejected","reason":"bad_kind",
///   "error":"…"}]}` — a bad item is rejected alone, the others are stored in one transaction;
///   with the switch blackholed, valid items answer `"status":"blackholed"` and nothing is stored;
/// - 400 body not UTF-8 / not JSON / not an object or array; 401 no `ingest` token;
///   413 body over `max_body_bytes` or more items than `max_batch_items`; 415 a
///   `Content-Encoding`; 503 (+`Retry-After`) switch paused, store busy or closing; 500 store failure.
pub fn robot_router(state: RobotEvents) -> axum::Router {
    axum::Router::new()
        .route("/api/v1/events", axum::routing::post(post_events))
        .with_state(state)
}

fn robot_error(status: StatusCode, msg: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": msg }))).into_response()
}

fn retry_later(retry_after: u64, msg: &str) -> Response {
    let mut r = robot_error(StatusCode::SERVICE_UNAVAILABLE, msg);
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token")).then(|| token.trim())
}

/// One item's outcome in the answer.
#[derive(Serialize)]
struct ItemAnswer {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The whole answer of `POST /api/v1/events`.
#[derive(Serialize)]
struct BatchAnswer {
    stored: usize,
    duplicates: usize,
    rejected: usize,
    blackholed: bool,
    results: Vec<ItemAnswer>,
}

/// Decodes, validates and stores one request body (blocking: JSON parsing and the store
/// call run here, off the async workers).
fn ingest_body(
    events: &Events,
    body: &[u8],
    source: &str,
    blackholed: bool,
) -> Result<BatchAnswer, Result<StoreError, EventError>> {
    let m = events.metrics();
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if std::str::from_utf8(body).is_ok() && !matches!(first, Some(b'{' | b'[')) {
        let e = EventError::Json("the body must be an event object or an array of them".into());
        m.reject(&e);
        return Err(Err(e));
    }
    let items = model::event::decode_batch(body, events.limits()).map_err(|e| {
        m.reject(&e);
        Err(e)
    })?;
    let mut answers = Vec::with_capacity(items.len());
    let mut valid: Vec<Event> = Vec::with_capacity(items.len());
    let mut slots: Vec<usize> = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let checked = item
            .inspect_err(|e| m.reject(e))
            .and_then(|input| events.validate(input, source))
            .and_then(|ev| {
                if model::event::is_reserved_kind(&ev.kind) {
                    let e = EventError::ReservedKind(ev.kind.clone());
                    m.reject(&e);
                    Err(e)
                } else {
                    Ok(ev)
                }
            });
        match checked {
            Ok(ev) => {
                answers.push(ItemAnswer {
                    index,
                    id: Some(ev.id.as_str().to_owned()),
                    status: "blackholed",
                    reason: None,
                    error: None,
                });
                slots.push(index);
                valid.push(ev);
            }
            Err(e) => answers.push(ItemAnswer {
                index,
                id: None,
                status: "rejected",
                reason: Some(reject_reason(&e)),
                error: Some(e.to_string()),
            }),
        }
    }
    let rejected = answers.len() - valid.len();
    let (mut stored, mut duplicates) = (0, 0);
    if blackholed {
        m.blackholed.add(valid.len() as u64);
    } else if !valid.is_empty() {
        let results = events.record_batch(&valid).map_err(|e| match e {
            EventsError::Store(s) => Ok(s),
            EventsError::Invalid(e) => Err(e),
            EventsError::Task(t) => Ok(StoreError::Backend {
                op: "insert events",
                source: t.into(),
            }),
        })?;
        for (slot, r) in slots.iter().zip(results) {
            if let Some(a) = answers.get_mut(*slot) {
                a.status = match r {
                    ItemResult::Stored => {
                        stored += 1;
                        "stored"
                    }
                    ItemResult::Duplicate => {
                        duplicates += 1;
                        "duplicate"
                    }
                };
            }
        }
    }
    Ok(BatchAnswer {
        stored,
        duplicates,
        rejected,
        blackholed,
        results: answers,
    })
}

async fn post_events(State(st): State<RobotEvents>, headers: HeaderMap, body: Body) -> Response {
    let identity = bearer(&headers).and_then(|t| st.tokens.identify(t));
    let source = match identity {
        Some((name, scope)) if scope.can_ingest() => name,
        _ => {
            return robot_error(
                StatusCode::UNAUTHORIZED,
                "a token with the ingest scope is required",
            );
        }
    };
    let m = st.events.metrics();
    let switch = st.switch.state();
    if switch == ingest::SwitchState::Paused {
        m.paused.inc();
        return retry_later(st.retry_after_seconds, "ingest source events is paused");
    }
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("?").trim();
        if !enc.is_empty() && !enc.eq_ignore_ascii_case("identity") {
            return robot_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("unsupported content-encoding {enc:?}"),
            );
        }
    }
    let limit = st.events.config().max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        robot_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request body exceeds [events] max_body_bytes ({limit})"),
        )
    };
    if declared.is_some_and(|n| n > limit) {
        return too_large();
    }
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return too_large();
    };
    let events = st.events.clone();
    let blackholed = switch == ingest::SwitchState::Blackholed;
    let job = tokio::task::spawn_blocking(move || ingest_body(&events, &bytes, &source, blackholed)).await;
    match job {
        Ok(Ok(answer)) => (StatusCode::OK, axum::Json(answer)).into_response(),
        Ok(Err(Err(e @ EventError::BatchTooLarge { .. }))) => {
            robot_error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string())
        }
        Ok(Err(Err(e))) => robot_error(StatusCode::BAD_REQUEST, &e.to_string()),
        Ok(Err(Ok(e))) => match e {
            StoreError::Busy { .. } | StoreError::Closed => {
                retry_later(st.retry_after_seconds, &e.to_string())
            }
            StoreError::BatchTooLarge { .. } => robot_error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
            other => {
                tracing::error!(error = %other, "storing events failed");
                robot_error(StatusCode::INTERNAL_SERVER_ERROR, &other.to_string())
            }
        },
        Err(e) => {
            tracing::error!(error = %e, "event ingest task failed");
            robot_error(StatusCode::INTERNAL_SERVER_ERROR, "event ingest task failed")
        }
    }
}

// ---------------------------------------------------------------------------------------
// Human plane: GET /api/v1/events, GET /api/v1/annotations
// ---------------------------------------------------------------------------------------

/// A `400 bad_data` in the human plane's envelope.
fn bad(msg: impl Into<String>) -> crate::human::ApiError {
    crate::human::refuse(StatusCode::BAD_REQUEST, "bad_data", &msg.into())
}

fn store_refusal(e: StoreError) -> crate::human::ApiError {
    match e {
        StoreError::InvalidQuery(_) | StoreError::InvalidCursor => bad(e.to_string()),
        StoreError::Busy { .. } | StoreError::Closed => {
            crate::human::refuse(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e.to_string())
        }
        other => {
            tracing::error!(error = %other, "event query failed");
            crate::human::refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal", &other.to_string())
        }
    }
}

fn parse_ts(key: &str, v: &str) -> Result<model::Timestamp, crate::human::ApiError> {
    query::time::parse_time(v)
        .map(model::Timestamp)
        .ok_or_else(|| bad(format!("{key}: {v:?} is neither RFC 3339 nor unix seconds")))
}

fn non_empty(key: &str, v: &str) -> Result<Option<String>, crate::human::ApiError> {
    if v.is_empty() {
        return Err(bad(format!("{key} must not be empty")));
    }
    Ok(Some(v.to_owned()))
}

/// Parses a label matcher parameter: `NAME OP VALUE` with `OP` one of `=`, `!=`, `=~`, `!~`
/// and `VALUE` a double-quoted string (JSON escapes) or bare text to the end, e.g.
/// `team="db"`, `env=~"prod|staging"`, `owner!=alice`. Names are event label names
/// (`[A-Za-z_][A-Za-z0-9_.-]*`).
pub fn parse_label_matcher(s: &str) -> Result<model::Matcher, String> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        .unwrap_or(s.len());
    let (name, rest) = s.split_at(end);
    if !model::event::is_label_name(name) {
        return Err(format!(
            "label matcher {s:?}: expected NAME=\"VALUE\" (or !=, =~, !~) with NAME matching [A-Za-z_][A-Za-z0-9_.-]*"
        ));
    }
    let rest = rest.trim_start();
    let (op, value) = if let Some(v) = rest.strip_prefix("=~") {
        (model::MatchOp::Regex, v)
    } else if let Some(v) = rest.strip_prefix("!~") {
        (model::MatchOp::NotRegex, v)
    } else if let Some(v) = rest.strip_prefix("!=") {
        (model::MatchOp::NotEqual, v)
    } else if let Some(v) = rest.strip_prefix('=') {
        (model::MatchOp::Equal, v)
    } else {
        return Err(format!(
            "label matcher {s:?}: expected an operator =, !=, =~ or !~ after {name:?}"
        ));
    };
    let value = value.trim();
    let value = if value.starts_with('"') {
        serde_json::from_str::<String>(value)
            .map_err(|e| format!("label matcher {s:?}: bad quoted value: {e}"))?
    } else {
        value.to_owned()
    };
    model::Matcher::new(op, name, value).map_err(|e| format!("label matcher {s:?}: {e}"))
}

/// Builds an [`store::EventQuery`] from `GET /api/v1/events` parameters.
///
/// `from`, `to` (RFC 3339 or unix seconds, as the query API), `kind` (prefix on dot
/// boundaries), `host`, `service`, `label` (repeatable, see [`parse_label_matcher`]; `label[]`
/// is accepted too), `q` (full-text words, all must match; `word*` is a prefix), `limit`
/// (1..=`max_page`, default `default_page`), `cursor` (the previous page's `next_cursor`).
/// Unknown or repeated single-valued parameters are refused.
pub fn parse_event_query(
    params: &[(String, String)],
    config: &EventsConfig,
) -> Result<store::EventQuery, crate::human::ApiError> {
    let mut q = store::EventQuery::default();
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in params {
        let key = k.as_str();
        if !matches!(key, "label" | "label[]") {
            if seen.contains(&key) {
                return Err(bad(format!("parameter {key} given twice")));
            }
            seen.push(key);
        }
        match key {
            "from" => q.from = Some(parse_ts(key, v)?),
            "to" => q.to = Some(parse_ts(key, v)?),
            "kind" => q.kind_prefix = non_empty(key, v)?,
            "host" => q.host = non_empty(key, v)?,
            "service" => q.service = non_empty(key, v)?,
            "q" => q.q = (!v.trim().is_empty()).then(|| v.clone()),
            "cursor" => q.cursor = non_empty(key, v)?,
            "limit" => {
                let n: usize = v
                    .parse()
                    .map_err(|_| bad(format!("limit: {v:?} is not a whole number")))?;
                if n == 0 || n > config.max_page {
                    return Err(bad(format!("limit must be between 1 and {}", config.max_page)));
                }
                q.limit = Some(n);
            }
            "label" | "label[]" => {
                if q.labels.len() >= config.max_label_matchers {
                    return Err(bad(format!(
                        "more than {} label matchers",
                        config.max_label_matchers
                    )));
                }
                q.labels.push(parse_label_matcher(v).map_err(bad)?);
            }
            other => {
                return Err(bad(format!(
                    "unknown parameter {other:?} (expected from, to, kind, host, service, label, q, limit, cursor)"
                )));
            }
        }
    }
    if let (Some(from), Some(to)) = (q.from, q.to)
        && from >= to
    {
        return Err(bad("from must be before to"));
    }
    Ok(q)
}

/// `GET /api/v1/events` (read scope): one page of matching events, newest first.
/// Answer: `{"status":"success","data":{"events":[EVENT…],"next_cursor":"…"|null}}`.
pub(crate) async fn search(State(state): State<crate::human::HumanState>, req: Request) -> Response {
    let params = match crate::human::params(req, 0).await {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let query = match parse_event_query(&params, state.events().config()) {
        Ok(q) => q,
        Err(r) => return r.into_response(),
    };
    let page = state
        .blocking_events(move |events| events.store().query(&query))
        .await;
    match page {
        Ok(Ok(page)) => {
            let body = serde_json::json!({
                "status": "success",
                "data": {"events": page.events, "next_cursor": page.next_cursor},
            });
            axum::Json(body).into_response()
        }
        Ok(Err(e)) => store_refusal(e).into_response(),
        Err(r) => r.into_response(),
    }
}

/// Most a default annotation range spans back from `to`: one day.
const DEFAULT_ANNOTATION_SPAN_MS: i64 = DAY_MS;

/// `GET /api/v1/annotations` (read scope): `from` (default `to` − 24 h), `to` (default now),
/// `host`, `service`, `kind` (prefix). Oldest first, compact:
/// `{"status":"success","data":{"annotations":[{"id","time" (unix ms),"kind","severity",
/// "host"?,"service"?,"summary"}…],"truncated":false}}`.
pub(crate) async fn annotations(State(state): State<crate::human::HumanState>, req: Request) -> Response {
    let params = match crate::human::params(req, 0).await {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let now = state.now();
    let mut from = None;
    let mut q = store::AnnotationQuery {
        to: now,
        ..store::AnnotationQuery::default()
    };
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in &params {
        let key = k.as_str();
        if seen.contains(&key) {
            return bad(format!("parameter {key} given twice")).into_response();
        }
        seen.push(key);
        let r = match key {
            "from" => parse_ts(key, v).map(|t| from = Some(t)),
            "to" => parse_ts(key, v).map(|t| q.to = t),
            "host" => non_empty(key, v).map(|h| q.host = h),
            "service" => non_empty(key, v).map(|h| q.service = h),
            "kind" => non_empty(key, v).map(|h| q.kind_prefix = h),
            other => Err(bad(format!(
                "unknown parameter {other:?} (expected from, to, host, service, kind)"
            ))),
        };
        if let Err(e) = r {
            return e.into_response();
        }
    }
    q.from = from.unwrap_or(model::Timestamp(
        q.to.0.saturating_sub(DEFAULT_ANNOTATION_SPAN_MS),
    ));
    if q.from >= q.to {
        return bad("from must be before to").into_response();
    }
    let result = state
        .blocking_events(move |events| events.store().annotations(&q))
        .await;
    match result {
        Ok(Ok(a)) => {
            let rows: Vec<serde_json::Value> = a
                .rows
                .into_iter()
                .map(|r| {
                    let mut o = serde_json::json!({
                        "id": r.id.as_str(),
                        "time": r.time.0,
                        "kind": r.kind,
                        "severity": r.severity,
                        "summary": r.summary,
                    });
                    if let Some(map) = o.as_object_mut() {
                        if let Some(h) = r.host {
                            map.insert("host".into(), h.into());
                        }
                        if let Some(s) = r.service {
                            map.insert("service".into(), s.into());
                        }
                    }
                    o
                })
                .collect();
            let body = serde_json::json!({
                "status": "success",
                "data": {"annotations": rows, "truncated": a.truncated},
            });
            axum::Json(body).into_response()
        }
        Ok(Err(e)) => store_refusal(e).into_response(),
        Err(r) => r.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_limits_follow_config() {
        let c = EventsConfig::default();
        c.validate().unwrap();
        assert_eq!(c.event_limits().max_batch_items, 1000);
        assert_eq!(c.event_limits().max_payload_bytes, 65536);
        let mut bad = c.clone();
        bad.default_page = 2000;
        assert_eq!(bad.validate().unwrap_err().0, "default_page");
        let mut bad = c.clone();
        bad.max_batch_items = 0;
        assert_eq!(bad.validate().unwrap_err().0, "max_batch_items");
        for shards in [0, store::MAX_SHARDS + 1] {
            let mut bad = c.clone();
            bad.sqlite_shards = shards;
            assert_eq!(bad.validate().unwrap_err().0, "sqlite_shards");
        }
        let path = std::path::PathBuf::from("events.db");
        assert_eq!(c.sqlite_config(path.clone()).shards, 2);
        assert_eq!(
            c.sqlite_config(path.clone()).background_checkpoint,
            Some(Duration::from_secs(1))
        );
        let mut on_writer = c;
        on_writer.sqlite_checkpoint_interval_ms = 0;
        assert_eq!(on_writer.sqlite_config(path).background_checkpoint, None);
        on_writer.sqlite_checkpoint_interval_ms = 60_001;
        assert_eq!(
            on_writer.validate().unwrap_err().0,
            "sqlite_checkpoint_interval_ms"
        );
    }

    #[test]
    fn id_bits_do_not_repeat() {
        let ids = IdBits::new(0);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(ids.next()));
        }
    }

    #[test]
    fn retention_cutoffs_keep_audit_forever_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(model::ManualClock::new(model::Timestamp(400 * DAY_MS)));
        let c = EventsConfig {
            retention_days: 10,
            ..EventsConfig::default()
        };
        let ev = Events::open(dir.path(), &c, clock).unwrap();
        let cut = ev.retention_at(model::Timestamp(400 * DAY_MS));
        assert_eq!(cut.events_before, model::Timestamp(390 * DAY_MS));
        assert_eq!(cut.audit_before, None);
        ev.close().unwrap();
        ev.close().unwrap();
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn label_matcher_syntax_table() {
        // (input, name, op, value) or an error
        let ok: &[(&str, &str, model::MatchOp, &str)] = &[
            (r#"team="db""#, "team", model::MatchOp::Equal, "db"),
            ("team=db", "team", model::MatchOp::Equal, "db"),
            (
                r#"env=~"prod|staging""#,
                "env",
                model::MatchOp::Regex,
                "prod|staging",
            ),
            (r#"owner!="alice""#, "owner", model::MatchOp::NotEqual, "alice"),
            (r#"app.name!~"x.*""#, "app.name", model::MatchOp::NotRegex, "x.*"),
            (r#"q = "a \"b\"""#, "q", model::MatchOp::Equal, "a \"b\""),
            ("empty=", "empty", model::MatchOp::Equal, ""),
        ];
        for (input, name, op, value) in ok {
            let m = parse_label_matcher(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(
                (m.name.as_str(), m.op, m.value.as_str()),
                (*name, *op, *value),
                "{input}"
            );
        }
        for bad in [
            "",
            "=x",
            "9team=x",
            "team",
            "team<x",
            r#"team="unterminated"#,
            "env=~\"(\"",
        ] {
            assert!(parse_label_matcher(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn event_query_params_table() {
        let c = EventsConfig::default();
        let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
        };
        let q = parse_event_query(
            &p(&[
                ("from", "2026-11-21T00:00:00Z"),
                ("to", "1795300000"),
                ("kind", "deploy"),
                ("host", "web1"),
                ("label", r#"team="db""#),
                ("label[]", "env=~prod.*"),
                ("q", "nginx restart"),
                ("limit", "5"),
            ]),
            &c,
        )
        .unwrap();
        assert_eq!(q.from, Some(model::Timestamp(1_795_219_200_000)));
        assert_eq!(q.to, Some(model::Timestamp(1_795_300_000_000)));
        assert_eq!(q.kind_prefix.as_deref(), Some("deploy"));
        assert_eq!(q.labels.len(), 2);
        assert_eq!(q.limit, Some(5));
        for bad in [
            vec![("limit", "0")],
            vec![("limit", "1001")],
            vec![("limit", "ten")],
            vec![("from", "yesterday")],
            vec![("from", "20"), ("to", "10")],
            vec![("host", "")],
            vec![("host", "a"), ("host", "b")],
            vec![("nope", "1")],
            vec![("label", "9=x")],
        ] {
            assert!(parse_event_query(&p(&bad), &c).is_err(), "{bad:?} should fail");
        }
    }
}
