//! Roaster's relational state. For now: events (deploys, config runs, package changes,
//! heartbeat pings, the audit trail), kept for search and for drawing on graphs.
//!
//! - [`EventStore`] is the storage boundary the server and the API call. It is synchronous
//!   (callers run it on a blocking thread) and speaks only `model` types and the plain data
//!   types here: no SQLite type appears in it, so a PostgreSQL implementation can follow
//!   without touching callers.
//! - [`SqliteStore`] implements it over N SQLite shard files, one writer each (see [`sqlite`]
//!   for the layout, the on-disk schema, the connection layout and the migration history).
//!
//! Contracts every implementation keeps:
//! - **Idempotent inserts.** An event whose id is already stored is reported
//!   [`ItemResult::Duplicate`] and stores nothing, not even a changed copy: resending a
//!   batch is safe and costs about what a fresh batch costs.
//! - **Stable pages.** [`EventStore::query`] orders by time, newest first, and events with
//!   the same time in a fixed total order the store defines (for [`SqliteStore`]: shard,
//!   higher first, then newest-stored first in that shard; positions are never reused while
//!   the event is stored), and pages with a keyset cursor: an event seen on one page never
//!   shows on a later one and none is skipped, however many events arrive between pages (an
//!   event arriving with a time older than the cursor shows on a later page, where it
//!   belongs; one arriving at the cursor's time shows on a later page exactly when the tie
//!   order puts it after the cursor).
//! - **Append-only audit.** Events of kind `audit.*` are never updated, and the only way they
//!   are deleted is retention, which has its own age limit ([`Retention::audit_before`],
//!   `None` = keep forever) separate from other events'.
//! - **Bounded work.** Batches, pages, annotation lists, matcher and search-term counts and
//!   retention chunks all have named limits ([`QueryLimits`], [`sqlite::SqliteConfig`]).
//!
//! Full-text search ([`EventQuery::q`]) covers kind, subject, summary, labels (`name=value`)
//! and the string values inside the payload. The query text is a list of words, all of which
//! must match (a word ending in `*` matches as a prefix); it is never passed to the search
//! engine as syntax, so no input can make it fail to parse.

pub mod sqlite;

mod fts;

pub use sqlite::{MAX_SHARDS, SqliteConfig, SqliteStore, Synchronous, shard_of, shard_path};

use model::event::{Event, EventId, Severity};
use model::{Matcher, Timestamp};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The query asked for something the store does not allow (bad limit, matcher, words).
    /// Not retryable; a caller error (HTTP 400).
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The cursor was not one this store handed out (or one from before an upgrade changed
    /// the cursor format). Not retryable (HTTP 400).
    #[error(
        "invalid cursor: not one this server handed out (cursors from an older version do not resume; start again from the first page)"
    )]
    InvalidCursor,
    /// A batch was larger than the configured limit. Not retryable (HTTP 413).
    #[error("batch of {count} events exceeds the limit of {max}")]
    BatchTooLarge {
        /// Events in the batch.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The database is busy or locked beyond the busy timeout. Retryable (HTTP 503).
    #[error("database busy during {op}")]
    Busy {
        /// What the store was doing.
        op: &'static str,
    },
    /// A stored row could not be read back. Not retryable; needs an operator.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The store was closed ([`EventStore::close`]); nothing more is written. Not retryable
    /// (HTTP 503: the server is shutting down).
    #[error("event store is closed")]
    Closed,
    /// The store's files do not form the layout recorded at creation (a shard file missing,
    /// one recording another layout) or the asked-for layout is out of range. Not retryable;
    /// needs an operator.
    #[error("store layout: {0}")]
    Layout(String),
    /// Any other database failure (I/O, disk full, schema migration). Not retryable.
    #[error("database error during {op}: {source}")]
    Backend {
        /// What the store was doing.
        op: &'static str,
        /// The driver's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Busy { .. })
    }
}

/// What happened to one event of a batch, in batch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemResult {
    /// Newly stored.
    Stored,
    /// An event with this id was already stored (earlier or earlier in the same batch);
    /// nothing was written.
    Duplicate,
}

/// Bounds on queries; the defaults follow the public API (page ≤ 1,000, default 100).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryLimits {
    /// Page size when the query names none.
    pub default_page: usize,
    /// Largest page a query may ask for.
    pub max_page: usize,
    /// Most annotations one request returns (the rest are reported as truncated).
    pub max_annotations: usize,
    /// Most label matchers in one query.
    pub max_label_matchers: usize,
    /// Most words in a full-text query.
    pub max_search_words: usize,
    /// Longest full-text query, in bytes.
    pub max_search_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> QueryLimits {
        QueryLimits {
            default_page: 100,
            max_page: 1000,
            max_annotations: 5000,
            max_label_matchers: 16,
            max_search_words: 16,
            max_search_bytes: 1024,
        }
    }
}

/// A search over stored events. Every filter is optional and they all must hold.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Earliest event time, inclusive.
    pub from: Option<Timestamp>,
    /// Latest event time, exclusive.
    pub to: Option<Timestamp>,
    /// Kind prefix on dot boundaries: `deploy` matches `deploy` and `deploy.finished`, not
    /// `deployment.x`. A trailing dot is ignored.
    pub kind_prefix: Option<String>,
    /// Exact host.
    pub host: Option<String>,
    /// Exact service.
    pub service: Option<String>,
    /// Label matchers (`=`, `!=`, `=~`, `!~`; regexes anchored at both ends). An absent
    /// label has the value `""`, as in PromQL.
    pub labels: Vec<Matcher>,
    /// Full-text words (see the crate doc).
    pub q: Option<String>,
    /// Page size; [`QueryLimits::default_page`] when `None`, at most [`QueryLimits::max_page`].
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of events, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The events, newest first; equal times newest-stored first.
    pub events: Vec<Event>,
    /// Where the next page starts; `None` when this page is the last.
    pub next_cursor: Option<String>,
}

/// The events a graph should draw over a time range.
#[derive(Debug, Clone, Default)]
pub struct AnnotationQuery {
    /// Earliest event time, inclusive.
    pub from: Timestamp,
    /// Latest event time, exclusive.
    pub to: Timestamp,
    /// Exact host.
    pub host: Option<String>,
    /// Exact service.
    pub service: Option<String>,
    /// Kind prefix, as in [`EventQuery::kind_prefix`].
    pub kind_prefix: Option<String>,
}

/// A compact event, as a graph draws it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// The event's id (for a link to the full event).
    pub id: EventId,
    /// When it happened.
    pub time: Timestamp,
    /// What happened.
    pub kind: String,
    /// How much it matters.
    pub severity: Severity,
    /// The host, if any.
    pub host: Option<String>,
    /// The service, if any.
    pub service: Option<String>,
    /// The one-line summary.
    pub summary: String,
}

/// Annotations, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// At most [`QueryLimits::max_annotations`] rows, oldest first; equal times in the order
    /// they were stored.
    pub rows: Vec<Annotation>,
    /// Whether more events matched than were returned (the newest were left out).
    pub truncated: bool,
}

/// What retention deletes: everything strictly older than the cut-offs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Non-audit events with `time` before this are deleted.
    pub events_before: Timestamp,
    /// Audit events (`audit.*`) with `time` before this are deleted; `None` keeps them all.
    pub audit_before: Option<Timestamp>,
}

/// What one retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Non-audit events deleted.
    pub events_deleted: u64,
    /// Audit events deleted.
    pub audit_deleted: u64,
}

/// The event storage boundary. Implementations are shared between threads; every method
/// blocks, so async callers use `spawn_blocking` (or a dedicated thread).
pub trait EventStore: Send + Sync {
    /// Stores a batch, skipping ids already stored; one result per event, in order. Not
    /// atomic: an implementation may store it in several transactions (for [`SqliteStore`],
    /// one per shard), so a failed call may have stored part of the batch, and readers may
    /// see part of a batch before the rest. What holds: nothing is acknowledged (`Ok`) before
    /// it is committed, and a resend is idempotent (the stored part answers
    /// [`ItemResult::Duplicate`]), so a client that resends until it gets an answer loses
    /// nothing and stores nothing twice.
    fn insert_batch(&self, events: &[Event]) -> Result<Vec<ItemResult>, StoreError>;

    /// One page of events matching `query`, newest first.
    fn query(&self, query: &EventQuery) -> Result<Page, StoreError>;

    /// Compact events for a graph's time range, oldest first.
    fn annotations(&self, query: &AnnotationQuery) -> Result<Annotations, StoreError>;

    /// Deletes events older than the cut-offs (retention, the only deletion there is).
    fn delete_older_than(&self, retention: &Retention) -> Result<RetentionReport, StoreError>;

    /// How many events are stored.
    fn count(&self) -> Result<u64, StoreError>;

    /// Flushes everything committed into the main file (for SQLite: a WAL checkpoint) and
    /// refuses further writes with [`StoreError::Closed`]; reads keep working. Idempotent.
    /// Committed batches are durable without it; this only leaves the files tidy.
    fn close(&self) -> Result<(), StoreError>;
}
