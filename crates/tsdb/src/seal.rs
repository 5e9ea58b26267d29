//! Sealing head data into blocks (checkpoint), compaction on demand, retention, snapshots,
//! rollup reads and the background maintenance thread.
//!
//! A seal of everything older than `cutoff`:
//! 1. under the WAL append guard and the head write lock: split the old data off every
//!    series into a *frozen* set (still readable), cut the WAL (fsync + new segment `N`),
//!    and re-log the data that stays in the head into segment `N` (so segments before `N`
//!    hold nothing that is not about to be in a block)
//! 2. without locks: for every window touched, merge the window's existing raw blocks with
//!    the frozen data (frozen wins: it is newer) and write a new raw block with a new `seq`
//! 3. publish: swap the window's old blocks for the new ones and drop the frozen set, in one
//!    step under the `sealed` write lock; delete the old block directories, rollup blocks
//!    before raw ones (a crash part way leaves two raw blocks for the window, which is how
//!    opening recognises the old rollup blocks as superseded and removes them)
//! 4. write `series.log`, wait until the re-logged data is durable, delete WAL segments `< N`
//!
//! Rollups (decision: `docs/decisions/2026-11-21-when-rollups-are-written.md`): when a
//! window seals, its hour rollup block is written from the window's merged raw samples, and
//! its minute rollup block too when that block is smaller than
//! [`MINUTE_ROLLUP_MAX_SHARE_PERCENT`] of the raw block (dense or sub-second data);
//! otherwise the minute rollups are materialised when the raw block leaves retention. Only
//! resolutions whose bucket divides `block_duration_ms` are written at seal (so no bucket
//! straddles two windows). A re-seal of a window replaces its rollup blocks with ones
//! computed from the new merged raw data. Reads compute buckets from raw samples wherever
//! raw data is still held and use rollup blocks only for windows without a raw block, so a
//! stale or missing rollup block never changes an answer. Known limit: new samples for a
//! window whose raw block already left retention (only possible with an out-of-order window
//! longer than raw retention) get rollup blocks of their own, combined with the old ones on
//! read; a sample overwriting an old one there is counted twice.
//!
//! A crash at any point leaves either the old blocks plus the full WAL, or the new blocks
//! plus (possibly) WAL records whose samples they already hold; replaying those yields the
//! same values (last write wins on identical data), so nothing acknowledged is lost.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use model::{Matcher, SeriesId, SeriesKey};
use parking_lot::{Condvar, Mutex};

use crate::block::{BlockOptions, BlockReader, BlockWriter};
use crate::blocks::{Block, block_dir};
use crate::db::{Db, SERIES_LOG, head_limits};
use crate::error::DbError;
use crate::head::MemSeries;
use crate::rollup::{self, Resolution, RollupPoint};
use crate::series_log;
use crate::wal::{REC_SAMPLES, begin_record, end_record, put_uvarint, zigzag};

/// Samples per re-logged WAL record, so records stay bounded.
const RELOG_RECORD_POINTS: usize = 65_536;

/// What [`Db::compact_now`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Samples moved from the head into blocks.
    pub points_sealed: u64,
    /// Blocks written (raw and rollup).
    pub blocks_written: usize,
    /// Blocks replaced by the new ones.
    pub blocks_replaced: usize,
    /// Blocks dropped by retention.
    pub blocks_expired: usize,
    /// WAL segments deleted after the checkpoint.
    pub wal_segments_removed: usize,
}

/// The rollup points of one series (see [`Db::select_rollup`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RollupSeries {
    /// The series id.
    pub id: SeriesId,
    /// The series key.
    pub key: SeriesKey,
    /// Points sorted by bucket start.
    pub points: Vec<RollupPoint>,
}

fn block_err(path: &Path) -> impl FnOnce(crate::block::BlockError) -> DbError + '_ {
    move |e| DbError::Block {
        block: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Minute rollups are kept at seal only when their block is smaller than this share (in
/// percent) of the raw block they summarise; otherwise they are materialised when the raw
/// block leaves retention (see `docs/decisions/2026-11-21-when-rollups-are-written.md`).
pub(crate) const MINUTE_ROLLUP_MAX_SHARE_PERCENT: u64 = 50;

/// The block writers of one window: raw, and the rollups written at seal.
struct WindowWriter {
    raw: BlockWriter,
    seq: u64,
    /// Rollup writers (resolution, writer, seq), for resolutions whose step divides the
    /// block duration (so a rollup bucket never straddles two windows).
    rollups: Vec<(Resolution, BlockWriter, u64)>,
}

/// The rollup resolutions written when a window seals: those whose bucket divides the
/// block duration.
fn seal_rollups(bd: i64) -> impl Iterator<Item = Resolution> {
    [Resolution::Minute, Resolution::Hour]
        .into_iter()
        .filter(move |r| bd % r.step_ms() == 0)
}

impl Db {
    /// Seals all head data into blocks, merges it with the blocks of the windows it touches,
    /// checkpoints the WAL and applies retention; returns when done.
    pub fn compact_now(&self) -> Result<CompactReport, DbError> {
        let mut report = self.seal(i64::MAX)?;
        report.blocks_expired = self.apply_retention()?;
        Ok(report)
    }

    /// Seals head data older than `cutoff` (see the module doc).
    pub(crate) fn seal(&self, cutoff: i64) -> Result<CompactReport, DbError> {
        if self.is_closed() {
            return Err(DbError::Closed);
        }
        let _guard = self.maintenance.lock();
        let limits = head_limits(&self.opts);
        let bd = self.opts.block_duration_ms.max(1);
        let mut report = CompactReport::default();

        // 1. freeze, cut, re-log
        let (frozen, keys, next_segment, relog_seq) = {
            let mut w = self.wal.lock_for_append();
            let keys: Vec<SeriesKey> = self.index.read().keys().to_vec();
            let mut head = self.head.write();
            let frozen: Vec<MemSeries> = head
                .series
                .iter_mut()
                .map(|s| s.split_before(cutoff, limits))
                .collect();
            let frozen = Arc::new(frozen);
            self.sealed.write().frozen = Some(Arc::clone(&frozen));
            let next_segment = self.wal.cut(&mut w)?;
            if cutoff != i64::MAX {
                let mut pts = Vec::new();
                for (id, s) in head.series.iter().enumerate() {
                    pts.clear();
                    s.read_into(i64::MIN, i64::MAX, &mut pts);
                    for part in pts.chunks(RELOG_RECORD_POINTS) {
                        let start = begin_record(&mut w.buf, REC_SAMPLES);
                        let mut prev = 0i64;
                        for (t, v) in part {
                            put_uvarint(&mut w.buf, id as u64);
                            put_uvarint(&mut w.buf, zigzag(t.wrapping_sub(prev)));
                            w.buf.extend_from_slice(&v.to_bits().to_le_bytes());
                            prev = *t;
                        }
                        end_record(&mut w.buf, start);
                        w.seq += 1;
                    }
                }
            }
            let relog_seq = w.seq;
            drop(head);
            self.wal.after_append(&w);
            (frozen, keys, next_segment, relog_seq)
        };

        // 2. write the touched windows
        let old_blocks: Vec<Arc<Block>> = self.sealed.read().blocks.clone();
        let blocks_dir = self.dir.join("blocks");
        let mut writers: BTreeMap<i64, WindowWriter> = BTreeMap::new();
        let mut windows_of_series: Vec<i64> = Vec::new();
        let mut pts = Vec::new();
        let mut rollup_pts = Vec::new();
        let (mut bts, mut bvals, mut part, mut merged, mut scratch) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // windows touched by any frozen data, found first so that every block of a touched
        // window is rewritten, including series absent from the frozen data
        let mut touched = std::collections::BTreeSet::new();
        for s in frozen.iter() {
            let (Some(lo), Some(hi)) = (s.min_t(), s.max_t()) else {
                continue;
            };
            let (wlo, whi) = (lo.div_euclid(bd), hi.div_euclid(bd));
            if whi.saturating_sub(wlo) <= 1 {
                // the common case, decided without decoding
                touched.insert(wlo * bd);
                touched.insert(whi * bd);
                continue;
            }
            pts.clear();
            s.read_into(i64::MIN, i64::MAX, &mut pts);
            for (t, _) in &pts {
                touched.insert(t.div_euclid(bd) * bd);
            }
        }
        for (id, s) in frozen.iter().enumerate() {
            let sid = SeriesId(id as u64);
            pts.clear();
            s.read_into(i64::MIN, i64::MAX, &mut pts);
            report.points_sealed += pts.len() as u64;
            windows_of_series.clear();
            windows_of_series.extend(
                old_blocks
                    .iter()
                    .filter(|b| {
                        b.resolution() == Resolution::Raw
                            && touched.contains(&b.window)
                            && b.reader.contains(sid)
                    })
                    .map(|b| b.window),
            );
            windows_of_series.extend(pts.iter().map(|(t, _)| t.div_euclid(bd) * bd));
            windows_of_series.sort_unstable();
            windows_of_series.dedup();
            for &window in &windows_of_series {
                merged.clear();
                for b in old_blocks
                    .iter()
                    .filter(|b| b.window == window && b.resolution() == Resolution::Raw)
                {
                    bts.clear();
                    bvals.clear();
                    b.reader
                        .read(sid, i64::MIN, i64::MAX, &mut bts, &mut bvals)
                        .map_err(block_err(&b.path))?;
                    part.clear();
                    part.extend(bts.iter().copied().zip(bvals.iter().copied()));
                    scratch.clear();
                    crate::head::merge_last_wins(&merged, &part, &mut scratch);
                    std::mem::swap(&mut merged, &mut scratch);
                }
                let lo = pts.partition_point(|p| p.0 < window);
                let hi = pts.partition_point(|p| p.0 < window.saturating_add(bd));
                scratch.clear();
                crate::head::merge_last_wins(&merged, pts.get(lo..hi).unwrap_or_default(), &mut scratch);
                std::mem::swap(&mut merged, &mut scratch);
                if merged.is_empty() {
                    continue;
                }
                let ww = match writers.entry(window) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::btree_map::Entry::Vacant(e) => {
                        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
                        let dir = block_dir(&blocks_dir, seq, Resolution::Raw);
                        let raw = BlockWriter::create(
                            &dir,
                            BlockOptions {
                                id: seq,
                                resolution: Resolution::Raw,
                                seq,
                            },
                        )
                        .map_err(block_err(&dir))?;
                        let mut rollups = Vec::new();
                        for res in seal_rollups(bd) {
                            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
                            let dir = block_dir(&blocks_dir, seq, res);
                            let w = BlockWriter::create(
                                &dir,
                                BlockOptions {
                                    id: seq,
                                    resolution: res,
                                    seq,
                                },
                            )
                            .map_err(block_err(&dir))?;
                            rollups.push((res, w, seq));
                        }
                        e.insert(WindowWriter { raw, seq, rollups })
                    }
                };
                bts.clear();
                bvals.clear();
                bts.extend(merged.iter().map(|p| p.0));
                bvals.extend(merged.iter().map(|p| p.1));
                ww.raw
                    .add_series(sid, &bts, &bvals)
                    .map_err(block_err(&blocks_dir))?;
                for (res, w, _) in &mut ww.rollups {
                    rollup_pts.clear();
                    rollup::rollup(&bts, &bvals, *res, &mut rollup_pts);
                    if !rollup_pts.is_empty() {
                        w.add_rollup_series(sid, &rollup_pts)
                            .map_err(block_err(&blocks_dir))?;
                    }
                }
            }
        }
        let mut new_blocks = Vec::new();
        for (window, ww) in writers {
            let path = block_dir(&blocks_dir, ww.seq, Resolution::Raw);
            ww.raw.finish().map_err(block_err(&path))?;
            let reader = BlockReader::open(&path).map_err(block_err(&path))?;
            let raw_bytes = reader.disk_bytes();
            new_blocks.push(Arc::new(Block { reader, path, window }));
            for (res, w, seq) in ww.rollups {
                let path = block_dir(&blocks_dir, seq, res);
                let meta = w.finish().map_err(block_err(&path))?;
                let reader = BlockReader::open(&path).map_err(block_err(&path))?;
                let keep = meta.series > 0
                    && (res != Resolution::Minute
                        || reader.disk_bytes() * 100 < raw_bytes * MINUTE_ROLLUP_MAX_SHARE_PERCENT);
                if keep {
                    new_blocks.push(Arc::new(Block { reader, path, window }));
                } else {
                    drop(reader);
                    std::fs::remove_dir_all(&path)
                        .map_err(DbError::io(format!("remove {}", path.display())))?;
                }
            }
        }
        report.blocks_written = new_blocks.len();
        self.metrics.blocks_written.add(new_blocks.len() as u64);

        // 3. publish
        let replaced: Vec<Arc<Block>> = {
            let mut sealed = self.sealed.write();
            // A touched window's rollup blocks are replaced too, unless its raw block had
            // already left retention (then the rollups hold data the new raw block lacks).
            let had_raw: std::collections::BTreeSet<i64> = sealed
                .blocks
                .iter()
                .filter(|b| b.resolution() == Resolution::Raw)
                .map(|b| b.window)
                .collect();
            let (gone, keep): (Vec<_>, Vec<_>) = sealed.blocks.drain(..).partition(|b| {
                touched.contains(&b.window)
                    && match b.resolution() {
                        Resolution::Raw => true,
                        res => had_raw.contains(&b.window) && seal_rollups(bd).any(|r| r == res),
                    }
            });
            sealed.blocks = keep;
            sealed.blocks.extend(new_blocks);
            sealed.blocks.sort_by_key(|b| b.seq());
            sealed.frozen = None;
            gone
        };
        report.blocks_replaced = replaced.len();
        // rollups first: a crash part way leaves the window's old raw block next to the new
        // one, which is how opening recognises the old rollup blocks as superseded
        let mut replaced = replaced;
        replaced.sort_by_key(|b| (b.resolution() == Resolution::Raw, b.seq()));
        for b in replaced {
            std::fs::remove_dir_all(&b.path).map_err(DbError::io(format!("remove {}", b.path.display())))?;
        }
        crate::wal::sync_dir(&blocks_dir)?;

        // 4. checkpoint
        series_log::write(&self.dir, SERIES_LOG, &keys)?;
        self.wal.wait_durable(relog_seq)?;
        report.wal_segments_removed = self.wal.remove_before(next_segment)?;
        self.metrics.seals.inc();
        Ok(report)
    }

    /// Drops blocks past their resolution's retention, then the oldest raw blocks (then
    /// minute, then hour) while the blocks exceed `max_disk_bytes`. A raw block's minute and
    /// hour rollups are materialised before it goes. Returns blocks dropped.
    pub(crate) fn apply_retention(&self) -> Result<usize, DbError> {
        let _guard = self.maintenance.lock();
        let now = self.clock.now().millis();
        let r = self.opts.retention;
        let limit = |res| match res {
            Resolution::Raw => r.raw_ms,
            Resolution::Minute => r.minute_ms,
            Resolution::Hour => r.hour_ms,
        };
        let expired = |b: &Block| b.reader.meta().max_t < now.saturating_sub(limit(b.resolution()));
        let mut dropped = 0;
        loop {
            let victim = {
                let sealed = self.sealed.read();
                let by_age = sealed.blocks.iter().find(|b| expired(b)).cloned();
                by_age.or_else(|| {
                    let max = r.max_disk_bytes?;
                    let total: u64 = sealed.blocks.iter().map(|b| b.reader.disk_bytes()).sum();
                    (total > max)
                        .then(|| {
                            sealed
                                .blocks
                                .iter()
                                .min_by_key(|b| (b.resolution(), b.window, b.seq()))
                                .cloned()
                        })
                        .flatten()
                })
            };
            let Some(victim) = victim else { break };
            let mut added = Vec::new();
            if victim.resolution() == Resolution::Raw {
                for res in [Resolution::Minute, Resolution::Hour] {
                    let exists = self
                        .sealed
                        .read()
                        .blocks
                        .iter()
                        .any(|b| b.window == victim.window && b.resolution() == res);
                    let end = victim.reader.meta().max_t;
                    if !exists && end >= now.saturating_sub(limit(res)) {
                        added.extend(self.materialize_rollup(&victim, res)?);
                    }
                }
            }
            {
                let mut sealed = self.sealed.write();
                sealed.blocks.retain(|b| !Arc::ptr_eq(b, &victim));
                sealed.blocks.extend(added);
                sealed.blocks.sort_by_key(|b| b.seq());
            }
            std::fs::remove_dir_all(&victim.path)
                .map_err(DbError::io(format!("remove {}", victim.path.display())))?;
            dropped += 1;
        }
        self.metrics.blocks_removed_by_retention.add(dropped as u64);
        Ok(dropped)
    }

    /// Writes the `res` rollup block of a raw block's window; `None` when it holds no
    /// non-NaN sample.
    fn materialize_rollup(&self, raw: &Block, res: Resolution) -> Result<Option<Arc<Block>>, DbError> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let path = block_dir(&self.dir.join("blocks"), seq, res);
        let mut w = BlockWriter::create(
            &path,
            BlockOptions {
                id: seq,
                resolution: res,
                seq,
            },
        )
        .map_err(block_err(&path))?;
        let (mut ts, mut vals, mut points) = (Vec::new(), Vec::new(), Vec::new());
        let mut any = false;
        for id in raw.reader.series_ids() {
            ts.clear();
            vals.clear();
            points.clear();
            raw.reader
                .read(id, i64::MIN, i64::MAX, &mut ts, &mut vals)
                .map_err(block_err(&raw.path))?;
            rollup::rollup(&ts, &vals, res, &mut points);
            if !points.is_empty() {
                w.add_rollup_series(id, &points).map_err(block_err(&path))?;
                any = true;
            }
        }
        w.finish().map_err(block_err(&path))?;
        let reader = BlockReader::open(&path).map_err(block_err(&path))?;
        if !any {
            std::fs::remove_dir_all(&path).map_err(DbError::io(format!("remove {}", path.display())))?;
            return Ok(None);
        }
        Ok(Some(Arc::new(Block {
            reader,
            path,
            window: raw.window,
        })))
    }

    /// Writes a consistent copy of the database to `dest` (which must not exist) while it
    /// keeps running: blocks are hard-linked (copied across filesystems), the WAL is cut and
    /// its closed segments copied, the series registry written as of the cut. Opening `dest`
    /// yields every sample appended before the call.
    pub fn snapshot(&self, dest: &Path) -> Result<(), DbError> {
        if self.is_closed() {
            return Err(DbError::Closed);
        }
        let _guard = self.maintenance.lock();
        if dest.exists() {
            return Err(DbError::Io {
                context: format!("snapshot to {}", dest.display()),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
        let (next_segment, keys, blocks) = {
            let mut w = self.wal.lock_for_append();
            let next = self.wal.cut(&mut w)?;
            let keys = self.index.read().keys().to_vec();
            (next, keys, self.sealed.read().blocks.clone())
        };
        let io = |what: &str, p: &Path| DbError::io(format!("{what} {}", p.display()));
        let dest_wal = dest.join("wal");
        let dest_blocks = dest.join("blocks");
        std::fs::create_dir_all(&dest_wal).map_err(io("create", &dest_wal))?;
        std::fs::create_dir_all(&dest_blocks).map_err(io("create", &dest_blocks))?;
        for (i, path) in crate::wal::list_segments(&self.dir.join("wal"))? {
            if i < next_segment
                && let Some(name) = path.file_name()
            {
                std::fs::copy(&path, dest_wal.join(name)).map_err(io("copy", &path))?;
            }
        }
        for b in &blocks {
            let Some(name) = b.path.file_name() else { continue };
            let target = dest_blocks.join(name);
            std::fs::create_dir_all(&target).map_err(io("create", &target))?;
            for f in std::fs::read_dir(&b.path).map_err(io("list", &b.path))? {
                let f = f.map_err(io("list", &b.path))?;
                let to = target.join(f.file_name());
                if std::fs::hard_link(f.path(), &to).is_err() {
                    std::fs::copy(f.path(), &to).map_err(io("copy", &f.path()))?;
                }
            }
        }
        series_log::write(dest, SERIES_LOG, &keys)?;
        crate::wal::sync_dir(&dest_wal)?;
        crate::wal::sync_dir(&dest_blocks)?;
        crate::wal::sync_dir(dest)
    }

    /// Streams rollup points at `res` of the series matching `matchers` with bucket starts in
    /// `[start_ms, end_ms]`, one series at a time in series-key order. Buckets are computed
    /// from raw samples wherever raw data is still held (head and raw blocks), and read
    /// from rollup blocks for windows whose raw block retention has already dropped; so the
    /// answer is exact for every resolution. `Resolution::Raw` yields one point per sample.
    pub fn select_rollup(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        res: Resolution,
    ) -> Result<SelectRollup<'_>, DbError> {
        let inner = self
            .select(
                matchers,
                res.bucket(start_ms),
                end_ms.saturating_add(res.step_ms() - 1),
            )?
            .yield_empty();
        Ok(SelectRollup {
            inner,
            res,
            start_ms,
            end_ms,
        })
    }

    pub(crate) fn rollup_series(
        &self,
        data: crate::SeriesData,
        res: Resolution,
        start: i64,
        end: i64,
    ) -> Result<RollupSeries, DbError> {
        let step = res.step_ms();
        // raw samples of every bucket overlapping [start, end]
        let lo = res.bucket(start);
        let hi = end.saturating_add(step - 1);
        let from = data.timestamps.partition_point(|t| *t < lo);
        let to = data.timestamps.partition_point(|t| *t <= hi);
        let mut computed = Vec::new();
        rollup::rollup(
            data.timestamps.get(from..to).unwrap_or_default(),
            data.values.get(from..to).unwrap_or_default(),
            res,
            &mut computed,
        );
        let mut from_blocks = Vec::new();
        if res != Resolution::Raw {
            let (raw_windows, rollup_blocks): (std::collections::BTreeSet<i64>, Vec<Arc<Block>>) = {
                let sealed = self.sealed.read();
                (
                    sealed
                        .blocks
                        .iter()
                        .filter(|b| b.resolution() == Resolution::Raw)
                        .map(|b| b.window)
                        .collect(),
                    sealed
                        .blocks
                        .iter()
                        .filter(|b| b.resolution() == res && b.reader.contains(data.id))
                        .cloned()
                        .collect(),
                )
            };
            for b in rollup_blocks.iter().filter(|b| !raw_windows.contains(&b.window)) {
                let mut part = Vec::new();
                b.reader
                    .read_rollup(data.id, start, end, &mut part)
                    .map_err(block_err(&b.path))?;
                let mut out = Vec::new();
                rollup::merge_rollups(&from_blocks, &part, &mut out);
                from_blocks = out;
            }
        }
        let mut points = Vec::new();
        rollup::merge_rollups(&from_blocks, &computed, &mut points);
        points.retain(|p| p.ts >= start && p.ts <= end);
        Ok(RollupSeries {
            id: data.id,
            key: data.key,
            points,
        })
    }
}

/// The streaming result of [`Db::select_rollup`].
pub struct SelectRollup<'a> {
    inner: crate::Select<'a>,
    res: Resolution,
    start_ms: i64,
    end_ms: i64,
}

impl Iterator for SelectRollup<'_> {
    type Item = Result<RollupSeries, DbError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let data = match self.inner.next()? {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            };
            match self
                .inner
                .db()
                .rollup_series(data, self.res, self.start_ms, self.end_ms)
            {
                Ok(s) if s.points.is_empty() => continue,
                other => return Some(other),
            }
        }
    }
}

#[derive(Debug, Default)]
struct BgCtl {
    stop: bool,
}

/// The maintenance thread: every interval, seals complete windows (half a block duration
/// after their end) and applies retention.
#[derive(Debug)]
pub(crate) struct Background {
    ctl: Arc<(Mutex<BgCtl>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl Background {
    pub fn spawn(db: &Arc<Db>, interval: Duration) -> Result<Background, DbError> {
        let ctl = Arc::new((Mutex::new(BgCtl::default()), Condvar::new()));
        let weak: Weak<Db> = Arc::downgrade(db);
        let c = Arc::clone(&ctl);
        let handle = std::thread::Builder::new()
            .name("tsdb-maintenance".into())
            .spawn(move || {
                loop {
                    {
                        let mut g = c.0.lock();
                        if !g.stop {
                            c.1.wait_for(&mut g, interval);
                        }
                        if g.stop {
                            return;
                        }
                    }
                    let Some(db) = weak.upgrade() else { return };
                    if let Err(e) = db.maintain() {
                        tracing::warn!(error = %e, "Background sealing or retention failed; will retry.");
                    }
                }
            })
            .map_err(DbError::io("spawn the maintenance thread"))?;
        Ok(Background {
            ctl,
            handle: Some(handle),
        })
    }

    pub fn stop(mut self) {
        {
            let mut g = self.ctl.0.lock();
            g.stop = true;
            self.ctl.1.notify_all();
        }
        if let Some(h) = self.handle.take() {
            // the last Arc<Db> may be dropped by the maintenance thread itself
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

impl Db {
    fn maintain(&self) -> Result<(), DbError> {
        let bd = self.opts.block_duration_ms.max(1);
        let reference = self
            .clock
            .now()
            .millis()
            .max(self.max_seen.load(Ordering::Relaxed));
        let cutoff = reference.saturating_sub(bd / 2).div_euclid(bd) * bd;
        let oldest = self.head.read().series.iter().filter_map(MemSeries::min_t).min();
        if oldest.is_some_and(|t| t < cutoff) {
            self.seal(cutoff)?;
        }
        self.apply_retention()?;
        Ok(())
    }
}
