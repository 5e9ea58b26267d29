//! [`Db`]: open and recover, resolve series, append, wait for durability, select, close.
//!
//! Locks, always taken in this order (never the reverse): the WAL append guard
//! (`wal.writer`) → `index` → one head shard (`crate::head::Head`) → `sealed`; at most one
//! head shard at a time. `append` holds the WAL guard for one whole batch and, inside it,
//! takes the write lock of each head shard the batch touches once (samples grouped by shard,
//! batch order kept within a shard), so per series WAL order equals head apply order and
//! replay rebuilds exactly the same head (last write wins depends on order); a concurrent
//! reader may see a batch half applied (some shards done), never a series half applied.
//! Readers take the index lock once per query, then per series one shard read lock and the
//! `sealed` read lock, one after the other (see `Db::read_series` for why that is
//! consistent with seals). No lock a reader needs is held for O(head): the waits are
//! exported as `roaster_storage_lock_wait_seconds` (`crate::locks`).
//!
//! Directory layout under `dir`: `LOCK` (held with an exclusive file lock while open, so
//! two processes never share a WAL), `wal/` (segments, see `wal.rs`), `series.log` (the
//! series registry at the last checkpoint, see `series_log.rs`), `blocks/` (see
//! `blocks.rs` and [`crate::block`]), `quarantine/` (blocks that failed verification).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use model::telemetry::{Counter, Exposition};
use model::{Clock, Matcher, Point, SeriesId, SeriesKey};
use parking_lot::{Mutex, RwLock};

use crate::block::LastPage;
use crate::blocks::{self, Block};
use crate::error::{DbError, NotReady};
use crate::head::{HEAD_SHARDS, Head, HeadLimits, merge_last_wins};
use crate::index::Index;
use crate::locks::{self, LockWaits};
use crate::options::Options;
use crate::rollup::Resolution;
use crate::series_log;
use crate::wal::{
    self, REC_SAMPLES, REC_SERIES, Wal, WalOptions, begin_record, end_record, get_uvarint, put_uvarint,
    unzigzag, zigzag,
};

/// What happened to one `append` batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendReceipt {
    /// Samples written to the WAL and the head.
    pub accepted: usize,
    /// Samples older than the out-of-order window, rejected and counted.
    pub too_old: usize,
    /// Samples naming a series id this database never issued, rejected and counted.
    pub unknown_series: usize,
    /// Pass to [`Db::wait_durable`] to wait until this batch survives a crash.
    pub wal_seq: u64,
}

/// The samples of one series in a time range: sorted by timestamp, one value per timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    /// The series id.
    pub id: SeriesId,
    /// The series key.
    pub key: SeriesKey,
    /// Timestamps, ascending, unique (UTC ms).
    pub timestamps: Vec<i64>,
    /// Values, parallel to `timestamps`.
    pub values: Vec<f64>,
}

/// A point-in-time summary of the engine, for `/metrics` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbStats {
    /// Series registered.
    pub series: usize,
    /// Samples held in the head.
    pub head_points: u64,
    /// Approximate heap bytes of head sample data.
    pub head_bytes: u64,
    /// WAL bytes appended but not yet written by the committer.
    pub wal_pending_bytes: u64,
    /// fsyncs of WAL segments so far.
    pub wal_fsyncs: u64,
    /// Bytes written to WAL segments so far.
    pub wal_bytes_written: u64,
    /// Samples accepted so far.
    pub appended_points: u64,
    /// Samples rejected as older than the out-of-order window.
    pub too_old_points: u64,
    /// Samples rejected for naming an unknown series.
    pub unknown_series_points: u64,
    /// Highest WAL sequence number covered by an fsync.
    pub durable_seq: u64,
    /// Records replayed from the WAL at open.
    pub replayed_records: u64,
    /// Bytes cut from a torn WAL tail at open.
    pub wal_truncated_bytes: u64,
    /// Live blocks (all resolutions).
    pub blocks: usize,
    /// Bytes of live blocks on disk.
    pub block_bytes: u64,
    /// Samples in live raw blocks.
    pub block_points: u64,
    /// Blocks moved to `quarantine/` since open.
    pub quarantined: u64,
}

#[derive(Debug, Default)]
pub(crate) struct DbMetrics {
    pub(crate) quarantined: Counter,
    pub(crate) blocks_written: Counter,
    pub(crate) blocks_removed_by_retention: Counter,
    pub(crate) seals: Counter,
    appended: Counter,
    too_old: Counter,
    unknown_series: Counter,
    series_created: Counter,
    replayed_records: Counter,
    wal_truncated_bytes: Counter,
}

/// Blocks on disk: what readers see besides the head (and the head shards' frozen data,
/// `crate::head::Shard::frozen`).
#[derive(Debug, Default)]
pub(crate) struct Sealed {
    /// Live blocks, ascending by seq.
    pub blocks: Vec<Arc<Block>>,
}

/// The engine. Shared as `Arc<Db>`; every method takes `&self`.
pub struct Db {
    pub(crate) dir: PathBuf,
    pub(crate) opts: Options,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) wal: Arc<Wal>,
    pub(crate) index: RwLock<Index>,
    pub(crate) head: Head,
    /// Lock order: a head shard before `sealed` when both are held.
    pub(crate) sealed: RwLock<Sealed>,
    /// Storage lock waits, by lock and operation.
    pub(crate) lock_waits: LockWaits,
    /// Newest sample timestamp accepted (or replayed); the out-of-order window is measured
    /// back from `max(now, max_seen)`.
    pub(crate) max_seen: AtomicI64,
    closed: AtomicBool,
    /// Serialises seals, snapshots and retention.
    pub(crate) maintenance: Mutex<()>,
    /// When set, the background maintenance thread skips its rounds (the server's
    /// `compaction` kill switch); `compact_now` still runs when asked.
    pub(crate) maintenance_paused: AtomicBool,
    /// The next block seq.
    pub(crate) next_seq: AtomicU64,
    pub(crate) metrics: DbMetrics,
    background: Mutex<Option<crate::seal::Background>>,
    /// Holds an exclusive `flock` on `<dir>/LOCK` for the life of the `Db`.
    _lock: std::fs::File,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

pub(crate) const SERIES_LOG: &str = "series.log";

impl Db {
    /// Opens (creating if needed) the database in `dir` and recovers it: loads the series
    /// registry, replays the WAL (truncating a torn tail) and starts the committer thread.
    pub fn open(dir: &Path, opts: Options, clock: Arc<dyn Clock>) -> Result<Arc<Db>, DbError> {
        let wal_dir = dir.join("wal");
        std::fs::create_dir_all(&wal_dir).map_err(DbError::io(format!("create {}", wal_dir.display())))?;
        std::fs::create_dir_all(dir).map_err(DbError::io(format!("create {}", dir.display())))?;
        let lock_path = dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(DbError::io(format!("open {}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(DbError::Locked(dir.to_owned())),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(DbError::io(format!("lock {}", lock_path.display()))(e));
            }
        }
        let blocks_dir = dir.join("blocks");
        std::fs::create_dir_all(&blocks_dir)
            .map_err(DbError::io(format!("create {}", blocks_dir.display())))?;
        let opened = blocks::open_all(&blocks_dir, &dir.join("quarantine"), opts.block_duration_ms)?;
        let mut index = Index::default();
        series_log::load(&dir.join(SERIES_LOG), &mut index)?;
        let mut head = Head::default();
        head.grow_to(index.len());
        let limits = head_limits(&opts);
        let mut max_seen = i64::MIN;
        let mut unknown = 0u64;
        let report = wal::replay(&wal_dir, |typ, payload| {
            match typ {
                REC_SERIES => {
                    let mut pos = 0;
                    let id = get_uvarint(payload, &mut pos);
                    let key = payload.get(pos..).and_then(SeriesKey::decode);
                    let (Some(id), Some(key)) = (id, key) else {
                        return Err(DbError::WalCorrupt {
                            path: wal_dir.clone(),
                            offset: 0,
                            reason: "undecodable series record".into(),
                        });
                    };
                    index
                        .insert_recovered(SeriesId(id), key)
                        .map_err(|reason| DbError::WalCorrupt {
                            path: wal_dir.clone(),
                            offset: 0,
                            reason,
                        })?;
                    head.grow_to(index.len());
                }
                REC_SAMPLES => {
                    decode_samples(payload, |id, ts, v| match head.series_mut(id) {
                        Some(s) => {
                            s.push(ts, v, limits);
                            max_seen = max_seen.max(ts);
                        }
                        None => unknown += 1,
                    })
                    .map_err(|()| DbError::WalCorrupt {
                        path: wal_dir.clone(),
                        offset: 0,
                        reason: "undecodable sample record".into(),
                    })?;
                }
                _ => {}
            }
            Ok(())
        })?;
        if unknown > 0 {
            tracing::warn!(
                samples = unknown,
                "WAL samples referenced unknown series and were skipped."
            );
        }
        let wal = Wal::start(
            &wal_dir,
            report.last_index,
            WalOptions {
                fsync: opts.fsync,
                segment_bytes: opts.wal_segment_bytes,
                flush_bytes: opts.wal_flush_bytes,
                max_backlog_bytes: opts.max_wal_backlog_bytes,
            },
        )?;
        let metrics = DbMetrics::default();
        metrics.quarantined.add(opened.quarantined);
        metrics.replayed_records.add(report.records);
        let next_seq = opened.blocks.iter().map(|b| b.seq()).max().map_or(1, |s| s + 1);
        for b in &opened.blocks {
            max_seen = max_seen.max(b.reader.meta().max_t);
        }
        metrics.wal_truncated_bytes.add(report.truncated_bytes);
        tracing::info!(
            series = index.len(),
            records = report.records,
            segments = report.segments,
            truncated_bytes = report.truncated_bytes,
            "Recovered the time-series database."
        );
        let db = Arc::new(Db {
            dir: dir.to_owned(),
            opts,
            clock,
            wal,
            index: RwLock::new(index),
            head,
            sealed: RwLock::new(Sealed {
                blocks: opened.blocks,
            }),
            lock_waits: LockWaits::default(),
            max_seen: AtomicI64::new(max_seen),
            closed: AtomicBool::new(false),
            maintenance: Mutex::new(()),
            maintenance_paused: AtomicBool::new(false),
            next_seq: AtomicU64::new(next_seq),
            metrics,
            background: Mutex::new(None),
            _lock: lock,
        });
        if let Some(interval) = db.opts.maintenance_interval {
            *db.background.lock() = Some(crate::seal::Background::spawn(&db, interval)?);
        }
        Ok(db)
    }

    /// Pauses (`true`) or resumes the background maintenance thread: sealing, retention and
    /// compaction rounds are skipped while paused, so the head and the WAL grow until it
    /// resumes. Explicit calls such as [`Db::compact_now`] are not affected.
    pub fn set_maintenance_paused(&self, paused: bool) {
        self.maintenance_paused.store(paused, Ordering::Release);
    }

    /// Whether background maintenance is paused.
    pub fn maintenance_paused(&self) -> bool {
        self.maintenance_paused.load(Ordering::Acquire)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<(), DbError> {
        if self.closed.load(Ordering::Acquire) {
            Err(DbError::Closed)
        } else {
            Ok(())
        }
    }

    /// The id of `key`, creating the series if it is new. Creation is logged to the WAL and
    /// becomes durable with the next commit (before any sample of it can be).
    pub fn resolve(&self, key: &SeriesKey) -> Result<SeriesId, DbError> {
        if let Some(id) = self.index.read().lookup(key) {
            return Ok(id);
        }
        self.check_open()?;
        let mut w = self.wal.lock_for_append();
        let mut ix = locks::write(&self.index, &self.lock_waits.index_create);
        if let Some(id) = ix.lookup(key) {
            return Ok(id);
        }
        let id = ix.insert(key.clone());
        // readers of the index wait only for the insert; the WAL guard (still held) keeps
        // appends and seals out until the head has the series too, and a reader that finds
        // the id before that finds no samples for it
        drop(ix);
        let start = begin_record(&mut w.buf, REC_SERIES);
        put_uvarint(&mut w.buf, id.0);
        key.encode(&mut w.buf);
        end_record(&mut w.buf, start);
        w.seq += 1;
        self.head.push_series();
        self.metrics.series_created.inc();
        self.wal.after_append(&w);
        Ok(id)
    }

    /// The id of `key` if the series exists.
    pub fn lookup(&self, key: &SeriesKey) -> Option<SeriesId> {
        self.index.read().lookup(key)
    }

    /// Number of series registered.
    pub fn series_count(&self) -> usize {
        self.index.read().len()
    }

    /// Number of series with metric name `name` (the ingest side enforces cardinality with it).
    pub fn series_count_for_name(&self, name: &str) -> usize {
        self.index.read().count_for_name(name)
    }

    /// Appends a batch: samples of unknown series or older than the out-of-order window are
    /// rejected and counted; the rest go to the WAL (buffered) and the head. Returns once the
    /// batch is readable; call [`Db::wait_durable`] with the receipt's `wal_seq` to wait for
    /// durability. Blocks while the WAL backlog exceeds `max_wal_backlog_bytes`.
    pub fn append(&self, points: &[Point]) -> Result<AppendReceipt, DbError> {
        self.check_open()?;
        if let Some(f) = self.wal.failure() {
            return Err(DbError::WalFailed(f));
        }
        let limits = head_limits(&self.opts);
        let mut receipt = AppendReceipt::default();
        let mut w = self.wal.lock_for_append();
        let reference = self
            .clock
            .now()
            .millis()
            .max(self.max_seen.load(Ordering::Relaxed));
        let cutoff = reference.saturating_sub(self.opts.ooo_window_ms);
        let mut newest = i64::MIN;
        // exact: series are only added under the WAL guard, which this holds
        let known = self.head.len() as u64;
        let accept = |p: &Point| p.series.0 < known && p.ts >= cutoff;
        let shard_of = |p: &Point| (p.series.0 % HEAD_SHARDS as u64) as usize;
        let mut per_shard = [0usize; HEAD_SHARDS];
        {
            let crate::wal::Pending { buf, seq, order } = &mut *w;
            // at most 10 + 10 + 8 bytes per sample: one reservation per batch
            buf.reserve(points.len().saturating_mul(28).saturating_add(16));
            let start = begin_record(buf, REC_SAMPLES);
            let mut prev_ts = 0i64;
            for p in points {
                if p.series.0 >= known {
                    receipt.unknown_series += 1;
                    continue;
                }
                if p.ts < cutoff {
                    receipt.too_old += 1;
                    continue;
                }
                if let Some(n) = per_shard.get_mut(shard_of(p)) {
                    *n += 1;
                }
                put_uvarint(buf, p.series.0);
                put_uvarint(buf, zigzag(p.ts.wrapping_sub(prev_ts)));
                buf.extend_from_slice(&p.value.to_bits().to_le_bytes());
                prev_ts = p.ts;
                newest = newest.max(p.ts);
                receipt.accepted += 1;
            }
            if receipt.accepted == 0 {
                buf.truncate(start);
            } else {
                end_record(buf, start);
                *seq += 1;
                // group by shard (a counting sort, stable: batch order within a shard), then
                // apply shard by shard, each under its own lock held for its samples only
                let mut next = [0usize; HEAD_SHARDS];
                let mut at = 0;
                for (n, c) in next.iter_mut().zip(per_shard.iter()) {
                    *n = at;
                    at += c;
                }
                order.clear();
                order.resize(receipt.accepted, 0);
                for (i, p) in points.iter().enumerate() {
                    if accept(p)
                        && let Some(n) = next.get_mut(shard_of(p))
                    {
                        if let Some(slot) = order.get_mut(*n) {
                            *slot = i;
                        }
                        *n += 1;
                    }
                }
                let mut from = 0;
                for (shard, count) in self.head.shards().iter().zip(per_shard.iter()) {
                    let to = from + count;
                    if to > from {
                        let mut shard = locks::write(shard, &self.lock_waits.head_append);
                        for p in order
                            .get(from..to)
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|&i| points.get(i))
                        {
                            let pos = (p.series.0 / HEAD_SHARDS as u64) as usize;
                            if let Some(s) = shard.series.get_mut(pos) {
                                s.push(p.ts, p.value, limits);
                            }
                        }
                    }
                    from = to;
                }
            }
        }
        receipt.wal_seq = w.seq;
        self.max_seen.fetch_max(newest, Ordering::Relaxed);
        self.wal.after_append(&w);
        drop(w);
        self.metrics.appended.add(receipt.accepted as u64);
        self.metrics.too_old.add(receipt.too_old as u64);
        self.metrics.unknown_series.add(receipt.unknown_series as u64);
        Ok(receipt)
    }

    /// Blocks until an fsync covers `wal_seq` (group commit: one fsync covers every batch
    /// appended before it).
    pub fn wait_durable(&self, wal_seq: u64) -> Result<(), DbError> {
        self.wal.wait_durable(wal_seq)
    }

    /// Streams the samples of the series matching `matchers` in `[start_ms, end_ms]` (both
    /// inclusive), one series at a time in series-key order; series without samples in the
    /// range are skipped. A selector whose every matcher matches the empty value is
    /// [`DbError::EmptySelector`].
    pub fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Result<Select<'_>, DbError> {
        let ids = {
            let ix = locks::read(&self.index, &self.lock_waits.index_read);
            let mut ids = ix.select_ids(matchers, true)?;
            ix.sort_by_key(&mut ids);
            ids
        };
        Ok(Select::new(self, ids, start_ms, end_ms))
    }

    /// [`Db::select`] in id order instead of key order: no sort of the matching series by
    /// key (13 % of a `rate` query over 30k series), and consecutive reads land in the same
    /// block pages (records lie in id order). For callers whose result does not depend on
    /// the order (aggregations, which sort or group afterwards).
    pub fn select_in_id_order(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Select<'_>, DbError> {
        let ids = locks::read(&self.index, &self.lock_waits.index_read).select_ids(matchers, true)?;
        Ok(Select::new(self, ids, start_ms, end_ms))
    }

    pub(crate) fn read_series(
        &self,
        id: u64,
        start: i64,
        end: i64,
        out: &mut Vec<(i64, f64)>,
        scratch: &mut ReadScratch,
    ) -> Result<(), DbError> {
        out.clear();
        let ReadScratch {
            head_part,
            ts,
            vals,
            part,
            merged,
            pages,
        } = scratch;
        head_part.clear();
        // The shard first, then the block list, never both at once. Consistent with a seal:
        // it moves data from a shard's head to the shard's frozen set in one step under the
        // shard's write lock, and clears the frozen sets only after it published the blocks
        // holding that data; so a read that finds the frozen set gone finds the blocks.
        let frozen = match self.head.shard_of(id) {
            Some((shard, pos)) => {
                let shard = locks::read(shard, &self.lock_waits.head_read);
                if let Some(s) = shard.series.get(pos) {
                    s.read_into(start, end, head_part);
                }
                shard.frozen.clone().map(|f| (f, pos))
            }
            None => None,
        };
        {
            // Held while this series' records are read (microseconds): cheaper than cloning
            // the block list per series, and a publish waits for one series at most.
            let sealed = locks::read(&self.sealed, &self.lock_waits.blocks_read);
            for b in &sealed.blocks {
                let m = b.reader.meta();
                if m.resolution != Resolution::Raw || m.max_t < start || m.min_t > end {
                    continue;
                }
                ts.clear();
                vals.clear();
                b.reader
                    .read_walk(SeriesId(id), start, end, ts, vals, pages.slot(m.seq))
                    .map_err(|e| DbError::Block {
                        block: b.path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                if ts.is_empty() {
                    continue;
                }
                part.clear();
                part.extend(ts.iter().copied().zip(vals.iter().copied()));
                merge_into(out, part, merged);
            }
        }
        if let Some(s) = frozen.as_ref().and_then(|(f, pos)| f.get(*pos)) {
            part.clear();
            s.read_into(start, end, part);
            merge_into(out, part, merged);
        }
        merge_into(out, head_part, merged);
        Ok(())
    }

    /// Keys of the series matching `matchers` (all series when empty), at most `limit`, in
    /// id order.
    pub fn series(&self, matchers: &[Matcher], limit: usize) -> Vec<SeriesKey> {
        let ix = self.index.read();
        let Ok(ids) = ix.select_ids(matchers, false) else {
            return Vec::new();
        };
        ids.into_iter()
            .filter_map(|id| ix.key(SeriesId(id)).cloned())
            .take(limit)
            .collect()
    }

    /// Label names (including `__name__`) used by the series matching `matchers` (all when
    /// empty), sorted, at most `limit`.
    pub fn label_names(&self, matchers: &[Matcher], limit: usize) -> Vec<String> {
        self.index.read().label_names(matchers, limit)
    }

    /// Values of label `name` among the series matching `matchers` (all when empty), sorted,
    /// at most `limit`.
    pub fn label_values(&self, name: &str, matchers: &[Matcher], limit: usize) -> Vec<String> {
        self.index.read().label_values(name, matchers, limit)
    }

    /// Like [`Db::series`], but only series holding a sample in `[start_ms, end_ms]` (see
    /// [`Db::with_data_in`]).
    pub fn series_in_range(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Vec<SeriesKey> {
        let ids = self.matching_ids(matchers);
        let ids = self.with_data_in(ids, start_ms, end_ms);
        let ix = self.index.read();
        ids.into_iter()
            .filter_map(|id| ix.key(SeriesId(id)).cloned())
            .take(limit)
            .collect()
    }

    /// Like [`Db::label_names`], over the matching series holding a sample in
    /// `[start_ms, end_ms]` only (see [`Db::with_data_in`]).
    pub fn label_names_in_range(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Vec<String> {
        let ids = self.with_data_in(self.matching_ids(matchers), start_ms, end_ms);
        self.index.read().label_names_of(&ids, limit)
    }

    /// Like [`Db::label_values`], over the matching series holding a sample in
    /// `[start_ms, end_ms]` only (see [`Db::with_data_in`]).
    pub fn label_values_in_range(
        &self,
        name: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Vec<String> {
        let ids = self.with_data_in(self.matching_ids(matchers), start_ms, end_ms);
        self.index.read().label_values_of(name, &ids, limit)
    }

    /// Ids of the series matching `matchers` (all when empty), ascending.
    fn matching_ids(&self, matchers: &[Matcher]) -> Vec<u64> {
        self.index.read().select_ids(matchers, false).unwrap_or_default()
    }

    /// The `ids` (kept in order) whose series hold a sample in `[start_ms, end_ms]`
    /// (inclusive; a stale marker counts), exactly, over the head, head data being sealed and
    /// the raw blocks. Cheap where it can be: a unit (the head, a block) whose first-to-last
    /// span for the series misses the range is skipped, and one whose first or last sample
    /// lies in the range answers at once; samples are read only when the span strictly
    /// contains the range (a gap may cover it). A block that fails to read counts as holding
    /// data. Rollup blocks are not consulted, so data left only in rollups after raw
    /// retention does not count.
    pub fn with_data_in(&self, ids: Vec<u64>, start_ms: i64, end_ms: i64) -> Vec<u64> {
        // None: no sample in range; Some(true): one for sure; Some(false): read to know
        let span_says = |span: Option<(i64, i64)>| match span {
            Some((lo, hi)) if lo <= end_ms && hi >= start_ms => Some(lo >= start_ms || hi <= end_ms),
            _ => None,
        };
        let mut buf = Vec::new();
        let mut mem_has = |s: &crate::head::MemSeries| match span_says(s.min_t().zip(s.max_t())) {
            None => false,
            Some(true) => true,
            Some(false) => {
                buf.clear();
                s.read_into(start_ms, end_ms, &mut buf);
                !buf.is_empty()
            }
        };
        // one shard at a time, then the block list (the lock order of `Db::read_series`)
        let in_head: Vec<bool> = ids
            .iter()
            .map(|id| match self.head.shard_of(*id) {
                Some((shard, pos)) => {
                    let shard = locks::read(shard, &self.lock_waits.head_read);
                    shard.series.get(pos).is_some_and(&mut mem_has)
                        || shard
                            .frozen
                            .as_ref()
                            .and_then(|f| f.get(pos))
                            .is_some_and(&mut mem_has)
                }
                None => false,
            })
            .collect();
        let blocks = {
            let sealed = locks::read(&self.sealed, &self.lock_waits.blocks_read);
            sealed
                .blocks
                .iter()
                .filter(|b| {
                    let m = b.reader.meta();
                    m.resolution == Resolution::Raw && m.max_t >= start_ms && m.min_t <= end_ms
                })
                .cloned()
                .collect::<Vec<Arc<Block>>>()
        };
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        let mut block_has = |b: &Block, id: SeriesId| match span_says(
            b.reader.series_range(id).map(|(lo, hi, _)| (lo, hi)),
        ) {
            None => false,
            Some(true) => true,
            Some(false) => {
                ts.clear();
                vals.clear();
                b.reader.read(id, start_ms, end_ms, &mut ts, &mut vals).is_err() || !ts.is_empty()
            }
        };
        ids.into_iter()
            .zip(in_head)
            .filter(|(id, in_head)| *in_head || blocks.iter().any(|b| block_has(b, SeriesId(*id))))
            .map(|(id, _)| id)
            .collect()
    }

    /// A point-in-time summary.
    pub fn stats(&self) -> DbStats {
        let series = self.index.read().len();
        let (head_points, head_bytes) = self.head.shards().iter().fold((0u64, 0u64), |acc, shard| {
            shard.read().series.iter().fold(acc, |(p, b), s| {
                (p + s.points() as u64, b + s.heap_bytes() as u64)
            })
        });
        let sealed = self.sealed.read();
        DbStats {
            series,
            head_points,
            head_bytes,
            wal_pending_bytes: self.wal.pending_bytes(),
            wal_fsyncs: self.wal.metrics.fsyncs.get(),
            wal_bytes_written: self.wal.metrics.bytes_written.get(),
            appended_points: self.metrics.appended.get(),
            too_old_points: self.metrics.too_old.get(),
            unknown_series_points: self.metrics.unknown_series.get(),
            durable_seq: self.wal.durable_seq(),
            replayed_records: self.metrics.replayed_records.get(),
            wal_truncated_bytes: self.metrics.wal_truncated_bytes.get(),
            blocks: sealed.blocks.len(),
            block_bytes: sealed.blocks.iter().map(|b| b.reader.disk_bytes()).sum(),
            block_points: sealed
                .blocks
                .iter()
                .filter(|b| b.resolution() == Resolution::Raw)
                .map(|b| b.reader.meta().points)
                .sum(),
            quarantined: self.metrics.quarantined.get(),
        }
    }

    /// Renders the engine's self-metrics (Prometheus text).
    pub fn render_metrics(&self, out: &mut Exposition) {
        out.gauge(
            "roaster_tsdb_maintenance_paused",
            "1 while background sealing, retention and compaction are paused (the compaction switch).",
            if self.maintenance_paused() { 1.0 } else { 0.0 },
        );
        let m = &self.wal.metrics;
        out.histogram(
            "roaster_tsdb_wal_fsync_seconds",
            "Time spent in fsync of WAL segments.",
            &[],
            &m.fsync_seconds,
        );
        out.histogram(
            "roaster_tsdb_append_lock_wait_seconds",
            "Time appends waited for the WAL append lock (including backpressure).",
            &[],
            &m.append_lock_wait,
        );
        self.lock_waits.render(out, &m.append_lock_wait);
        out.counter("roaster_tsdb_wal_fsyncs_total", "WAL fsyncs.", m.fsyncs.get());
        out.counter(
            "roaster_tsdb_wal_bytes_written_total",
            "Bytes written to WAL segments.",
            m.bytes_written.get(),
        );
        out.gauge(
            "roaster_tsdb_wal_pending_bytes",
            "WAL bytes appended but not yet written.",
            m.pending_bytes.load(Ordering::Relaxed) as f64,
        );
        out.counter(
            "roaster_tsdb_appended_points_total",
            "Samples accepted.",
            self.metrics.appended.get(),
        );
        out.family(
            "roaster_tsdb_rejected_points_total",
            "counter",
            "Samples rejected, by reason.",
        );
        out.sample(
            "roaster_tsdb_rejected_points_total",
            &[("reason", "too_old")],
            self.metrics.too_old.get() as f64,
        );
        out.sample(
            "roaster_tsdb_rejected_points_total",
            &[("reason", "unknown_series")],
            self.metrics.unknown_series.get() as f64,
        );
        out.gauge(
            "roaster_tsdb_series",
            "Series registered.",
            self.index.read().len() as f64,
        );
        out.counter(
            "roaster_tsdb_series_created_total",
            "Series created since start.",
            self.metrics.series_created.get(),
        );
        out.counter(
            "roaster_tsdb_blocks_quarantined_total",
            "Blocks that failed verification and were moved to quarantine/.",
            self.metrics.quarantined.get(),
        );
        out.counter(
            "roaster_tsdb_blocks_written_total",
            "Blocks written by seals and compactions (raw and rollup).",
            self.metrics.blocks_written.get(),
        );
        out.counter(
            "roaster_tsdb_blocks_expired_total",
            "Blocks dropped by retention (age or disk size).",
            self.metrics.blocks_removed_by_retention.get(),
        );
        out.counter(
            "roaster_tsdb_seals_total",
            "Seals of head data into blocks.",
            self.metrics.seals.get(),
        );
        let (blocks, bytes) = {
            let sealed = self.sealed.read();
            (
                sealed.blocks.len(),
                sealed.blocks.iter().map(|b| b.reader.disk_bytes()).sum::<u64>(),
            )
        };
        out.gauge("roaster_tsdb_blocks", "Live blocks on disk.", blocks as f64);
        out.gauge(
            "roaster_tsdb_block_bytes",
            "Bytes of live blocks on disk.",
            bytes as f64,
        );
    }

    /// Whether the engine can take writes now.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.closed.load(Ordering::Acquire) {
            return Err(NotReady::Closed);
        }
        if let Some(f) = self.wal.failure() {
            return Err(NotReady::NotWritable(f));
        }
        let pending = self.wal.pending_bytes();
        if pending > self.opts.max_wal_backlog_bytes {
            return Err(NotReady::WalBacklog {
                pending_bytes: pending,
                limit_bytes: self.opts.max_wal_backlog_bytes,
            });
        }
        Ok(())
    }

    /// Writes and fsyncs everything pending, stops the background threads and refuses
    /// further writes. Idempotent.
    pub fn close(&self) -> Result<(), DbError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some(bg) = self.background.lock().take() {
            bg.stop();
        }
        self.wal.stop(true)
    }

    /// Stops the background threads WITHOUT writing what is pending, as a crash would; only
    /// data that `wait_durable` acknowledged is then guaranteed to be recovered. For tests.
    pub fn crash_for_test(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            if let Some(bg) = self.background.lock().take() {
                bg.stop();
            }
            let _ = self.wal.stop(false);
        }
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "Closing the time-series database failed.");
        }
    }
}

/// Merges the sorted run `newer` into the sorted run `acc` (newer wins on equal timestamps).
fn merge_into(acc: &mut Vec<(i64, f64)>, newer: &[(i64, f64)], scratch: &mut Vec<(i64, f64)>) {
    if newer.is_empty() {
        return;
    }
    if acc.is_empty() {
        acc.extend_from_slice(newer);
        return;
    }
    scratch.clear();
    merge_last_wins(acc, newer, scratch);
    std::mem::swap(acc, scratch);
}

pub(crate) fn head_limits(opts: &Options) -> HeadLimits {
    HeadLimits {
        chunk_points: opts.head_chunk_points.max(1),
        max_ooo_points: opts.max_ooo_points_per_series.max(1),
    }
}

fn decode_samples(payload: &[u8], mut f: impl FnMut(u64, i64, f64)) -> Result<(), ()> {
    let mut pos = 0;
    let mut prev_ts = 0i64;
    while pos < payload.len() {
        let id = get_uvarint(payload, &mut pos).ok_or(())?;
        let ts = prev_ts.wrapping_add(unzigzag(get_uvarint(payload, &mut pos).ok_or(())?));
        let bits = payload.get(pos..pos + 8).ok_or(())?;
        pos += 8;
        let mut b = [0u8; 8];
        b.copy_from_slice(bits);
        f(id, ts, f64::from_bits(u64::from_le_bytes(b)));
        prev_ts = ts;
    }
    Ok(())
}

/// Part `shard` of `shards` of `ids`: a contiguous run, parts disjoint and covering all.
pub(crate) fn shard_ids(
    ids: std::vec::IntoIter<u64>,
    shard: usize,
    shards: usize,
) -> std::vec::IntoIter<u64> {
    if shards <= 1 {
        return ids;
    }
    let ids: Vec<u64> = ids.collect();
    let n = ids.len();
    let at = |k: usize| n.saturating_mul(k.min(shards)) / shards;
    ids.get(at(shard)..at(shard.saturating_add(1)))
        .unwrap_or_default()
        .to_vec()
        .into_iter()
}

/// The streaming result of [`Db::select`]: one [`SeriesData`] at a time, in series-key order.
/// Memory is bounded by one series, not by the result.
pub struct Select<'a> {
    db: &'a Db,
    ids: std::vec::IntoIter<u64>,
    start_ms: i64,
    end_ms: i64,
    buf: Vec<(i64, f64)>,
    scratch: ReadScratch,
    /// Also yield series without raw samples in the range (rollup reads: their buckets may
    /// come from rollup blocks alone).
    yield_empty: bool,
}

/// Buffers one walk over many series reuses (so a read allocates nothing per series once
/// they have grown), and the last verified page of each block it reads.
#[derive(Debug, Default)]
pub(crate) struct ReadScratch {
    head_part: Vec<(i64, f64)>,
    ts: Vec<i64>,
    vals: Vec<f64>,
    part: Vec<(i64, f64)>,
    merged: Vec<(i64, f64)>,
    pages: BlockPages,
}

/// The last page read of up to [`BlockPages::SLOTS`] blocks (a series' range usually
/// spans one or two), chosen by block seq.
#[derive(Debug, Default)]
struct BlockPages([LastPage; BlockPages::SLOTS]);

impl BlockPages {
    const SLOTS: usize = 4;

    fn slot(&mut self, block_seq: u64) -> &mut LastPage {
        let i = (block_seq % Self::SLOTS as u64) as usize;
        // `i < SLOTS`: always in range.
        &mut self.0[i]
    }
}

impl<'a> Select<'a> {
    fn new(db: &'a Db, ids: Vec<u64>, start_ms: i64, end_ms: i64) -> Select<'a> {
        Select {
            db,
            ids: ids.into_iter(),
            start_ms,
            end_ms,
            buf: Vec::new(),
            scratch: ReadScratch::default(),
            yield_empty: false,
        }
    }

    /// Visits the remaining series like the iterator, without allocating per series: `f`
    /// gets each series' key and samples (`ts` ascending, `vals` parallel), valid during the
    /// call. Stops at the first error: `f`'s, or a read's turned into `E` by `read_error`.
    pub fn visit<E>(
        mut self,
        read_error: impl Fn(DbError) -> E,
        mut f: impl FnMut(&SeriesKey, &[i64], &[f64]) -> Result<(), E>,
    ) -> Result<(), E> {
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        for id in self.ids.by_ref() {
            self.db
                .read_series(id, self.start_ms, self.end_ms, &mut self.buf, &mut self.scratch)
                .map_err(&read_error)?;
            if self.buf.is_empty() && !self.yield_empty {
                continue;
            }
            let Some(key) = self.db.index.read().key(SeriesId(id)).cloned() else {
                continue;
            };
            ts.clear();
            vals.clear();
            ts.extend(self.buf.iter().map(|p| p.0));
            vals.extend(self.buf.iter().map(|p| p.1));
            f(&key, &ts, &vals)?;
        }
        Ok(())
    }

    pub(crate) fn db(&self) -> &'a Db {
        self.db
    }

    /// Makes the iterator yield series with no raw samples in the range too.
    pub(crate) fn yield_empty(mut self) -> Select<'a> {
        self.yield_empty = true;
        self
    }

    /// Keeps only part `shard` of `shards` (0-based) of the matching series: a contiguous
    /// run in key order, so parts are disjoint, cover all and can be read on different
    /// threads. `shards <= 1` keeps everything; `shard >= shards` keeps nothing.
    pub fn shard(mut self, shard: usize, shards: usize) -> Select<'a> {
        self.ids = shard_ids(std::mem::take(&mut self.ids), shard, shards);
        self
    }

    /// The ids still to visit, in key order.
    pub(crate) fn into_ids(self) -> std::vec::IntoIter<u64> {
        self.ids
    }
}

impl Iterator for Select<'_> {
    type Item = Result<SeriesData, DbError>;

    fn next(&mut self) -> Option<Self::Item> {
        for id in self.ids.by_ref() {
            if let Err(e) =
                self.db
                    .read_series(id, self.start_ms, self.end_ms, &mut self.buf, &mut self.scratch)
            {
                return Some(Err(e));
            }
            if self.buf.is_empty() && !self.yield_empty {
                continue;
            }
            let Some(key) = self.db.index.read().key(SeriesId(id)).cloned() else {
                continue;
            };
            return Some(Ok(SeriesData {
                id: SeriesId(id),
                key,
                timestamps: self.buf.iter().map(|p| p.0).collect(),
                values: self.buf.iter().map(|p| p.1).collect(),
            }));
        }
        None
    }
}
