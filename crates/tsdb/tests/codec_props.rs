//! Codec properties: bit-exact round trips over arbitrary f64 bit patterns and timestamps for
//! both `HeadChunk` and the sealed encoding, no panic on corrupt input, and the bytes/point
//! figure on data shaped like `shared/bench/peers/gen.py`.

use proptest::prelude::*;
use tsdb::codec::{self, HeadChunk};

// The gen.py data set shape, ported: per cpu 5 random-walk gauges (2 decimals, clamped to
// 0..=100, step N(0, 1.5)), 3 integer counters (+U[0, 5000) per step), 2 constants; 10 s apart.
// Not bit-identical to Python's Mersenne Twister, same distributions.
#[path = "support/splitmix.rs"]
mod splitmix;
use splitmix::Gen;

/// Series `i` of the data set as (timestamps, values).
fn series(g: &mut Gen, i: usize, points: usize) -> (Vec<i64>, Vec<f64>) {
    let start = 1_700_000_000_000i64;
    let ts = (0..points as i64).map(|p| start + p * 10_000).collect();
    let kind = i % 10;
    let mut vals = Vec::with_capacity(points);
    let mut v = match kind {
        0..5 => (g.uniform() * 100.0 * 100.0).round() / 100.0,
        5..8 => (g.next() % 1_000_000_000) as f64,
        8 => 3400.0,
        _ => 1.0,
    };
    for p in 0..points {
        if p > 0 {
            match kind {
                0..5 => v = (v + g.gauss(1.5)).clamp(0.0, 100.0),
                5..8 => v += (g.next() % 5000) as f64,
                _ => {}
            }
        }
        // gen.py prints gauges with two decimals; the server parses that text.
        vals.push(if kind < 5 {
            format!("{v:.2}").parse().unwrap()
        } else {
            v
        });
    }
    (ts, vals)
}

#[test]
fn bytes_per_point_on_the_peer_data_set_shape() {
    let (n_series, points) = (2000, 360);
    let mut g = Gen(42);
    let mut by_kind = [0usize; 3];
    let mut total = 0usize;
    for i in 0..n_series {
        let (ts, vals) = series(&mut g, i, points);
        let mut out = Vec::new();
        codec::encode_series(&ts, &vals, &mut out).unwrap();
        let (mut t2, mut v2) = (Vec::new(), Vec::new());
        codec::decode_series(&out, &mut t2, &mut v2).unwrap();
        assert_eq!((t2, v2), (ts, vals));
        by_kind[match i % 10 {
            0..5 => 0,
            5..8 => 1,
            _ => 2,
        }] += out.len();
        total += out.len();
    }
    let bpp = total as f64 / (n_series * points) as f64;
    let per = |k: usize, share: usize| by_kind[k] as f64 / (n_series * share / 10 * points) as f64;
    println!(
        "sealed codec: {bpp:.4} B/pt (gauges {:.3}, counters {:.3}, constants {:.4})",
        per(0, 5),
        per(1, 3),
        per(2, 2)
    );
    // Entropy of this shape is ~1.04 B/pt; the block budget leaves the codec up to ~1.15.
    assert!(bpp < 1.15, "{bpp}");
}

#[test]
fn block_bytes_per_point_including_index() {
    use model::SeriesId;
    use tsdb::block::{BlockOptions, BlockReader, BlockWriter};
    use tsdb::rollup::Resolution;
    let (n_series, points) = (2000, 360);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b");
    let opts = BlockOptions {
        id: 1,
        resolution: Resolution::Raw,
        seq: 1,
    };
    let mut w = BlockWriter::create(&path, opts).unwrap();
    let mut g = Gen(42);
    for i in 0..n_series {
        let (ts, vals) = series(&mut g, i, points);
        w.add_series(SeriesId(i as u64 + 1), &ts, &vals).unwrap();
    }
    let meta = w.finish().unwrap();
    let r = BlockReader::open(&path).unwrap();
    let bpp = r.disk_bytes() as f64 / meta.points as f64;
    println!(
        "block on disk: {bpp:.4} B/pt ({} bytes, {} points)",
        r.disk_bytes(),
        meta.points
    );
    assert!(bpp < 1.18, "{bpp}");
}

#[test]
fn rollup_bytes_per_raw_point() {
    use tsdb::rollup::{Resolution, rollup};
    let (n_series, points) = (2000, 360);
    let mut g = Gen(42);
    let mut sizes = [0usize; 2];
    for i in 0..n_series {
        let (ts, vals) = series(&mut g, i, points);
        for (k, res) in [Resolution::Minute, Resolution::Hour].into_iter().enumerate() {
            let mut pts = Vec::new();
            rollup(&ts, &vals, res, &mut pts);
            let mut c = codec::RollupColumns::default();
            for p in &pts {
                c.ts.push(p.ts);
                c.last_ts.push(p.last_ts);
                c.count.push(p.count);
                c.min.push(p.min);
                c.max.push(p.max);
                c.sum.push(p.sum);
                c.last.push(p.last);
            }
            let mut out = Vec::new();
            codec::encode_rollups(ts[0], &c, &mut out).unwrap();
            sizes[k] += out.len();
        }
    }
    let per = |k: usize| sizes[k] as f64 / (n_series * points) as f64;
    println!(
        "rollups per raw point: minute {:.4} B, hour {:.4} B",
        per(0),
        per(1)
    );
}

/// Any f64 bit pattern, biased towards the awkward ones.
fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<u64>().prop_map(f64::from_bits),
        Just(f64::NAN),
        Just(-0.0),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MIN_POSITIVE / 7.0),
        (0x7ff0_0000_0000_0001u64..=0x7fff_ffff_ffff_ffff).prop_map(f64::from_bits),
        (-10_000i64..10_000).prop_map(|m| m as f64 / 100.0),
        (0i64..1_000_000).prop_map(|m| m as f64),
    ]
}

/// Strictly increasing timestamps: small regular steps, jitter, huge gaps, negatives, extremes.
fn increasing_ts() -> impl Strategy<Value = Vec<i64>> {
    (
        prop_oneof![Just(i64::MIN), -1_000_000i64..1_000_000, any::<i64>()],
        prop::collection::vec(
            prop_oneof![Just(10_000u64), 1u64..100, 1u64..u64::MAX / 64],
            0..300,
        ),
    )
        .prop_map(|(start, steps)| {
            let mut out = vec![start];
            let mut t = start;
            for s in steps {
                match t.checked_add_unsigned(s) {
                    Some(n) => {
                        t = n;
                        out.push(t);
                    }
                    None => break,
                }
            }
            out
        })
}

fn samples() -> impl Strategy<Value = (Vec<i64>, Vec<f64>)> {
    increasing_ts().prop_flat_map(|ts| {
        let n = ts.len();
        (Just(ts), prop::collection::vec(any_f64(), n))
    })
}

/// Value columns of every kind the sealed codec picks: arbitrary bits (XOR), decimals,
/// near-decimals (running sums of decimals, with float noise: the corrections column), each
/// with a few arbitrary values mixed in (exceptions).
fn shaped_values(n: usize) -> impl Strategy<Value = Vec<f64>> {
    let exceptions = prop::collection::vec((any::<prop::sample::Index>(), any_f64()), 0..3);
    (
        prop_oneof![
            prop::collection::vec(any_f64(), n),
            prop::collection::vec(-100_000i64..100_000, n)
                .prop_map(|m| m.into_iter().map(|m| m as f64 / 100.0).collect()),
            prop::collection::vec(0i64..5_000, n).prop_map(|steps| {
                let mut acc = 491.14;
                steps
                    .into_iter()
                    .map(|s| {
                        acc += s as f64;
                        acc
                    })
                    .collect()
            }),
        ],
        exceptions,
    )
        .prop_map(|(mut v, exc)| {
            let len = v.len();
            for (at, x) in exc {
                if len > 0 {
                    v[at.index(len)] = x;
                }
            }
            v
        })
}

/// Samples with sorted or arbitrary timestamps, shaped values, and an `end` that is often a
/// sample's timestamp or next to one.
/// A bound near one of `ts` (or anywhere, or an extreme).
fn bound_near(ts: Vec<i64>) -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        Just(i64::MIN),
        Just(i64::MAX),
        (any::<prop::sample::Index>(), -1i64..=1).prop_map(move |(i, d)| {
            if ts.is_empty() {
                0
            } else {
                ts[i.index(ts.len())].saturating_add(d)
            }
        }),
    ]
}

/// Samples (sorted timestamps or any) and a window `[start, end]` whose bounds are often
/// at or next to a sample.
fn window_samples() -> impl Strategy<Value = (Vec<i64>, Vec<f64>, i64, i64)> {
    prop_oneof![
        increasing_ts(),
        prop::collection::vec(prop_oneof![any::<i64>(), -1_000i64..1_000], 0..200),
    ]
    .prop_flat_map(|ts| {
        let n = ts.len();
        (
            Just(ts.clone()),
            shaped_values(n),
            bound_near(ts.clone()),
            bound_near(ts),
        )
    })
}

fn any_layout() -> impl Strategy<Value = codec::PackedLayout> {
    prop::sample::select(vec![
        codec::PackedLayout::OldestFirst,
        codec::PackedLayout::NewestFirst,
        codec::PackedLayout::NewestFirstTable,
    ])
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #[test]
    fn sealed_round_trips_bit_exactly((ts, vals) in samples()) {
        let mut out = Vec::new();
        codec::encode_series(&ts, &vals, &mut out).unwrap();
        let (mut t2, mut v2) = (Vec::new(), Vec::new());
        codec::decode_series(&out, &mut t2, &mut v2).unwrap();
        prop_assert_eq!(t2, ts);
        prop_assert_eq!(bits(&v2), bits(&vals));
    }

    #[test]
    fn decoding_a_window_equals_decoding_all_then_cutting(
        (ts, vals, start, end) in window_samples(),
        base in any::<i64>(),
        layout in prop::option::of(any_layout()),
    ) {
        // `None`: the layout the database picks.
        let mut out = Vec::new();
        match layout {
            Some(layout) => codec::encode_series_packed(base, &ts, &vals, layout, &mut out).unwrap(),
            None => codec::encode_series_with_base(base, &ts, &vals, &mut out).unwrap(),
        }
        let (mut t_all, mut v_all) = (Vec::new(), Vec::new());
        codec::decode_series_with_base(base, &out, &mut t_all, &mut v_all).unwrap();
        prop_assert_eq!(&t_all, &ts);
        prop_assert_eq!(bits(&v_all), bits(&vals));
        let (lo, hi) = codec::sealed::window_bounds(&ts, start, end);
        // The window rule, stated independently: for sorted timestamps exactly [start, end].
        if ts.windows(2).all(|w| w[0] < w[1]) {
            let want: Vec<i64> = ts.iter().copied().filter(|&t| t >= start && t <= end).collect();
            prop_assert_eq!(&ts[lo..hi], &want[..]);
        }
        // Appends after what the vectors already hold.
        let (mut t2, mut v2) = (vec![7i64], vec![0.5f64]);
        let n = codec::decode_series_window(base, &out, start, end, &mut t2, &mut v2).unwrap();
        prop_assert_eq!(n, ts.len());
        prop_assert_eq!(&t2[1..], &ts[lo..hi]);
        prop_assert_eq!(bits(&v2[1..]), bits(&vals[lo..hi]));
        prop_assert_eq!((t2[0], v2[0]), (7, 0.5));
    }

    #[test]
    fn head_chunk_round_trips_bit_exactly((ts, vals) in samples()) {
        let mut c = HeadChunk::new();
        for (&t, &v) in ts.iter().zip(&vals) {
            c.push(t, v).unwrap();
        }
        prop_assert_eq!(c.len(), ts.len());
        prop_assert_eq!(c.last_ts(), ts.last().copied());
        let (mut t2, mut v2) = (Vec::new(), Vec::new());
        c.decode_into(&mut t2, &mut v2);
        prop_assert_eq!(t2, ts);
        prop_assert_eq!(bits(&v2), bits(&vals));
    }

    #[test]
    fn rollups_round_trip_bit_exactly(
        rows in prop::collection::vec(
            (any::<i64>(), any::<i64>(), any::<u64>(), any_f64(), any_f64(), any_f64(), any_f64()),
            0..100,
        ),
        base in any::<i64>(),
    ) {
        let mut c = codec::RollupColumns::default();
        for (ts, last_ts, count, min, max, sum, last) in rows {
            c.ts.push(ts);
            c.last_ts.push(last_ts);
            c.count.push(count);
            c.min.push(min);
            c.max.push(max);
            c.sum.push(sum);
            c.last.push(last);
        }
        let mut out = Vec::new();
        codec::encode_rollups(base, &c, &mut out).unwrap();
        let mut back = codec::RollupColumns::default();
        codec::decode_rollups(base, &out, &mut back).unwrap();
        prop_assert_eq!(&back.ts, &c.ts);
        prop_assert_eq!(&back.last_ts, &c.last_ts);
        prop_assert_eq!(&back.count, &c.count);
        for (a, b) in [(&back.min, &c.min), (&back.max, &c.max), (&back.sum, &c.sum), (&back.last, &c.last)] {
            prop_assert_eq!(bits(a), bits(b));
        }
    }

    #[test]
    fn decimal_rollups_round_trip_bit_exactly(
        rows in prop::collection::vec(
            (any::<i64>(), any::<u64>(), prop::array::uniform4(-(1i64 << 52)..(1i64 << 52))),
            1..100,
        ),
        scale in 0u32..4,
    ) {
        let p = 10f64.powi(scale as i32);
        let mut c = codec::RollupColumns::default();
        for (ts, count, [a, b, s, l]) in rows {
            c.ts.push(ts);
            c.last_ts.push(ts.wrapping_add(5));
            c.count.push(count);
            c.min.push(a as f64 / p);
            c.max.push(b as f64 / p);
            c.sum.push(s as f64 / p);
            c.last.push(l as f64 / p);
        }
        let mut out = Vec::new();
        codec::encode_rollups(0, &c, &mut out).unwrap();
        let mut back = codec::RollupColumns::default();
        codec::decode_rollups(0, &out, &mut back).unwrap();
        prop_assert_eq!(&back.count, &c.count);
        for (a, b) in [(&back.min, &c.min), (&back.max, &c.max), (&back.sum, &c.sum), (&back.last, &c.last)] {
            prop_assert_eq!(bits(a), bits(b));
        }
    }

    #[test]
    fn corrupt_sealed_input_never_panics(
        (ts, vals) in samples(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        layout in any_layout(),
    ) {
        let mut out = Vec::new();
        codec::encode_series_packed(0, &ts, &vals, layout, &mut out).unwrap();
        for (at, x) in flips {
            let i = at.index(out.len());
            out[i] ^= x.max(1);
        }
        let (mut t2, mut v2) = (Vec::new(), Vec::new());
        let _ = codec::decode_series(&out, &mut t2, &mut v2);
        let cut = cut.index(out.len() + 1);
        let _ = codec::decode_series(&out[..cut], &mut t2, &mut v2);
        let mid = ts.get(ts.len() / 2).copied().unwrap_or(0);
        for (start, end) in [(i64::MIN, i64::MIN), (i64::MIN, mid), (mid, i64::MAX), (0, 0)] {
            let _ = codec::decode_series_window(0, &out, start, end, &mut t2, &mut v2);
            let _ = codec::decode_series_window(0, &out[..cut], start, end, &mut t2, &mut v2);
        }
        prop_assert!(t2.len() <= 10 * codec::MAX_POINTS);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let (mut t, mut v) = (Vec::new(), Vec::new());
        let _ = codec::decode_series(&bytes, &mut t, &mut v);
        let _ = codec::decode_series_window(0, &bytes, 0, 0, &mut t, &mut v);
        let _ = codec::decode_series_window(0, &bytes, i64::MIN, 0, &mut t, &mut v);
        let mut r = codec::RollupColumns::default();
        let _ = codec::decode_rollups(0, &bytes, &mut r);
    }
}
