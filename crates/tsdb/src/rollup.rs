//! Rollups: per-bucket min/max/sum/count/last of a series, for reads over long ranges.
//!
//! Design constraints and invariants:
//! - Buckets are aligned to the Unix epoch: a point at `ts` belongs to the bucket starting at
//!   `ts.div_euclid(step) * step` (also for negative timestamps). A rollup point's `ts` is
//!   that bucket start.
//! - **Only stale markers are skipped** (the exact bit pattern [`STALE_NAN_BITS`], as
//!   PromQL's `*_over_time` functions skip them): a bucket holding only stale markers yields
//!   no point. Any other NaN is a sample, as in PromQL: it counts in `count`, makes `sum` NaN,
//!   is `last` when it is the newest sample, and is ignored by `min`/`max` unless every
//!   sample of the bucket is NaN (PromQL's `min_over_time`/`max_over_time` rule, which is
//!   also what `f64::min`/`f64::max` do, so combining partial rollups keeps it). ±inf are
//!   ordinary values (so `sum` may become inf, or NaN from `inf + -inf`).
//! - `sum` adds decimals exactly ([`decimal_add`]): the sum of two-decimal samples is the
//!   correctly rounded two-decimal number, without binary float noise, so it compresses.
//! - `last` is the value with the greatest timestamp in the bucket; `last_ts` records that
//!   timestamp so that partial rollups of the same bucket (e.g. from a backfilled block)
//!   combine exactly with [`RollupPoint::combine`].
//! - Combining assumes the two partial rollups cover disjoint samples; a sample written twice
//!   (same series and timestamp in two blocks) would be counted twice. Compaction of raw data
//!   resolves such duplicates (last write wins) before rollups are recomputed from it.

use crate::codec::sealed::{from_mantissa, to_mantissa};

/// The bit pattern of a Prometheus staleness marker (`StaleNaN`): a NaN that marks a series
/// as gone, which rollups skip.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is a Prometheus staleness marker (exactly [`STALE_NAN_BITS`]).
pub fn is_stale_marker(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// The resolution of a block or a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolution {
    /// Raw samples.
    Raw,
    /// One rollup point per minute.
    Minute,
    /// One rollup point per hour.
    Hour,
}

impl Resolution {
    /// Bucket width in milliseconds (1 for raw: every millisecond is its own bucket).
    pub const fn step_ms(self) -> i64 {
        match self {
            Resolution::Raw => 1,
            Resolution::Minute => 60_000,
            Resolution::Hour => 3_600_000,
        }
    }

    /// The on-disk code of this resolution.
    pub const fn code(self) -> u8 {
        match self {
            Resolution::Raw => 0,
            Resolution::Minute => 1,
            Resolution::Hour => 2,
        }
    }

    /// Inverse of [`Resolution::code`].
    pub const fn from_code(code: u8) -> Option<Resolution> {
        match code {
            0 => Some(Resolution::Raw),
            1 => Some(Resolution::Minute),
            2 => Some(Resolution::Hour),
            _ => None,
        }
    }

    /// The start of the bucket holding `ts`.
    pub const fn bucket(self, ts: i64) -> i64 {
        let step = self.step_ms();
        ts.div_euclid(step).wrapping_mul(step)
    }

    /// The coarsest resolution whose buckets are exact for a read with this step: the largest
    /// bucket width that divides `step_ms` (raw when none does).
    pub fn coarsest_exact_for(step_ms: i64) -> Resolution {
        [Resolution::Hour, Resolution::Minute]
            .into_iter()
            .find(|r| step_ms > 0 && step_ms % r.step_ms() == 0)
            .unwrap_or(Resolution::Raw)
    }
}

/// The aggregate of one series over one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollupPoint {
    /// Bucket start (UTC ms).
    pub ts: i64,
    /// Smallest value, ignoring NaN unless every value is NaN.
    pub min: f64,
    /// Largest value, ignoring NaN unless every value is NaN.
    pub max: f64,
    /// Sum of the values (NaN when any value is NaN).
    pub sum: f64,
    /// Number of samples, stale markers excepted.
    pub count: u64,
    /// The value with the greatest timestamp.
    pub last: f64,
    /// The timestamp of `last`.
    pub last_ts: i64,
}

impl RollupPoint {
    fn first(bucket: i64, ts: i64, v: f64) -> RollupPoint {
        RollupPoint {
            ts: bucket,
            min: v,
            max: v,
            sum: v,
            count: 1,
            last: v,
            last_ts: ts,
        }
    }

    /// Folds `other` (same bucket, disjoint samples) into `self`. On equal `last_ts`, `other`
    /// is taken to be the newer write and its `last` wins.
    pub fn combine(&mut self, other: &RollupPoint) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum = decimal_add(self.sum, other.sum);
        self.count = self.count.saturating_add(other.count);
        if other.last_ts >= self.last_ts {
            self.last = other.last;
            self.last_ts = other.last_ts;
        }
    }
}

/// Largest decimal scale for which [`decimal_add`] sums exactly.
const MAX_SUM_SCALE: u8 = 9;

/// The smallest scale at which `v` is a decimal (see `crate::codec`), up to `MAX_SUM_SCALE`.
fn decimal_scale(v: f64) -> Option<(i64, u8)> {
    (0..=MAX_SUM_SCALE).find_map(|e| to_mantissa(v, e).map(|m| (m, e)))
}

/// `a + b`, computed exactly when both are decimals (e.g. `37.42 + 0.01` is `37.43`, not
/// `37.430000000000007`): sums of decimal samples stay decimal, so they compress as well as
/// the samples. Otherwise ordinary float addition.
pub fn decimal_add(a: f64, b: f64) -> f64 {
    if let (Some((ma, ea)), Some((mb, eb))) = (decimal_scale(a), decimal_scale(b)) {
        let e = ea.max(eb);
        let scale = |m: i64, from: u8| i128::from(m) * 10i128.pow(u32::from(e - from));
        let m = scale(ma, ea) + scale(mb, eb);
        if let Ok(m) = i64::try_from(m)
            && m.unsigned_abs() <= 1 << 53
        {
            return from_mantissa(m, e);
        }
    }
    a + b
}

/// Appends the rollup of samples `ts`/`vals` (sorted by time) at `res` to `out`. Unsorted
/// input yields several points for a bucket; pass it through [`merge_rollups`] to fold them.
pub fn rollup(ts: &[i64], vals: &[f64], res: Resolution, out: &mut Vec<RollupPoint>) {
    let start = out.len();
    for (&t, &v) in ts.iter().zip(vals) {
        if is_stale_marker(v) {
            continue;
        }
        let b = res.bucket(t);
        let own = out.len() > start;
        match out.last_mut() {
            Some(p) if own && p.ts == b => p.combine(&RollupPoint::first(b, t, v)),
            _ => out.push(RollupPoint::first(b, t, v)),
        }
    }
}

/// Re-aggregates rollup points (sorted by bucket) into the coarser `res`, appending to `out`
/// (e.g. minute points into hour points).
pub fn coarsen(points: &[RollupPoint], res: Resolution, out: &mut Vec<RollupPoint>) {
    let start = out.len();
    for p in points {
        let mut q = *p;
        q.ts = res.bucket(p.ts);
        let own = out.len() > start;
        match out.last_mut() {
            Some(last) if own && last.ts == q.ts => last.combine(&q),
            _ => out.push(q),
        }
    }
}

/// Merges two rollup series sorted by bucket into `out`, combining points of the same bucket
/// ([`RollupPoint::combine`]; `newer` wins ties on `last_ts`).
pub fn merge_rollups(older: &[RollupPoint], newer: &[RollupPoint], out: &mut Vec<RollupPoint>) {
    let (mut i, mut j) = (0, 0);
    let start = out.len();
    loop {
        let next = match (older.get(i), newer.get(j)) {
            (Some(a), Some(b)) if a.ts <= b.ts => {
                i += 1;
                *a
            }
            (_, Some(b)) => {
                j += 1;
                *b
            }
            (Some(a), None) => {
                i += 1;
                *a
            }
            (None, None) => break,
        };
        let own = out.len() > start;
        match out.last_mut() {
            Some(last) if own && last.ts == next.ts => last.combine(&next),
            _ => out.push(next),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ts: i64, min: f64, max: f64, sum: f64, count: u64, last: f64, last_ts: i64) -> RollupPoint {
        RollupPoint {
            ts,
            min,
            max,
            sum,
            count,
            last,
            last_ts,
        }
    }

    /// Points with every float as bits, so NaN compares equal to NaN.
    fn bits(points: &[RollupPoint]) -> Vec<(i64, u64, u64, u64, u64, u64, i64)> {
        points
            .iter()
            .map(|p| {
                (
                    p.ts,
                    p.min.to_bits(),
                    p.max.to_bits(),
                    p.sum.to_bits(),
                    p.count,
                    p.last.to_bits(),
                    p.last_ts,
                )
            })
            .collect()
    }

    /// (case, samples, resolution, expected points)
    type Case<'a> = (&'a str, &'a [(i64, f64)], Resolution, Vec<RollupPoint>);

    #[test]
    fn rollup_table() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        #[rustfmt::skip]
        let table: &[Case<'_>] = &[
            ("empty", &[], Resolution::Minute, vec![]),
            ("one bucket", &[(0, 1.0), (10_000, 3.0), (59_999, 2.0)], Resolution::Minute,
                vec![p(0, 1.0, 3.0, 6.0, 3, 2.0, 59_999)]),
            ("two buckets", &[(59_999, 1.0), (60_000, 5.0)], Resolution::Minute,
                vec![p(0, 1.0, 1.0, 1.0, 1, 1.0, 59_999), p(60_000, 5.0, 5.0, 5.0, 1, 5.0, 60_000)]),
            ("stale markers skipped, other NaN counted and in sum and last", &[(0, 4.0), (1_000, stale), (2_000, f64::NAN)], Resolution::Minute,
                vec![p(0, 4.0, 4.0, f64::NAN, 2, f64::NAN, 2_000)]),
            ("NaN ignored by min and max", &[(0, f64::NAN), (1_000, 3.0), (2_000, 1.0)], Resolution::Minute,
                vec![p(0, 1.0, 3.0, f64::NAN, 3, 1.0, 2_000)]),
            ("only stale markers: no point", &[(0, stale)], Resolution::Hour, vec![]),
            ("only NaN: a NaN point", &[(0, f64::NAN)], Resolution::Hour,
                vec![p(0, f64::NAN, f64::NAN, f64::NAN, 1, f64::NAN, 0)]),
            ("negative timestamps align to the epoch", &[(-1, 7.0)], Resolution::Hour,
                vec![p(-3_600_000, 7.0, 7.0, 7.0, 1, 7.0, -1)]),
            ("hour", &[(0, 1.0), (3_599_999, -1.0)], Resolution::Hour,
                vec![p(0, -1.0, 1.0, 0.0, 2, -1.0, 3_599_999)]),
        ];
        for (name, samples, res, want) in table {
            let ts: Vec<i64> = samples.iter().map(|s| s.0).collect();
            let vals: Vec<f64> = samples.iter().map(|s| s.1).collect();
            let mut out = Vec::new();
            rollup(&ts, &vals, *res, &mut out);
            assert_eq!(bits(&out), bits(want), "{name}");
        }
    }

    #[test]
    fn decimal_sums_are_exact() {
        let table = [
            (37.42, 0.01, 37.43),
            (0.1, 0.2, 0.3),
            (1e300, 1e300, 2e300),
            (1.0 / 3.0, 1.0, 1.0 / 3.0 + 1.0),
            (f64::INFINITY, 1.0, f64::INFINITY),
            (-5.5, 5.5, 0.0),
        ];
        for (a, b, want) in table {
            assert_eq!(decimal_add(a, b).to_bits(), want.to_bits(), "{a} + {b}");
        }
    }

    #[test]
    fn merge_combines_partial_buckets() {
        let older = [
            p(0, 1.0, 2.0, 3.0, 2, 2.0, 20),
            p(120_000, 9.0, 9.0, 9.0, 1, 9.0, 120_000),
        ];
        let newer = [
            p(0, 0.5, 1.5, 2.0, 2, 0.5, 10),
            p(60_000, 4.0, 4.0, 4.0, 1, 4.0, 60_000),
        ];
        let mut out = Vec::new();
        merge_rollups(&older, &newer, &mut out);
        assert_eq!(
            out,
            vec![
                p(0, 0.5, 2.0, 5.0, 4, 2.0, 20),
                p(60_000, 4.0, 4.0, 4.0, 1, 4.0, 60_000),
                p(120_000, 9.0, 9.0, 9.0, 1, 9.0, 120_000),
            ]
        );
    }

    #[test]
    fn coarsen_minutes_to_hours_equals_direct_rollup() {
        let ts: Vec<i64> = (0..1000).map(|i| i * 10_000).collect();
        let vals: Vec<f64> = (0..1000).map(|i| ((i * 37) % 101) as f64).collect();
        let (mut minutes, mut via, mut direct) = (Vec::new(), Vec::new(), Vec::new());
        rollup(&ts, &vals, Resolution::Minute, &mut minutes);
        coarsen(&minutes, Resolution::Hour, &mut via);
        rollup(&ts, &vals, Resolution::Hour, &mut direct);
        assert_eq!(via, direct);
    }

    #[test]
    fn coarsest_exact_resolution() {
        let table = [
            (0, Resolution::Raw),
            (15_000, Resolution::Raw),
            (60_000, Resolution::Minute),
            (300_000, Resolution::Minute),
            (3_600_000, Resolution::Hour),
            (86_400_000, Resolution::Hour),
        ];
        for (step, want) in table {
            assert_eq!(Resolution::coarsest_exact_for(step), want, "{step}");
        }
    }
}
