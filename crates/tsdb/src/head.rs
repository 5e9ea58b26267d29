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

use crate::codec::HeadChunk;

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
    pub fn split_before(&mut self, cutoff: i64, limits: HeadLimits) -> MemSeries {
        if self.is_empty() {
            return MemSeries::default();
        }
        if cutoff == i64::MAX {
            return std::mem::take(self);
        }
        if self.min_t().is_some_and(|t| t >= cutoff) {
            return MemSeries::default();
        }
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
