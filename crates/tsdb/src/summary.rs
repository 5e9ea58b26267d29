//! Summarised reads: [`Db::select_summaries`] hands over each series as stored rollup
//! points (whole buckets the caller accepts) plus the raw samples outside them, so a query
//! such as `avg_over_time(x[1h])` reads one hour rollup instead of decoding 360 samples.
//!
//! A stored rollup point stands in for the raw samples of its bucket only when that is
//! provably the same data (otherwise the bucket's samples are read raw):
//! - the series is in exactly one raw block over that block's span (no overlapping raw
//!   block holds it), and the rollup blocks of the resolution lying within that span hold
//!   exactly as many samples of the series as the raw block does (so a rollup block left
//!   from data that retention dropped, or a raw block with stale markers, which rollups
//!   skip, falls back to raw);
//! - neither the head nor data being sealed holds a sample of the series in the bucket (it
//!   could add to or overwrite the bucket's samples);
//! - the caller's `keep(bucket_start, last_ts)` accepts it (the query engine keeps buckets
//!   wholly inside or wholly outside every window).
//!
//! A raw block whose samples in the range all fall in kept buckets is not decoded at all.
//! Raw samples are merged across blocks (by seq), sealing data and the head exactly as
//! [`Db::select`] does (last write wins). Memory: one series at a time.

use std::sync::Arc;

use model::{Matcher, SeriesId, SeriesKey};

use crate::blocks::Block;
use crate::db::Db;
use crate::error::DbError;
use crate::head::merge_last_wins;
use crate::locks;
use crate::rollup::{Resolution, RollupPoint};

/// One series of [`Db::select_summaries`]: kept rollup points and the other raw samples.
#[derive(Debug, Clone, PartialEq)]
pub struct SummarySeries {
    /// The series id.
    pub id: SeriesId,
    /// The series key.
    pub key: SeriesKey,
    /// Kept buckets, ascending by start; each summarises every sample of its bucket.
    pub buckets: Vec<RollupPoint>,
    /// Raw samples in the range outside the kept buckets, ascending, one per timestamp.
    pub timestamps: Vec<i64>,
    /// Values, parallel to `timestamps`.
    pub values: Vec<f64>,
}

/// Decides whether a bucket (start, time of its last sample) may be handed over summarised.
pub type KeepBucket<'a> = dyn Fn(i64, i64) -> bool + Send + Sync + 'a;

fn block_err(b: &Block) -> impl FnOnce(crate::block::BlockError) -> DbError + '_ {
    move |e| DbError::Block {
        block: b.path.display().to_string(),
        reason: e.to_string(),
    }
}

impl Db {
    /// Streams the series matching `matchers` with data in `[start_ms, end_ms]`, one at a
    /// time in series-key order, each as the `res` rollup points that `keep` accepts and
    /// that are exact (see the module doc) plus every other raw sample in the range. Only
    /// `Resolution::Minute` and `Resolution::Hour` summarise; `Raw` yields raw samples only.
    /// [`SelectSummaries::shard`] splits the work between threads.
    pub fn select_summaries<'a>(
        &'a self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        res: Resolution,
        keep: &'a KeepBucket<'a>,
    ) -> Result<SelectSummaries<'a>, DbError> {
        let ids = self.select(matchers, start_ms, end_ms)?.into_ids();
        Ok(SelectSummaries {
            db: self,
            ids,
            start_ms,
            end_ms,
            res,
            keep,
            scratch: Summary::default(),
        })
    }

    fn summarise_series(
        &self,
        id: u64,
        start: i64,
        end: i64,
        res: Resolution,
        keep: &KeepBucket<'_>,
        out: &mut Summary,
    ) -> Result<(), DbError> {
        out.clear();
        let sid = SeriesId(id);
        let step = res.step_ms();
        // head and sealing data over the whole buckets touching the range
        let (lo_b, hi_b) = (res.bucket(start), res.bucket(end).saturating_add(step - 1));
        let mut volatile = Vec::new();
        let mut head_part = Vec::new();
        // the shard first, then the block list, never both at once (as `Db::read_series`)
        let frozen = match self.head.shard_of(id) {
            Some((shard, pos)) => {
                let shard = locks::read(shard, &self.lock_waits.head_read);
                if let Some(s) = shard.series.get(pos) {
                    s.read_into(lo_b, hi_b, &mut head_part);
                }
                shard.frozen.clone().map(|f| (f, pos))
            }
            None => None,
        };
        if let Some(s) = frozen.as_ref().and_then(|(f, pos)| f.get(*pos)) {
            s.read_into(lo_b, hi_b, &mut volatile);
        }
        let (raw_blocks, rollup_blocks) = {
            let sealed = locks::read(&self.sealed, &self.lock_waits.blocks_read);
            let raw: Vec<Arc<Block>> = sealed
                .blocks
                .iter()
                .filter(|b| b.resolution() == Resolution::Raw && b.reader.contains(sid))
                .cloned()
                .collect();
            let rollups: Vec<Arc<Block>> = if res == Resolution::Raw {
                Vec::new()
            } else {
                sealed
                    .blocks
                    .iter()
                    .filter(|b| b.resolution() == res && b.reader.contains(sid))
                    .cloned()
                    .collect()
            };
            (raw, rollups)
        };
        let in_range = |b: &Block| b.reader.meta().max_t >= start && b.reader.meta().min_t <= end;
        // candidate buckets per raw block (index parallel to raw_blocks)
        let mut kept: Vec<Vec<RollupPoint>> = vec![Vec::new(); raw_blocks.len()];
        for (bi, b) in raw_blocks.iter().enumerate() {
            if rollup_blocks.is_empty() || !in_range(b) {
                continue;
            }
            let alone = !raw_blocks
                .iter()
                .any(|o| !Arc::ptr_eq(o, b) && o.overlaps(b.window, b.end));
            let Some((_, _, raw_count)) = b.reader.series_range(sid) else {
                continue;
            };
            if !alone {
                continue;
            }
            let mut points = Vec::new();
            for r in rollup_blocks.iter().filter(|r| r.within(b.window, b.end)) {
                r.reader
                    .read_rollup_cached(sid, i64::MIN, i64::MAX, &mut points, &mut out.pages)
                    .map_err(block_err(r))?;
            }
            points.sort_by_key(|p| p.ts);
            let count: u64 = points.iter().map(|p| p.count).sum();
            let distinct = points.windows(2).all(|w| w[0].ts < w[1].ts);
            if count != raw_count || !distinct {
                continue;
            }
            let dirty = |p: &RollupPoint| {
                let span_end = p.ts.saturating_add(step - 1);
                [&head_part, &volatile].iter().any(|part| {
                    let i = part.partition_point(|s| s.0 < p.ts);
                    part.get(i).is_some_and(|s| s.0 <= span_end)
                })
            };
            if let Some(k) = kept.get_mut(bi) {
                k.extend(
                    points
                        .into_iter()
                        .filter(|p| p.ts >= start && p.ts <= end && !dirty(p) && keep(p.ts, p.last_ts)),
                );
            }
        }
        // raw samples outside kept buckets, merged like `Db::read_series`
        let (mut ts, mut vals, mut part) = (Vec::new(), Vec::new(), Vec::new());
        for (b, k) in raw_blocks.iter().zip(&kept) {
            if !in_range(b) {
                continue;
            }
            let Some((min_t, max_t, _)) = b.reader.series_range(sid) else {
                continue;
            };
            let covered = |t: i64| {
                let i = k.partition_point(|p| p.ts.saturating_add(step - 1) < t);
                k.get(i).is_some_and(|p| p.ts <= t)
            };
            if !has_hole(k, step, start.max(min_t), end.min(max_t)) {
                continue;
            }
            ts.clear();
            vals.clear();
            b.reader
                .read(sid, start, end, &mut ts, &mut vals)
                .map_err(block_err(b))?;
            part.clear();
            part.extend(
                ts.iter()
                    .copied()
                    .zip(vals.iter().copied())
                    .filter(|(t, _)| !covered(*t)),
            );
            out.merge(&part);
        }
        for p in [&volatile, &head_part] {
            part.clear();
            part.extend(p.iter().copied().filter(|s| s.0 >= start && s.0 <= end));
            out.merge(&part);
        }
        out.buckets.extend(kept.into_iter().flatten());
        out.buckets.sort_by_key(|p| p.ts);
        Ok(())
    }
}

/// Whether `[lo, hi]` holds a time outside every bucket span `[p.ts, p.ts + step - 1]`
/// (`kept` ascending).
fn has_hole(kept: &[RollupPoint], step: i64, lo: i64, hi: i64) -> bool {
    if lo > hi {
        return false;
    }
    let mut t = lo;
    for p in kept {
        let span_end = p.ts.saturating_add(step - 1);
        if span_end < t {
            continue;
        }
        if p.ts > t {
            return true;
        }
        t = span_end.saturating_add(1);
        if t > hi {
            return false;
        }
    }
    t <= hi
}

#[derive(Default)]
struct Summary {
    /// Verified rollup pages, reused by the next series.
    pages: crate::block::PageCache,
    buckets: Vec<RollupPoint>,
    samples: Vec<(i64, f64)>,
    scratch: Vec<(i64, f64)>,
}

impl Summary {
    fn clear(&mut self) {
        self.buckets.clear();
        self.samples.clear();
    }

    /// Merges a newer sorted run (newer wins on equal timestamps).
    fn merge(&mut self, newer: &[(i64, f64)]) {
        if newer.is_empty() {
            return;
        }
        if self.samples.is_empty() {
            self.samples.extend_from_slice(newer);
            return;
        }
        self.scratch.clear();
        merge_last_wins(&self.samples, newer, &mut self.scratch);
        std::mem::swap(&mut self.samples, &mut self.scratch);
    }
}

/// The streaming result of [`Db::select_summaries`].
pub struct SelectSummaries<'a> {
    db: &'a Db,
    ids: std::vec::IntoIter<u64>,
    start_ms: i64,
    end_ms: i64,
    res: Resolution,
    keep: &'a KeepBucket<'a>,
    /// Buffers and the page cache, kept across series.
    scratch: Summary,
}

impl<'a> SelectSummaries<'a> {
    /// Keeps only part `shard` of `shards` of the series, as [`crate::Select::shard`].
    pub fn shard(mut self, shard: usize, shards: usize) -> SelectSummaries<'a> {
        self.ids = crate::db::shard_ids(std::mem::take(&mut self.ids), shard, shards);
        self
    }
}

impl Iterator for SelectSummaries<'_> {
    type Item = Result<SummarySeries, DbError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut s = std::mem::take(&mut self.scratch);
        let found = self.next_with(&mut s);
        self.scratch = s;
        found
    }
}

impl SelectSummaries<'_> {
    fn next_with(&mut self, s: &mut Summary) -> Option<Result<SummarySeries, DbError>> {
        for id in self.ids.by_ref() {
            if let Err(e) = self
                .db
                .summarise_series(id, self.start_ms, self.end_ms, self.res, self.keep, s)
            {
                return Some(Err(e));
            }
            if s.buckets.is_empty() && s.samples.is_empty() {
                continue;
            }
            let Some(key) = self.db.index.read().key(SeriesId(id)).cloned() else {
                continue;
            };
            return Some(Ok(SummarySeries {
                id: SeriesId(id),
                key,
                buckets: std::mem::take(&mut s.buckets),
                timestamps: s.samples.iter().map(|p| p.0).collect(),
                values: s.samples.iter().map(|p| p.1).collect(),
            }));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ts: i64) -> RollupPoint {
        RollupPoint {
            ts,
            min: 0.0,
            max: 0.0,
            sum: 0.0,
            count: 1,
            last: 0.0,
            last_ts: ts,
        }
    }

    #[test]
    fn holes_between_bucket_spans() {
        let k = [p(0), p(10), p(30)];
        let table = [
            (0, 19, false),
            (0, 20, true),
            (5, 15, false),
            (30, 39, false),
            (25, 35, true),
            (40, 41, true),
            (-1, 5, true),
            (7, 3, false),
        ];
        for (lo, hi, want) in table {
            assert_eq!(has_hole(&k, 10, lo, hi), want, "[{lo}, {hi}]");
        }
        assert!(has_hole(&[], 10, 0, 0));
    }
}
