//! The in-memory head: recent samples of every series, before they are cut into blocks.
//!
//! Per series: closed [`HeadChunk`]s, one open [`HeadChunk`] for in-order appends (about
//! 1.9 bytes/point on the reference data, heap capacity included), and an out-of-order
//! buffer. Head chunks are NOT re-encoded with the block codec while in memory: the block
//! codec encodes at ~6 M points/s, which would cap appends far below the 10 M points/s goal,
//! while head chunks append at ~50 M/s and decode at ~60 M/s.
//! - an in-order sample (timestamp after the newest in-order one) goes to the open chunk; a
//!   full open chunk (`head_chunk_points`) is closed and a new one started, so a read of a
//!   short range decodes only the chunks that overlap it
//! - any other sample goes to the out-of-order buffer, in arrival order; a full buffer is
//!   folded into the chunks (decode, merge, re-encode)
//! - **last write wins**: on equal timestamps the later write replaces the earlier one;
//!   the out-of-order buffer is always newer than the in-order data it overlaps, and later
//!   buffer entries are newer than earlier ones
//!
//! Reads are `[start, end]`, both ends inclusive.
//!
//! [`Head`] holds the series in [`HEAD_SHARDS`] shards, each behind its own lock: series
//! `id` lives in shard `id % HEAD_SHARDS` at position `id / HEAD_SHARDS`. An append batch
//! locks each shard it touches once, for that shard's samples only; a read of one series
//! locks one shard for reading; a seal splits one shard at a time. So no lock is ever held
//! for O(head), and a reader waits at most for one shard's share of one batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;

use crate::codec::HeadChunk;

/// Number of head shards (a power of two). More shards mean shorter lock holds per append
/// batch and fewer readers behind any one of them, at one lock acquisition per touched
/// shard per batch.
pub(crate) const HEAD_SHARDS: usize = 256;

/// One head shard: the series whose `id % HEAD_SHARDS` is this shard's number, by position
/// `id / HEAD_SHARDS`.
#[derive(Debug, Default)]
pub(crate) struct Shard {
    /// Head data of the shard's series.
    pub series: Vec<MemSeries>,
    /// Data of the shard's series taken out by a seal in progress (same positions), readable
    /// until that seal has published its blocks.
    pub frozen: Option<Arc<Vec<MemSeries>>>,
}

/// The sharded head (see the module doc).
#[derive(Debug)]
pub(crate) struct Head {
    shards: Box<[RwLock<Shard>]>,
    /// Series held; grows only under the WAL append guard.
    len: AtomicUsize,
}

impl Default for Head {
    fn default() -> Head {
        Head {
            shards: (0..HEAD_SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            len: AtomicUsize::new(0),
        }
    }
}

/// The shard and the position in it of series `id`.
#[inline]
pub(crate) fn locate(id: u64) -> Option<(usize, usize)> {
    let id = usize::try_from(id).ok()?;
    Some((id % HEAD_SHARDS, id / HEAD_SHARDS))
}

impl Head {
    /// Series held (ids `0..len`).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// The shards, by number.
    pub fn shards(&self) -> &[RwLock<Shard>] {
        &self.shards
    }

    /// The shard lock of series `id` and its position there (the series may not exist).
    #[inline]
    pub fn shard_of(&self, id: u64) -> Option<(&RwLock<Shard>, usize)> {
        let (s, pos) = locate(id)?;
        Some((self.shards.get(s)?, pos))
    }

    /// Adds empty series up to `n` (exclusive access, at open).
    pub fn grow_to(&mut self, n: usize) {
        let len = self.len.get_mut();
        while *len < n {
            let s = *len % HEAD_SHARDS;
            if let Some(shard) = self.shards.get_mut(s) {
                shard.get_mut().series.push(MemSeries::default());
            }
            *len += 1;
        }
    }

    /// Series `id`, with exclusive access (at open).
    pub fn series_mut(&mut self, id: u64) -> Option<&mut MemSeries> {
        let (s, pos) = locate(id)?;
        self.shards.get_mut(s)?.get_mut().series.get_mut(pos)
    }

    /// Adds the next series (id `len`). The caller holds the WAL append guard, which
    /// serialises every growth.
    pub fn push_series(&self) {
        let id = self.len.load(Ordering::Acquire);
        if let Some(shard) = self.shards.get(id % HEAD_SHARDS) {
            shard.write().series.push(MemSeries::default());
        }
        self.len.store(id + 1, Ordering::Release);
    }
}

/// Series `id` in per-shard frozen sets as a seal collected them (see [`Shard::frozen`]).
pub(crate) fn frozen_series(frozen: &[Option<Arc<Vec<MemSeries>>>], id: u64) -> Option<&MemSeries> {
    let (s, pos) = locate(id)?;
    frozen.get(s)?.as_ref()?.get(pos)
}

/// Head data of one series.
#[derive(Debug, Default)]
pub(crate) struct MemSeries {
    chunks: Vec<HeadChunk>,
    open: HeadChunk,
    ooo: Vec<(i64, f64)>,
}

/// Head sizing limits, from [`crate::Options`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    pub chunk_points: usize,
    pub max_ooo_points: usize,
}

impl MemSeries {
    fn last_in_order(&self) -> Option<i64> {
        self.open
            .last_ts()
            .or_else(|| self.chunks.last().and_then(HeadChunk::last_ts))
    }

    /// Whether the series holds no samples.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.open.is_empty() && self.ooo.is_empty()
    }

    /// Appends one sample.
    #[inline]
    pub fn push(&mut self, ts: i64, v: f64, limits: HeadLimits) {
        if self.last_in_order().is_none_or(|last| ts > last) && self.open.push(ts, v).is_ok() {
            if self.open.len() >= limits.chunk_points {
                self.seal_open();
            }
        } else {
            self.ooo.push((ts, v));
            if self.ooo.len() >= limits.max_ooo_points {
                self.fold_ooo(limits);
            }
        }
    }

    fn seal_open(&mut self) {
        // the next chunk of a series is usually about as large as its last one: start at half
        // of that (two growths by half reach it; open chunks keep little slack)
        let next = HeadChunk::with_byte_capacity(self.open.byte_len() / 2);
        let mut open = std::mem::replace(&mut self.open, next);
        if !open.is_empty() {
            // exact capacities: a closed chunk never grows again, and with 100k series the
            // growth slack of the chunk list and of the chunk's bytes is tens of MiB
            open.shrink_to_fit();
            self.chunks.reserve_exact(1);
            self.chunks.push(open);
        }
    }

    /// Merges the out-of-order buffer into the chunks.
    fn fold_ooo(&mut self, limits: HeadLimits) {
        let mut all = Vec::new();
        self.read_into(i64::MIN, i64::MAX, &mut all);
        *self = MemSeries::default();
        let n = limits.chunk_points.max(1);
        for part in all.chunks(n) {
            for (t, v) in part {
                // sorted and unique: a push cannot fail
                let _ = self.open.push(*t, *v);
            }
            if part.len() >= n {
                self.seal_open();
            }
        }
    }

    /// Appends this series' samples in `[start, end]` to `out`, sorted, one per timestamp
    /// (last write wins).
    pub fn read_into(&self, start: i64, end: i64, out: &mut Vec<(i64, f64)>) {
        let base = out.len();
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        for c in self.chunks.iter().chain(std::iter::once(&self.open)) {
            let overlaps = c
                .first_ts()
                .zip(c.last_ts())
                .is_some_and(|(lo, hi)| hi >= start && lo <= end);
            if !overlaps {
                continue;
            }
            ts.clear();
            vals.clear();
            c.decode_into(&mut ts, &mut vals);
            let lo = ts.partition_point(|t| *t < start);
            let hi = ts.partition_point(|t| *t <= end);
            out.extend(
                ts.get(lo..hi)
                    .unwrap_or_default()
                    .iter()
                    .copied()
                    .zip(vals.get(lo..hi).unwrap_or_default().iter().copied()),
            );
        }
        if self.ooo.iter().any(|p| p.0 >= start && p.0 <= end) {
            let mut newer: Vec<(i64, f64)> = self
                .ooo
                .iter()
                .filter(|p| p.0 >= start && p.0 <= end)
                .copied()
                .collect();
            sort_dedup_last_wins(&mut newer);
            let older = out.split_off(base);
            merge_last_wins(&older, &newer, out);
        }
    }

    /// Splits off the samples older than `cutoff` into a new series, keeping the rest.
    ///
    /// O(chunks), not O(points): chunks wholly on one side of `cutoff` move as they are;
    /// only a chunk straddling it is decoded and re-encoded in two parts. The out-of-order
    /// buffer is partitioned by timestamp in arrival order, so each timestamp stays wholly
    /// on one side and last write wins is unchanged on both.
    pub fn split_before(&mut self, cutoff: i64, limits: HeadLimits) -> MemSeries {
        if self.is_empty() {
            return MemSeries::default();
        }
        if cutoff == i64::MAX || self.max_t().is_some_and(|t| t < cutoff) {
            return std::mem::take(self);
        }
        if self.min_t().is_some_and(|t| t >= cutoff) {
            return MemSeries::default();
        }
        // every buffered out-of-order sample is at or before the newest in-order one (a
        // push goes to the buffer only then); when no in-order sample stays, re-push, so
        // that invariant cannot break for the part that stays
        if self.last_in_order().is_none_or(|t| t < cutoff) {
            return self.split_by_repush(cutoff, limits);
        }
        let mut old = MemSeries::default();
        let mut keep: Vec<HeadChunk> = Vec::new();
        let open = std::mem::take(&mut self.open);
        let n = self.chunks.len();
        let all = std::mem::take(&mut self.chunks)
            .into_iter()
            .chain(std::iter::once(open));
        let (mut ts, mut vals) = (Vec::new(), Vec::new());
        for (i, c) in all.enumerate() {
            let is_open = i == n;
            let (Some(lo), Some(hi)) = (c.first_ts(), c.last_ts()) else {
                if is_open {
                    self.open = c;
                }
                continue;
            };
            if hi < cutoff {
                old.chunks.push(c);
            } else if lo >= cutoff {
                if is_open {
                    self.open = c;
                } else {
                    keep.push(c);
                }
            } else {
                ts.clear();
                vals.clear();
                c.decode_into(&mut ts, &mut vals);
                let mid = ts.partition_point(|t| *t < cutoff);
                let (mut before, mut after) = (HeadChunk::new(), HeadChunk::new());
                for (t, v) in ts.iter().zip(vals.iter()) {
                    // strictly increasing within a chunk: a push cannot fail
                    let _ = if *t < cutoff {
                        before.push(*t, *v)
                    } else {
                        after.push(*t, *v)
                    };
                }
                debug_assert_eq!(before.len(), mid);
                before.shrink_to_fit();
                old.chunks.push(before);
                if is_open {
                    self.open = after;
                } else {
                    after.shrink_to_fit();
                    keep.push(after);
                }
            }
        }
        self.chunks = keep;
        if !self.ooo.is_empty() {
            let (before, after): (Vec<_>, Vec<_>) = self.ooo.drain(..).partition(|p| p.0 < cutoff);
            old.ooo = before;
            self.ooo = after;
        }
        old
    }

    /// `older` and `newer` as one series; on equal timestamps `newer` wins.
    pub fn merged(older: &MemSeries, newer: &MemSeries, limits: HeadLimits) -> MemSeries {
        let (mut a, mut b, mut all) = (Vec::new(), Vec::new(), Vec::new());
        older.read_into(i64::MIN, i64::MAX, &mut a);
        newer.read_into(i64::MIN, i64::MAX, &mut b);
        merge_last_wins(&a, &b, &mut all);
        let mut out = MemSeries::default();
        for (t, v) in all {
            out.push(t, v, limits);
        }
        out
    }

    /// [`MemSeries::split_before`] by decoding everything and pushing it again.
    fn split_by_repush(&mut self, cutoff: i64, limits: HeadLimits) -> MemSeries {
        let mut old = MemSeries::default();
        for (t, v) in self.take_all() {
            if t < cutoff {
                old.push(t, v, limits);
            } else {
                self.push(t, v, limits);
            }
        }
        old
    }

    #[cfg(test)]
    fn clone_for_test(&self) -> MemSeries {
        MemSeries {
            chunks: self.chunks.clone(),
            open: self.open.clone(),
            ooo: self.ooo.clone(),
        }
    }

    /// The newest timestamp held.
    pub fn max_t(&self) -> Option<i64> {
        let a = self.last_in_order();
        let b = self.ooo.iter().map(|p| p.0).max();
        a.max(b)
    }

    /// The oldest timestamp held.
    pub fn min_t(&self) -> Option<i64> {
        let a = self.chunks.first().and_then(HeadChunk::first_ts);
        let b = self.open.first_ts();
        let c = self.ooo.iter().map(|p| p.0).min();
        [a, b, c].into_iter().flatten().min()
    }

    /// Takes every sample out of the series (sorted, last write wins), leaving it empty.
    pub fn take_all(&mut self) -> Vec<(i64, f64)> {
        let mut out = Vec::new();
        self.read_into(i64::MIN, i64::MAX, &mut out);
        *self = MemSeries::default();
        out
    }

    /// Samples held (out-of-order duplicates counted).
    pub fn points(&self) -> usize {
        self.chunks.iter().map(HeadChunk::len).sum::<usize>() + self.open.len() + self.ooo.len()
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.chunks.iter().map(HeadChunk::heap_bytes).sum::<usize>()
            + self.chunks.capacity() * std::mem::size_of::<HeadChunk>()
            + self.open.heap_bytes()
            + self.ooo.capacity() * 16
    }
}

/// Sorts by timestamp, keeping the LAST of equal timestamps in the input order.
pub(crate) fn sort_dedup_last_wins(v: &mut Vec<(i64, f64)>) {
    v.sort_by_key(|p| p.0); // stable: equal timestamps keep arrival order
    let mut w = 0;
    for r in 0..v.len() {
        if w > 0 && v[w - 1].0 == v[r].0 {
            v[w - 1] = v[r];
        } else {
            v[w] = v[r];
            w += 1;
        }
    }
    v.truncate(w);
}

/// Merges two sorted, timestamp-unique runs; on equal timestamps `newer` wins.
pub(crate) fn merge_last_wins(older: &[(i64, f64)], newer: &[(i64, f64)], out: &mut Vec<(i64, f64)>) {
    out.reserve(older.len() + newer.len());
    let (mut i, mut j) = (0, 0);
    while let (Some(a), Some(b)) = (older.get(i), newer.get(j)) {
        match a.0.cmp(&b.0) {
            std::cmp::Ordering::Less => {
                out.push(*a);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(*b);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(*b);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(older.get(i..).unwrap_or_default());
    out.extend_from_slice(newer.get(j..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        chunk_points: 4,
        max_ooo_points: 3,
    };

    #[test]
    fn last_write_wins_across_tail_chunks_and_ooo() {
        // (writes in order, expected read)
        type Run = Vec<(i64, f64)>;
        let cases: Vec<(Run, Run)> = vec![
            (vec![(1, 1.0), (2, 2.0), (2, 3.0)], vec![(1, 1.0), (2, 3.0)]),
            (
                vec![(5, 5.0), (1, 1.0), (3, 3.0)],
                vec![(1, 1.0), (3, 3.0), (5, 5.0)],
            ),
            (
                (0..10)
                    .map(|i| (i, i as f64))
                    .chain([(3, 30.0), (3, 31.0), (9, 90.0), (0, -1.0)])
                    .collect(),
                (0..10)
                    .map(|i| match i {
                        0 => (0, -1.0),
                        3 => (3, 31.0),
                        9 => (9, 90.0),
                        i => (i, i as f64),
                    })
                    .collect(),
            ),
        ];
        for (writes, want) in cases {
            let mut s = MemSeries::default();
            for (t, v) in &writes {
                s.push(*t, *v, LIMITS);
            }
            let mut got = Vec::new();
            s.read_into(i64::MIN, i64::MAX, &mut got);
            assert_eq!(got, want, "{writes:?}");
            assert_eq!(s.take_all(), want);
            assert!(s.is_empty());
        }
    }

    #[test]
    fn split_keeps_every_sample_on_its_side_with_last_write_wins() {
        // in-order runs, rewrites of old timestamps, and gaps, cut at every timestamp
        let mut writes: Vec<(i64, f64)> = (0..30).map(|i| (i * 2, i as f64)).collect();
        writes.extend([(7, 70.0), (10, 100.0), (10, 101.0), (59, 590.0), (0, -1.0)]);
        writes.extend((30..40).map(|i| (i * 2, i as f64)));
        writes.extend([(61, 610.0), (44, 440.0)]);
        for cutoff in -1..85 {
            let mut s = MemSeries::default();
            for (t, v) in &writes {
                s.push(*t, *v, LIMITS);
            }
            let mut want = Vec::new();
            s.read_into(i64::MIN, i64::MAX, &mut want);
            let old = s.clone_for_test().split_by_repush(cutoff, LIMITS);
            let mut old_want = Vec::new();
            old.read_into(i64::MIN, i64::MAX, &mut old_want);
            let got_old = s.split_before(cutoff, LIMITS);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            got_old.read_into(i64::MIN, i64::MAX, &mut a);
            s.read_into(i64::MIN, i64::MAX, &mut b);
            assert_eq!(a, old_want, "old side, cutoff {cutoff}");
            assert!(a.iter().all(|p| p.0 < cutoff) && b.iter().all(|p| p.0 >= cutoff));
            a.extend(b);
            assert_eq!(a, want, "cutoff {cutoff}");
            // the part that stays takes in-order and out-of-order writes correctly
            let next = want.last().map_or(0, |p| p.0) + 1;
            s.push(next, 1.5, LIMITS);
            s.push(cutoff.max(0), 2.5, LIMITS);
            let mut c = Vec::new();
            s.read_into(i64::MIN, i64::MAX, &mut c);
            if cutoff.max(0) < next {
                assert_eq!(c.last(), Some(&(next, 1.5)), "cutoff {cutoff}");
            }
            assert!(c.contains(&(cutoff.max(0), 2.5)), "cutoff {cutoff}: {c:?}");
        }
    }

    #[test]
    fn reads_respect_inclusive_range() {
        let mut s = MemSeries::default();
        for t in 0..20 {
            s.push(t, t as f64, LIMITS);
        }
        let mut got = Vec::new();
        s.read_into(5, 9, &mut got);
        assert_eq!(got.iter().map(|p| p.0).collect::<Vec<_>>(), vec![5, 6, 7, 8, 9]);
    }
}
