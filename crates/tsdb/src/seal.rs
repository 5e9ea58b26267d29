//! Sealing head data into blocks (checkpoint), compaction of adjacent blocks into larger
//! ones, retention, snapshots, rollup reads and the background maintenance thread.
//!
//! Compaction ([`Db::compact_blocks`]): per resolution, the blocks within one aligned
//! compaction range are merged with [`crate::compact::compact`] (last write wins by `seq`
//! for raw data) once the range is complete (the maintenance thread: its end is before the
//! seal cutoff; `compact_now`: always). Rollup ranges are compacted only once no raw block
//! overlaps them. The merged block is finished (fsynced, renamed into place) before the
//! inputs are unpublished and deleted.
//!
//! A seal of everything older than `cutoff`:
//! 1. under the WAL append guard: cut the WAL (fsync + new segment `N`) and take the
//!    series keys; then one head shard at a time, under the WAL guard and that shard's
//!    write lock: split the old data off each of its series into the shard's *frozen* set
//!    (still readable; `MemSeries::split_before` moves whole chunks, so this is O(chunks)),
//!    downgrade to a read lock and re-log the data that stays into segment `>= N` (so
//!    segments before `N` hold nothing that is not about to be in a block or re-logged).
//!    Appends to a shard between the cut and its split are in segment `N` before its
//!    re-logged state and already part of it; appends after it come after it. No lock is
//!    held for more than one shard's share of the head.
//! 2. without locks: for every *unit* touched (a window, widened to the span of a
//!    compacted raw block holding it: backfill into a compacted block rewrites it whole),
//!    merge the unit's existing raw blocks (by `seq`) with the frozen data (frozen wins: it
//!    is newer) and write a new raw block with a new `seq`, and its rollup blocks
//! 3. publish: swap the unit's old blocks for the new ones in one step under the `sealed`
//!    write lock, THEN drop the shards' frozen sets (a reader that finds a frozen set gone
//!    finds the blocks holding its data); delete the old block directories (a crash part way
//!    leaves old blocks within the span of newer ones, which opening deletes)
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
use crate::head::{HEAD_SHARDS, MemSeries, frozen_series};
use crate::locks;
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
    /// Blocks written by compaction (merging adjacent blocks into larger ones).
    pub blocks_compacted: usize,
    /// Blocks merged into those and deleted.
    pub blocks_merged: usize,
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
    /// The unit had a minute rollup block, so the new one is kept whatever its size.
    carry_minute: bool,
}

/// The span one seal rewrites as one block (see step 2 of [`Db::seal`]).
#[derive(Debug, Clone, Copy)]
struct Unit {
    start: i64,
    end: i64,
    /// Rollup blocks are written for this unit.
    rollups: bool,
    /// The unit had a minute rollup block.
    carry_minute: bool,
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
    /// checkpoints the WAL, applies retention and merges adjacent blocks into larger ones
    /// (every compaction range, complete or not); returns when done.
    pub fn compact_now(&self) -> Result<CompactReport, DbError> {
        let mut report = self.seal(i64::MAX)?;
        report.blocks_expired = self.apply_retention()?;
        (report.blocks_compacted, report.blocks_merged) = self.compact_blocks(i64::MAX)?;
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

        // 1. cut, then freeze and re-log one head shard at a time
        let (keys, next_segment) = {
            let mut w = self.wal.lock_observed(&self.lock_waits.wal_seal);
            // every series created before the cut; later ones are logged in segment >= N
            let keys: Vec<SeriesKey> = self.index.read().keys().to_vec();
            let next_segment = self.wal.cut(&mut w)?;
            (keys, next_segment)
        };
        let mut frozen: Vec<Option<Arc<Vec<MemSeries>>>> = Vec::with_capacity(HEAD_SHARDS);
        let mut relog_seq = 0;
        let mut pts = Vec::new();
        for (shard_no, shard) in self.head.shards().iter().enumerate() {
            // the WAL guard around the shard's split and re-log keeps WAL order equal to head
            // apply order per series: appends to this shard since the cut are in segment N
            // before the re-logged state, appends after it come after
            let mut w = self.wal.lock_observed(&self.lock_waits.wal_seal);
            let mut guard = locks::write(shard, &self.lock_waits.head_seal);
            // a frozen set still here was left by a seal that failed after this step: its
            // data is in no block yet, so it goes into this seal's (head data is newer)
            let stale = guard.frozen.take();
            let part: Vec<MemSeries> = guard
                .series
                .iter_mut()
                .enumerate()
                .map(|(pos, s)| {
                    let old = s.split_before(cutoff, limits);
                    match stale.as_ref().and_then(|f| f.get(pos)).filter(|p| !p.is_empty()) {
                        Some(prev) => MemSeries::merged(prev, &old, limits),
                        None => old,
                    }
                })
                .collect();
            let part = Arc::new(part);
            guard.frozen = Some(Arc::clone(&part));
            frozen.push(Some(part));
            // readers may go on while the rest of the shard is re-logged
            let guard = parking_lot::RwLockWriteGuard::downgrade(guard);
            if cutoff != i64::MAX {
                for (pos, s) in guard.series.iter().enumerate() {
                    let id = (pos * HEAD_SHARDS + shard_no) as u64;
                    pts.clear();
                    s.read_into(i64::MIN, i64::MAX, &mut pts);
                    for part in pts.chunks(RELOG_RECORD_POINTS) {
                        let start = begin_record(&mut w.buf, REC_SAMPLES);
                        let mut prev = 0i64;
                        for (t, v) in part {
                            put_uvarint(&mut w.buf, id);
                            put_uvarint(&mut w.buf, zigzag(t.wrapping_sub(prev)));
                            w.buf.extend_from_slice(&v.to_bits().to_le_bytes());
                            prev = *t;
                        }
                        end_record(&mut w.buf, start);
                        w.seq += 1;
                    }
                }
            }
            drop(guard);
            relog_seq = w.seq;
            self.wal.after_append(&w);
        }
        let frozen_len = frozen
            .iter()
            .enumerate()
            .map(|(shard_no, f)| {
                f.as_ref().map_or(0, |f| {
                    f.len()
                        .checked_sub(1)
                        .map_or(0, |last| last * HEAD_SHARDS + shard_no + 1)
                })
            })
            .max()
            .unwrap_or(0);
        let frozen_of = |id: usize| frozen_series(&frozen, id as u64);

        // 2. write the touched windows
        let old_blocks: Vec<Arc<Block>> = self.sealed.read().blocks.clone();
        let blocks_dir = self.dir.join("blocks");
        let mut writers: BTreeMap<i64, WindowWriter> = BTreeMap::new();
        let mut pts = Vec::new();
        let mut rollup_pts = Vec::new();
        let (mut bts, mut bvals, mut part, mut merged, mut scratch) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // windows touched by any frozen data, found first so that every block of a touched
        // window is rewritten, including series absent from the frozen data
        let mut touched = std::collections::BTreeSet::new();
        for s in frozen.iter().flatten().flat_map(|f| f.iter()) {
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
        // A unit is what one seal rewrites as one block: a touched window, widened to the
        // span of any raw block holding it (a compacted block is rewritten whole, so every
        // block's span stays a superset of the blocks it replaced). Units are disjoint.
        let mut spans: Vec<(i64, i64)> = touched
            .iter()
            .map(|&w| {
                old_blocks
                    .iter()
                    .filter(|b| b.resolution() == Resolution::Raw && b.overlaps(w, w.saturating_add(bd)))
                    .fold((w, w.saturating_add(bd)), |(lo, hi), b| {
                        (lo.min(b.window), hi.max(b.end))
                    })
            })
            .collect();
        spans.sort_unstable();
        let mut units: Vec<Unit> = Vec::new();
        for (lo, hi) in spans {
            match units.last_mut() {
                Some(u) if lo < u.end => u.end = u.end.max(hi),
                _ => units.push(Unit {
                    start: lo,
                    end: hi,
                    rollups: true,
                    carry_minute: false,
                }),
            }
        }
        for u in &mut units {
            // rollups at seal only where the unit's raw data is all here: a unit without a
            // raw block but with rollup blocks lost its raw data to retention (known limit)
            let had_raw = old_blocks
                .iter()
                .any(|b| b.resolution() == Resolution::Raw && b.within(u.start, u.end));
            let had_rollups = old_blocks
                .iter()
                .any(|b| b.resolution() != Resolution::Raw && b.overlaps(u.start, u.end));
            u.rollups = had_raw || !had_rollups;
            u.carry_minute = had_raw
                && old_blocks
                    .iter()
                    .any(|b| b.resolution() == Resolution::Minute && b.within(u.start, u.end));
        }
        let unit_of = |t: i64| -> Option<usize> {
            let i = units.partition_point(|u| u.end <= t);
            units.get(i).filter(|u| u.start <= t).map(|_| i)
        };
        // the old raw blocks of each unit, ascending by seq
        let unit_blocks: Vec<Vec<&Arc<Block>>> = units
            .iter()
            .map(|u| {
                old_blocks
                    .iter()
                    .filter(|b| b.resolution() == Resolution::Raw && b.within(u.start, u.end))
                    .collect()
            })
            .collect();
        let mut units_of_series: Vec<usize> = Vec::new();
        for id in 0..frozen_len {
            let Some(s) = frozen_of(id) else { continue };
            let sid = SeriesId(id as u64);
            pts.clear();
            s.read_into(i64::MIN, i64::MAX, &mut pts);
            report.points_sealed += pts.len() as u64;
            units_of_series.clear();
            for (i, blocks) in unit_blocks.iter().enumerate() {
                if blocks.iter().any(|b| b.reader.contains(sid)) {
                    units_of_series.push(i);
                }
            }
            let mut last_unit = None;
            for (t, _) in &pts {
                // points ascend, so their units do too: skip runs of the same unit
                let u = unit_of(*t);
                if u != last_unit {
                    units_of_series.extend(u);
                    last_unit = u;
                }
            }
            units_of_series.sort_unstable();
            units_of_series.dedup();
            for &ui in &units_of_series {
                let Some(unit) = units.get(ui) else { continue };
                merged.clear();
                // ascending by seq: later blocks overwrite earlier ones
                for b in unit_blocks.get(ui).into_iter().flatten() {
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
                let lo = pts.partition_point(|p| p.0 < unit.start);
                let hi = pts.partition_point(|p| p.0 < unit.end);
                scratch.clear();
                crate::head::merge_last_wins(&merged, pts.get(lo..hi).unwrap_or_default(), &mut scratch);
                std::mem::swap(&mut merged, &mut scratch);
                if merged.is_empty() {
                    continue;
                }
                let ww = match writers.entry(unit.start) {
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
                        for res in seal_rollups(bd).filter(|_| unit.rollups) {
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
                        e.insert(WindowWriter {
                            raw,
                            seq,
                            rollups,
                            carry_minute: unit.carry_minute,
                        })
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
        for (_, ww) in writers {
            let path = block_dir(&blocks_dir, ww.seq, Resolution::Raw);
            ww.raw.finish().map_err(block_err(&path))?;
            let reader = BlockReader::open(&path).map_err(block_err(&path))?;
            let raw_bytes = reader.disk_bytes();
            new_blocks.push(Arc::new(Block::new(reader, path, bd)));
            for (res, w, seq) in ww.rollups {
                let path = block_dir(&blocks_dir, seq, res);
                let meta = w.finish().map_err(block_err(&path))?;
                let reader = BlockReader::open(&path).map_err(block_err(&path))?;
                // a minute block replacing one of the unit is kept whatever its size, so
                // that it supersedes the old one (see `blocks::drop_superseded`)
                let keep = meta.series > 0
                    && (res != Resolution::Minute
                        || ww.carry_minute
                        || reader.disk_bytes() * 100 < raw_bytes * MINUTE_ROLLUP_MAX_SHARE_PERCENT);
                if keep {
                    new_blocks.push(Arc::new(Block::new(reader, path, bd)));
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
            let mut sealed = locks::write(&self.sealed, &self.lock_waits.blocks_publish);
            // a unit's raw blocks are replaced; its rollup blocks too where rollups were
            // written (otherwise they hold data of raw blocks that retention dropped)
            let (gone, keep): (Vec<_>, Vec<_>) = sealed.blocks.drain(..).partition(|b| {
                units.iter().any(|u| {
                    b.within(u.start, u.end)
                        && match b.resolution() {
                            Resolution::Raw => true,
                            res => u.rollups && seal_rollups(bd).any(|r| r == res),
                        }
                })
            });
            sealed.blocks = keep;
            sealed.blocks.extend(new_blocks);
            sealed.blocks.sort_by_key(|b| b.seq());
            gone
        };
        // only now: a reader that finds a frozen set gone finds the blocks holding its data
        for shard in self.head.shards() {
            locks::write(shard, &self.lock_waits.head_seal).frozen = None;
        }
        report.blocks_replaced = replaced.len();
        self.remove_blocks(replaced)?;
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
                    let end = victim.reader.meta().max_t;
                    if end >= now.saturating_sub(limit(res)) {
                        added.extend(self.materialize_rollup(&victim, res)?);
                    }
                }
            }
            {
                let mut sealed = locks::write(&self.sealed, &self.lock_waits.blocks_publish);
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

    /// Deletes replaced blocks' directories, rollup blocks first.
    fn remove_blocks(&self, mut blocks: Vec<Arc<Block>>) -> Result<(), DbError> {
        blocks.sort_by_key(|b| (b.resolution() == Resolution::Raw, b.seq()));
        for b in blocks {
            std::fs::remove_dir_all(&b.path).map_err(DbError::io(format!("remove {}", b.path.display())))?;
        }
        Ok(())
    }

    /// Writes the `res` rollup blocks of a raw block that is about to leave retention, for
    /// the windows of its span no `res` rollup block overlaps yet: one block per run of such
    /// consecutive windows (so no new block's span holds an existing block, see
    /// `blocks::drop_superseded`). Blocks holding no sample are not kept.
    fn materialize_rollup(&self, raw: &Block, res: Resolution) -> Result<Vec<Arc<Block>>, DbError> {
        let bd = self.opts.block_duration_ms.max(1);
        let existing: Vec<(i64, i64)> = self
            .sealed
            .read()
            .blocks
            .iter()
            .filter(|b| b.resolution() == res && b.overlaps(raw.window, raw.end))
            .map(|b| (b.window, b.end))
            .collect();
        // where buckets straddle windows, spans are inexact: every window is materialised
        // (known limit: a crash between this and the raw block's deletion counts it twice)
        let exact = bd % res.step_ms() == 0;
        let covered = |w: i64| exact && existing.iter().any(|&(a, b)| a < w.saturating_add(bd) && w < b);
        let mut runs: Vec<(i64, i64)> = Vec::new();
        let mut w = raw.window;
        while w < raw.end {
            if !covered(w) {
                match runs.last_mut() {
                    Some(r) if r.1 == w => r.1 = w.saturating_add(bd),
                    _ => runs.push((w, w.saturating_add(bd))),
                }
            }
            w = w.saturating_add(bd);
        }
        let mut out = Vec::new();
        let (mut ts, mut vals, mut points) = (Vec::new(), Vec::new(), Vec::new());
        for (lo, hi) in runs {
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
            let mut any = false;
            for id in raw.reader.series_ids() {
                ts.clear();
                vals.clear();
                points.clear();
                raw.reader
                    .read(id, lo, hi.saturating_sub(1), &mut ts, &mut vals)
                    .map_err(block_err(&raw.path))?;
                rollup::rollup(&ts, &vals, res, &mut points);
                if !points.is_empty() {
                    w.add_rollup_series(id, &points).map_err(block_err(&path))?;
                    any = true;
                }
            }
            w.finish().map_err(block_err(&path))?;
            if !any {
                std::fs::remove_dir_all(&path).map_err(DbError::io(format!("remove {}", path.display())))?;
                continue;
            }
            let reader = BlockReader::open(&path).map_err(block_err(&path))?;
            out.push(Arc::new(Block::new(reader, path, bd)));
        }
        Ok(out)
    }

    /// Merges adjacent blocks into larger ones: per resolution, all blocks lying within one
    /// aligned compaction range ([`crate::Options::compact_range_ms`]) that ends at or before
    /// `until` are merged with [`crate::compact::compact`] when there are two or more; rollup
    /// ranges only once no raw block overlaps them (until then reads use raw data and seals
    /// rewrite rollups per unit). The merged block is finished (fsynced, renamed into place)
    /// before the inputs are unpublished and deleted; a crash between leaves both, and
    /// opening removes the inputs (`blocks::drop_superseded`). Returns (written, replaced).
    pub(crate) fn compact_blocks(&self, until: i64) -> Result<(usize, usize), DbError> {
        let _guard = self.maintenance.lock();
        let bd = self.opts.block_duration_ms.max(1);
        let (mut written, mut replaced) = (0, 0);
        for res in [Resolution::Raw, Resolution::Minute, Resolution::Hour] {
            let Some(range) = self.opts.compact_range_ms(res) else {
                continue;
            };
            let blocks: Vec<Arc<Block>> = self.sealed.read().blocks.clone();
            let mut groups: BTreeMap<i64, Vec<Arc<Block>>> = BTreeMap::new();
            for b in blocks.iter().filter(|b| b.resolution() == res) {
                let k = b.window.div_euclid(range);
                if b.end.saturating_sub(1).div_euclid(range) == k {
                    groups.entry(k).or_default().push(Arc::clone(b));
                }
            }
            for (k, group) in groups {
                let (lo, hi) = (k.saturating_mul(range), k.saturating_add(1).saturating_mul(range));
                if group.len() < 2 || hi > until {
                    continue;
                }
                if res != Resolution::Raw
                    && blocks
                        .iter()
                        .any(|b| b.resolution() == Resolution::Raw && b.overlaps(lo, hi))
                {
                    continue;
                }
                let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
                let path = block_dir(&self.dir.join("blocks"), seq, res);
                let readers: Vec<&BlockReader> = group.iter().map(|b| &b.reader).collect();
                crate::compact::compact(&readers, &path, seq).map_err(block_err(&path))?;
                let reader = BlockReader::open(&path).map_err(block_err(&path))?;
                let merged = Arc::new(Block::new(reader, path, bd));
                {
                    let mut sealed = locks::write(&self.sealed, &self.lock_waits.blocks_publish);
                    sealed.blocks.retain(|b| !group.iter().any(|g| Arc::ptr_eq(g, b)));
                    sealed.blocks.push(merged);
                    sealed.blocks.sort_by_key(|b| b.seq());
                }
                written += 1;
                replaced += group.len();
                self.remove_blocks(group)?;
            }
        }
        crate::wal::sync_dir(&self.dir.join("blocks"))?;
        self.metrics.blocks_written.add(written as u64);
        Ok((written, replaced))
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
            let (raw_spans, rollup_blocks): (Vec<(i64, i64)>, Vec<Arc<Block>>) = {
                let sealed = self.sealed.read();
                (
                    sealed
                        .blocks
                        .iter()
                        .filter(|b| b.resolution() == Resolution::Raw)
                        .map(|b| (b.window, b.end))
                        .collect(),
                    sealed
                        .blocks
                        .iter()
                        .filter(|b| b.resolution() == res && b.reader.contains(data.id))
                        .cloned()
                        .collect(),
                )
            };
            // buckets of windows a raw block holds are computed from raw samples above
            let bd = self.opts.block_duration_ms.max(1);
            let raw_held = |t: i64| {
                let w = t.div_euclid(bd).saturating_mul(bd);
                raw_spans.iter().any(|&(a, b)| a <= w && w < b)
            };
            // (when buckets do not divide windows, a block is used whole or not at all)
            let per_bucket = bd % step == 0;
            for b in rollup_blocks.iter().filter(|b| {
                if per_bucket {
                    !raw_spans.iter().any(|&(a, e)| a <= b.window && b.end <= e)
                } else {
                    !raw_held(b.window)
                }
            }) {
                let mut part = Vec::new();
                b.reader
                    .read_rollup(data.id, start, end, &mut part)
                    .map_err(block_err(&b.path))?;
                if per_bucket {
                    part.retain(|p| !raw_held(p.ts));
                }
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
                    if db.maintenance_paused() {
                        continue;
                    }
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
        let oldest = self
            .head
            .shards()
            .iter()
            .filter_map(|shard| shard.read().series.iter().filter_map(MemSeries::min_t).min())
            .min();
        if oldest.is_some_and(|t| t < cutoff) {
            self.seal(cutoff)?;
        }
        self.apply_retention()?;
        // only ranges no in-order data will be sealed into any more
        self.compact_blocks(cutoff)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Partial seals (`seal(cutoff)`, what the maintenance thread runs): the head is split
    //! shard by shard and what stays is re-logged, while appends go on.

    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;

    use model::{Label, ManualClock, Matcher, Point, SeriesId, Timestamp};

    use super::*;
    use crate::{FsyncPolicy, Options};

    const NOW: i64 = 1_700_000_000_000;
    /// More series than head shards, so every shard holds several.
    const SERIES: usize = HEAD_SHARDS * 2 + 44;

    fn open(dir: &Path) -> (Arc<Db>, Vec<SeriesId>) {
        let opts = Options {
            fsync: FsyncPolicy::Interval(Duration::from_millis(1)),
            maintenance_interval: None,
            block_duration_ms: 10_000,
            head_chunk_points: 4,
            max_ooo_points_per_series: 3,
            ..Options::default()
        };
        let db = Db::open(dir, opts, Arc::new(ManualClock::new(Timestamp(NOW)))).unwrap();
        let ids = (0..SERIES)
            .map(|i| {
                db.resolve(&SeriesKey::new("m", vec![Label::new("i", i.to_string())]).unwrap())
                    .unwrap()
            })
            .collect();
        (db, ids)
    }

    type Model = BTreeMap<(u64, i64), f64>;

    fn read_all(db: &Db) -> Model {
        let mut out = Model::new();
        for s in db
            .select(&[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX)
            .unwrap()
        {
            let s = s.unwrap();
            for (t, v) in s.timestamps.iter().zip(s.values.iter()) {
                out.insert((s.id.0, *t), *v);
            }
        }
        out
    }

    /// Batch `b`: every series at one timestamp, going forward, with every 5th batch
    /// rewriting an older timestamp (out of order, sometimes before the seal cutoff).
    fn batch(ids: &[SeriesId], b: i64) -> Vec<Point> {
        let ts = if b % 5 == 4 {
            NOW + 1_000 * (b / 3)
        } else {
            NOW + 1_000 * b
        };
        ids.iter()
            .map(|id| Point {
                series: *id,
                ts,
                value: (b * 1_000) as f64 + id.0 as f64,
            })
            .collect()
    }

    #[test]
    fn a_seal_after_a_failed_one_seals_the_data_that_one_froze() {
        let dir = tempfile::tempdir().unwrap();
        let (db, ids) = open(dir.path());
        let mut model = Model::new();
        let append = |db: &Db, model: &mut Model, b| {
            let pts = batch(&ids, b);
            for p in &pts {
                model.insert((p.series.0, p.ts), p.value);
            }
            db.append(&pts).unwrap().wal_seq
        };
        for b in 0..40 {
            append(&db, &mut model, b);
        }
        // what a seal that failed after step 1 leaves behind: frozen sets in the shards
        let limits = head_limits(&db.opts);
        for shard in db.head.shards() {
            let mut g = shard.write();
            let part = g
                .series
                .iter_mut()
                .map(|s| s.split_before(NOW + 20_000, limits))
                .collect();
            g.frozen = Some(Arc::new(part));
        }
        assert_eq!(read_all(&db), model);
        // rewrites of frozen timestamps are newer than the frozen data
        let mut last = 0;
        for b in 40..60 {
            last = append(&db, &mut model, b);
        }
        db.seal(NOW + 30_000).unwrap();
        assert_eq!(read_all(&db), model, "after the next seal");
        db.wait_durable(last).unwrap();
        db.crash_for_test();
        drop(db);
        let (db, _) = open(dir.path());
        assert_eq!(read_all(&db), model, "after a crash");
    }

    #[test]
    fn partial_seals_during_appends_keep_every_last_write_through_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let (db, ids) = open(dir.path());
        let mut model = Model::new();
        for b in 0..40 {
            for p in batch(&ids, b) {
                model.insert((p.series.0, p.ts), p.value);
            }
            db.append(&batch(&ids, b)).unwrap();
        }
        db.seal(NOW + 20_000).unwrap();
        assert_eq!(read_all(&db), model, "after a partial seal");
        assert!(db.stats().blocks > 0);

        // appends (rewrites on both sides of the cutoff) while partial seals run
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (db, ids, done) = (Arc::clone(&db), ids.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut model = Model::new();
                let mut last = 0;
                for b in 40..400 {
                    let pts = batch(&ids, b);
                    for p in &pts {
                        model.insert((p.series.0, p.ts), p.value);
                    }
                    last = db.append(&pts).unwrap().wal_seq;
                }
                done.store(true, Ordering::SeqCst);
                (model, last)
            })
        };
        let mut cutoff = NOW + 30_000;
        let mut seals = 0;
        let mut seen = 0;
        while !done.load(Ordering::SeqCst) || seals < 3 {
            db.seal(cutoff).unwrap();
            seals += 1;
            cutoff += 10_000;
            let n = read_all(&db).len();
            assert!(n >= seen, "a sample once visible stays visible ({n} < {seen})");
            seen = n;
        }
        let (later, last) = writer.join().unwrap();
        model.extend(later);
        assert_eq!(read_all(&db), model, "after {seals} partial seals during appends");
        db.wait_durable(last).unwrap();
        db.crash_for_test();
        drop(db);
        let (db, _) = open(dir.path());
        assert_eq!(read_all(&db), model, "after a crash");
    }
}
