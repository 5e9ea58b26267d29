//! Adapters from `tsdb` to the traits its consumers own: [`TsdbSink`] implements
//! `ingest::SampleSink` and [`TsdbReader`] implements `query::SeriesReader`. They live here, in
//! the composition root, so `ingest` and `query` never depend on `tsdb` (and a remote store
//! could take its place).
//!
//! Both are blocking: ingest calls the sink from its writer threads, and the human plane calls
//! the reader inside `spawn_blocking`.

use std::sync::Arc;
use std::time::Duration;

use ingest::{SampleSink, SinkError, WriteOutcome};
use model::{Matcher, Point, SeriesId, SeriesKey};
use query::{QueryError, SeriesReader};

use crate::config::{FsyncMode, StorageConfig};

/// Maps `[storage]` onto the engine's options.
#[allow(
    clippy::needless_update,
    reason = "options tsdb adds later keep their defaults until [storage] gains a key for them"
)]
pub fn tsdb_options(cfg: &StorageConfig) -> tsdb::Options {
    let fsync = match cfg.fsync_policy {
        FsyncMode::EveryBatch => tsdb::FsyncPolicy::EveryBatch,
        FsyncMode::Interval => tsdb::FsyncPolicy::Interval(Duration::from_millis(cfg.fsync_interval_ms)),
    };
    tsdb::Options {
        fsync,
        ooo_window_ms: cfg.ooo_window_ms,
        block_duration_ms: cfg.block_duration_ms,
        retention: tsdb::Retention {
            raw_ms: cfg.retention_raw_ms,
            minute_ms: cfg.retention_minute_ms,
            hour_ms: cfg.retention_hour_ms,
            max_disk_bytes: (cfg.max_disk_bytes > 0).then_some(cfg.max_disk_bytes),
        },
        wal_segment_bytes: cfg.wal_segment_bytes,
        max_wal_backlog_bytes: cfg.max_wal_backlog_bytes,
        wal_flush_bytes: cfg.wal_flush_bytes,
        head_chunk_points: cfg.head_chunk_points,
        max_ooo_points_per_series: cfg.max_ooo_points_per_series,
        maintenance_interval: (cfg.maintenance_interval_ms > 0)
            .then(|| Duration::from_millis(cfg.maintenance_interval_ms)),
        ..tsdb::Options::default()
    }
}

/// Storage as ingest's sink.
#[derive(Clone)]
pub struct TsdbSink {
    db: Arc<tsdb::Db>,
}

impl TsdbSink {
    /// A sink writing into `db`.
    pub fn new(db: Arc<tsdb::Db>) -> TsdbSink {
        TsdbSink { db }
    }
}

fn unavailable(e: tsdb::DbError) -> SinkError {
    SinkError::Unavailable(e.to_string())
}

impl SampleSink for TsdbSink {
    fn lookup(&self, key: &SeriesKey) -> Option<SeriesId> {
        self.db.lookup(key)
    }

    fn resolve(&self, key: &SeriesKey) -> Result<SeriesId, SinkError> {
        self.db.resolve(key).map_err(unavailable)
    }

    fn series_count(&self) -> usize {
        self.db.series_count()
    }

    fn series_count_for_name(&self, name: &str) -> usize {
        self.db.series_count_for_name(name)
    }

    fn write(&self, points: &[Point], durable: bool) -> Result<WriteOutcome, SinkError> {
        let receipt = self.db.append(points).map_err(unavailable)?;
        if durable {
            self.db.wait_durable(receipt.wal_seq).map_err(unavailable)?;
        }
        Ok(WriteOutcome {
            accepted: receipt.accepted,
            too_old: receipt.too_old,
        })
    }
}

/// Storage as the query engine's reader.
#[derive(Clone)]
pub struct TsdbReader {
    db: Arc<tsdb::Db>,
}

impl TsdbReader {
    /// A reader over `db`.
    pub fn new(db: Arc<tsdb::Db>) -> TsdbReader {
        TsdbReader { db }
    }
}

fn storage_error(e: tsdb::DbError) -> QueryError {
    QueryError::Storage(e.to_string())
}

impl SeriesReader for TsdbReader {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        visit: &mut query::Visit<'_>,
    ) -> Result<(), QueryError> {
        for series in self
            .db
            .select(matchers, start_ms, end_ms)
            .map_err(storage_error)?
        {
            let s = series.map_err(storage_error)?;
            if s.timestamps.is_empty() {
                continue;
            }
            visit(&s.key, &s.timestamps, &s.values)?;
        }
        Ok(())
    }

    /// Series whose keys match; the engine's index has no time dimension, so `start_ms` and
    /// `end_ms` do not narrow the answer (Prometheus narrows by block, which is coarse too).
    fn series(
        &self,
        matchers: &[Matcher],
        _start_ms: i64,
        _end_ms: i64,
        limit: usize,
    ) -> Result<Vec<SeriesKey>, QueryError> {
        Ok(self.db.series(matchers, limit))
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        _start_ms: i64,
        _end_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, QueryError> {
        Ok(self.db.label_names(matchers, limit))
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        _start_ms: i64,
        _end_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, QueryError> {
        Ok(self.db.label_values(name, matchers, limit))
    }
}

/// The compaction report as JSON for `POST /api/v1/admin/compact`.
pub fn compact_report_json(report: &tsdb::CompactReport) -> serde_json::Value {
    serde_json::json!({
        "points_sealed": report.points_sealed,
        "blocks_written": report.blocks_written,
        "blocks_replaced": report.blocks_replaced,
        "blocks_expired": report.blocks_expired,
        "wal_segments_removed": report.wal_segments_removed,
    })
}

/// A consistent copy of the data directory at `dest` (which must not exist yet or be empty):
/// the engine's own snapshot into `dest/tsdb`, plus the token, switch and heartbeat files, so a restore
/// is "point `--data-dir` at the copy".
pub fn snapshot(db: &tsdb::Db, data_dir: &std::path::Path, dest: &std::path::Path) -> Result<(), String> {
    if dest.exists()
        && std::fs::read_dir(dest)
            .map_err(|e| e.to_string())?
            .next()
            .is_some()
    {
        return Err(format!("{} exists and is not empty", dest.display()));
    }
    std::fs::create_dir_all(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    db.snapshot(&dest.join(crate::TSDB_DIR))
        .map_err(|e| e.to_string())?;
    for name in [
        crate::tokens::TOKENS_FILE,
        crate::SWITCHES_FILE,
        crate::heartbeat::HEARTBEATS_FILE,
    ] {
        let from = data_dir.join(name);
        if from.exists() {
            let bytes = std::fs::read(&from).map_err(|e| format!("{}: {e}", from.display()))?;
            let to = dest.join(name);
            crate::tokens::write_atomic(&to, &bytes).map_err(|e| format!("{}: {e}", to.display()))?;
        }
    }
    Ok(())
}
