//! The traits ingest consumes: where points go ([`SampleSink`]) and who may send them over
//! HTTP ([`TokenCheck`]). The server implements both (over tsdb and its token store).

use model::{Point, SeriesId, SeriesKey};

/// What storage did with a batch of points.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Points stored.
    pub accepted: usize,
    /// Points refused because they are older than storage accepts (counted as `too_old`).
    pub too_old: usize,
}

/// Why storage could not take a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Storage cannot write right now (disk full, WAL failure, shutting down); retryable.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Storage refused this series key (for example it breaks a storage-side rule).
    #[error("series rejected by storage: {0}")]
    Rejected(String),
}

/// Storage as ingest sees it.
///
/// All methods block and are called only from ingest's own threads (writer threads, UDP
/// readers and blocking-pool jobs), never directly from an async task.
pub trait SampleSink: Send + Sync + 'static {
    /// The id of an existing series, without creating it.
    fn lookup(&self, key: &SeriesKey) -> Option<SeriesId>;
    /// The id of a series, creating it when new. Ingest checks its cardinality limits first.
    fn resolve(&self, key: &SeriesKey) -> Result<SeriesId, SinkError>;
    /// How many series storage holds.
    fn series_count(&self) -> usize;
    /// How many series storage holds under one metric name.
    fn series_count_for_name(&self, name: &str) -> usize;
    /// Stores points of resolved series; with `durable`, returns only once they are fsynced.
    fn write(&self, points: &[Point], durable: bool) -> Result<WriteOutcome, SinkError>;
}

/// Authentication of HTTP ingest.
pub trait TokenCheck: Send + Sync + 'static {
    /// Whether this bearer token carries the `ingest` scope.
    fn allows_ingest(&self, bearer_token: &str) -> bool;
}
