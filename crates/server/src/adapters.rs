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

impl TsdbReader {
    /// The rollup resolution worth reading for windows of `range_ms`: the coarsest whose
    /// bucket fits in a window (hour buckets for `[1h]` and longer), none below a minute.
    fn summary_resolution(range_ms: i64) -> Option<tsdb::rollup::Resolution> {
        use tsdb::rollup::Resolution;
        [Resolution::Hour, Resolution::Minute]
            .into_iter()
            .find(|r| range_ms >= r.step_ms())
    }

    fn summaries(
        &self,
        matchers: &[Matcher],
        windows: &query::Windows,
        shard: usize,
        shards: usize,
        visit: &mut query::SummaryVisit<'_>,
    ) -> Result<(), QueryError> {
        let Some((start, end)) = windows.span() else {
            return Ok(());
        };
        let Some(res) = TsdbReader::summary_resolution(windows.range()) else {
            return self.select_shard(matchers, start, end, shard, shards, &mut |k, ts, vals| {
                visit(k, &[], ts, vals)
            });
        };
        let keep = |bucket: i64, last_ts: i64| windows.is_clean(bucket, last_ts);
        let mut buckets = Vec::new();
        for series in self
            .db
            .select_summaries(matchers, start, end, res, &keep)
            .map_err(storage_error)?
            .shard(shard, shards)
        {
            let s = series.map_err(storage_error)?;
            buckets.clear();
            buckets.extend(s.buckets.iter().map(|p| query::Bucket {
                start: p.ts,
                last_ts: p.last_ts,
                min: p.min,
                max: p.max,
                sum: p.sum,
                count: p.count,
                last: p.last,
            }));
            visit(&s.key, &buckets, &s.timestamps, &s.values)?;
        }
        Ok(())
    }
}

/// Hands every series of `select` that has samples to `visit`.
fn visit_nonempty(select: tsdb::Select<'_>, visit: &mut query::Visit<'_>) -> Result<(), QueryError> {
    select.visit(storage_error, |key, ts, vals| {
        if ts.is_empty() {
            return Ok(());
        }
        visit(key, ts, vals)
    })
}

impl SeriesReader for TsdbReader {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        visit: &mut query::Visit<'_>,
    ) -> Result<(), QueryError> {
        self.select_shard(matchers, start_ms, end_ms, 0, 1, visit)
    }

    /// Storage rollups where they are exact (see `tsdb::summary`); hour buckets for windows
    /// of an hour or more, minute buckets for shorter ones.
    fn select_summaries(
        &self,
        matchers: &[Matcher],
        windows: &query::Windows,
        visit: &mut query::SummaryVisit<'_>,
    ) -> Result<(), QueryError> {
        self.summaries(matchers, windows, 0, 1, visit)
    }

    fn select_summaries_shard(
        &self,
        matchers: &[Matcher],
        windows: &query::Windows,
        shard: usize,
        shards: usize,
        visit: &mut query::SummaryVisit<'_>,
    ) -> Result<(), QueryError> {
        self.summaries(matchers, windows, shard, shards, visit)
    }

    fn select_shard(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        shard: usize,
        shards: usize,
        visit: &mut query::Visit<'_>,
    ) -> Result<(), QueryError> {
        let select = self
            .db
            .select(matchers, start_ms, end_ms)
            .map_err(storage_error)?;
        visit_nonempty(select.shard(shard, shards), visit)
    }

    /// Id order ([`tsdb::Db::select_in_id_order`]): no sort by key, and reads share pages.
    fn select_shard_unordered(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        shard: usize,
        shards: usize,
        visit: &mut query::Visit<'_>,
    ) -> Result<(), QueryError> {
        let select = self
            .db
            .select_in_id_order(matchers, start_ms, end_ms)
            .map_err(storage_error)?;
        visit_nonempty(select.shard(shard, shards), visit)
    }

    /// Series whose keys match and that hold a sample in `[start_ms, end_ms]`
    /// ([`tsdb::Db::with_data_in`]: exact; Prometheus 2.42 judges per chunk). The API's
    /// "all time" default range skips the time check, so series without any sample are
    /// listed then.
    fn series(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<SeriesKey>, QueryError> {
        if all_time(start_ms, end_ms) {
            return Ok(self.db.series(matchers, limit));
        }
        Ok(self.db.series_in_range(matchers, start_ms, end_ms, limit))
    }

    /// Label names of the series [`TsdbReader::series`] would list.
    fn label_names(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, QueryError> {
        if all_time(start_ms, end_ms) {
            return Ok(self.db.label_names(matchers, limit));
        }
        Ok(self.db.label_names_in_range(matchers, start_ms, end_ms, limit))
    }

    /// Values of `name` among the series [`TsdbReader::series`] would list.
    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, QueryError> {
        if all_time(start_ms, end_ms) {
            return Ok(self.db.label_values(name, matchers, limit));
        }
        Ok(self
            .db
            .label_values_in_range(name, matchers, start_ms, end_ms, limit))
    }
}

/// Whether `[start_ms, end_ms]` is the API's "all time" (no `start`, no `end`), where the
/// look-ups need no time check.
fn all_time(start_ms: i64, end_ms: i64) -> bool {
    start_ms <= query::api::MIN_TIME_MS && end_ms >= query::api::MAX_TIME_MS
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

#[cfg(test)]
mod tests {
    use super::*;
    use model::{Label, ManualClock, Timestamp};
    use query::api::{MAX_TIME_MS, MIN_TIME_MS};

    #[test]
    fn series_and_labels_honour_start_and_end() {
        let dir = tempfile::tempdir().unwrap();
        let opts = tsdb::Options {
            maintenance_interval: None,
            ..tsdb::Options::default()
        };
        let db = tsdb::Db::open(dir.path(), opts, Arc::new(ManualClock::new(Timestamp(1_000_000)))).unwrap();
        let key = |n: &str, kind: &str| SeriesKey::new(n, vec![Label::new("kind", kind)]).unwrap();
        for (k, from) in [(key("early", "e"), 0), (key("late", "l"), 600_000)] {
            let id = db.resolve(&k).unwrap();
            let batch: Vec<Point> = (0..10)
                .map(|i| Point {
                    series: id,
                    ts: from + i * 15_000,
                    value: 1.0,
                })
                .collect();
            db.append(&batch).unwrap();
        }
        db.resolve(&key("never", "n")).unwrap();
        let r = TsdbReader::new(db);
        let names = |start, end| -> Vec<String> {
            r.series(&[], start, end, 100)
                .unwrap()
                .iter()
                .map(|k| k.name().to_owned())
                .collect()
        };
        // no range: every series, even one without samples (the index alone)
        assert_eq!(names(MIN_TIME_MS, MAX_TIME_MS), ["early", "late", "never"]);
        assert_eq!(names(0, 135_000), ["early"]);
        assert_eq!(names(135_000, 600_000), ["early", "late"]);
        assert_eq!(names(135_001, 599_999), Vec::<String>::new());
        assert_eq!(names(MIN_TIME_MS, 0), ["early"]);
        assert_eq!(
            r.label_values("kind", &[], 600_000, MAX_TIME_MS, 100).unwrap(),
            ["l"]
        );
        assert_eq!(
            r.label_names(&[], 700_000, 800_000, 100).unwrap(),
            ["__name__", "kind"]
        );
        assert!(r.label_names(&[], 900_000, 950_000, 100).unwrap().is_empty());
    }
}
