//! Rollups against a naive PromQL-style computation (`*_over_time` per bucket): stale
//! markers are skipped, every other NaN is a sample (counted, poisons `sum`, can be `last`,
//! ignored by `min`/`max` unless all samples are NaN); and rollups of two disjoint halves
//! combined equal the rollup of the whole.

use proptest::prelude::*;
use tsdb::rollup::{self, Resolution, RollupPoint, STALE_NAN_BITS};

const STEP: i64 = 60_000;

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => (-10_000i64..10_000).prop_map(|m| m as f64 / 100.0),
        1 => Just(f64::NAN),
        1 => Just(f64::from_bits(STALE_NAN_BITS)),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
    ]
}

/// Sorted unique timestamps over a few minute buckets, with values.
fn samples() -> impl Strategy<Value = Vec<(i64, f64)>> {
    proptest::collection::btree_map(-3 * STEP..5 * STEP, value(), 0..60).prop_map(|m| m.into_iter().collect())
}

/// PromQL's min_over_time rule: a NaN is replaced by any later value.
fn promql_min(vals: &[f64], less: fn(f64, f64) -> bool) -> f64 {
    let mut m = vals[0];
    for &f in vals {
        if less(f, m) || m.is_nan() {
            m = f;
        }
    }
    m
}

fn naive(samples: &[(i64, f64)]) -> Vec<(i64, u64, u64, bool, u64, u64, i64)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < samples.len() {
        let b = samples[i].0.div_euclid(STEP) * STEP;
        let bucket: Vec<(i64, f64)> = samples[i..]
            .iter()
            .take_while(|s| s.0.div_euclid(STEP) * STEP == b)
            .copied()
            .collect();
        i += bucket.len();
        let kept: Vec<(i64, f64)> = bucket
            .into_iter()
            .filter(|s| s.1.to_bits() != STALE_NAN_BITS)
            .collect();
        let Some(&(last_ts, last)) = kept.last() else {
            continue;
        };
        let vals: Vec<f64> = kept.iter().map(|s| s.1).collect();
        let sum = vals.iter().fold(0.0, |a, &v| rollup::decimal_add(a, v));
        out.push((
            b,
            promql_min(&vals, |a, b| a < b).to_bits(),
            promql_min(&vals, |a, b| a > b).to_bits(),
            sum.is_nan(),
            vals.len() as u64,
            last.to_bits(),
            last_ts,
        ));
    }
    out
}

fn shape(points: &[RollupPoint]) -> Vec<(i64, u64, u64, bool, u64, u64, i64)> {
    points
        .iter()
        .map(|p| {
            let nan_as_one = |v: f64| {
                if v.is_nan() {
                    f64::NAN.to_bits()
                } else {
                    v.to_bits()
                }
            };
            (
                p.ts,
                nan_as_one(p.min),
                nan_as_one(p.max),
                p.sum.is_nan(),
                p.count,
                p.last.to_bits(),
                p.last_ts,
            )
        })
        .collect()
}

fn nan_canonical(v: &mut [(i64, u64, u64, bool, u64, u64, i64)]) {
    for p in v {
        for x in [&mut p.1, &mut p.2] {
            if f64::from_bits(*x).is_nan() {
                *x = f64::NAN.to_bits();
            }
        }
    }
}

proptest! {
    #[test]
    fn rollups_match_promql_over_time(samples in samples()) {
        let ts: Vec<i64> = samples.iter().map(|s| s.0).collect();
        let vals: Vec<f64> = samples.iter().map(|s| s.1).collect();
        let mut got = Vec::new();
        rollup::rollup(&ts, &vals, Resolution::Minute, &mut got);
        let mut want = naive(&samples);
        nan_canonical(&mut want);
        prop_assert_eq!(shape(&got), want);
        // sums of finite decimals are exact
        for p in &got {
            let bucket: Vec<f64> = samples
                .iter()
                .filter(|s| s.0.div_euclid(STEP) * STEP == p.ts && s.1.to_bits() != STALE_NAN_BITS)
                .map(|s| s.1)
                .collect();
            if bucket.iter().all(|v| v.is_finite()) {
                let cents: i64 = bucket.iter().map(|v| (v * 100.0).round() as i64).sum();
                prop_assert_eq!(p.sum, cents as f64 / 100.0);
            }
        }
    }

    #[test]
    fn combining_disjoint_halves_equals_the_whole(samples in samples(), mask in any::<u64>()) {
        let split = |keep: bool| -> (Vec<i64>, Vec<f64>) {
            samples
                .iter()
                .enumerate()
                .filter(|(i, _)| ((mask >> (i % 64)) & 1 == 1) == keep)
                .map(|(_, s)| *s)
                .unzip()
        };
        let ((ta, va), (tb, vb)) = (split(true), split(false));
        let (mut a, mut b, mut merged, mut whole) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        rollup::rollup(&ta, &va, Resolution::Minute, &mut a);
        rollup::rollup(&tb, &vb, Resolution::Minute, &mut b);
        rollup::merge_rollups(&a, &b, &mut merged);
        let (ts, vals): (Vec<i64>, Vec<f64>) = samples.iter().copied().unzip();
        rollup::rollup(&ts, &vals, Resolution::Minute, &mut whole);
        prop_assert_eq!(shape(&merged), shape(&whole));
        for (m, w) in merged.iter().zip(&whole) {
            if !w.sum.is_nan() {
                prop_assert_eq!(m.sum, w.sum);
            }
        }
    }
}
