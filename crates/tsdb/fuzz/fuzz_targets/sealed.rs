//! Fuzzes the sealed codec two ways. Decoding: arbitrary bytes through every decoder, with
//! several windows. Invariants: no panic, and a successful decode appends at most the record's
//! sample count. Round trip: the bytes also describe a series (timestamps steps, decimal or
//! raw values), which every packed layout must return bit for bit, whole and windowed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tsdb::codec::{self, PackedLayout};

const LAYOUTS: [PackedLayout; 3] = [
    PackedLayout::OldestFirst,
    PackedLayout::NewestFirst,
    PackedLayout::NewestFirstTable,
];

fn windows(ts: &[i64]) -> [(i64, i64); 4] {
    let mid = ts.get(ts.len() / 2).copied().unwrap_or(0);
    [(i64::MIN, i64::MAX), (i64::MIN, mid), (mid, i64::MAX), (0, 0)]
}

/// A series described by `data`: per 3 bytes a timestamp step, a mantissa step and a flag
/// that sometimes stores an odd value (NaN, a float with noise, a huge jump).
fn series(data: &[u8]) -> (Vec<i64>, Vec<f64>) {
    let scale = data.first().map_or(0, |b| i32::from(b % 4));
    let (mut t, mut m) = (1_700_000_000_000i64, 0i64);
    let (mut ts, mut vals) = (Vec::new(), Vec::new());
    for c in data.get(1..).unwrap_or_default().chunks_exact(3) {
        t = t.wrapping_add(i64::from(c[0]) * 1_000);
        m = m.wrapping_add(i64::from(c[1] as i8));
        let v = match c[2] {
            0 => f64::NAN,
            1 => m as f64 * 0.1 + 0.2,
            2 => (m as f64) * 1e17,
            3 => f64::from_bits(u64::from(c[1]) << 56 | u64::from(c[0])),
            _ => m as f64 / 10f64.powi(scale),
        };
        ts.push(t);
        vals.push(v);
    }
    (ts, vals)
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

fuzz_target!(|data: &[u8]| {
    let (mut t, mut v) = (Vec::new(), Vec::new());
    for (start, end) in windows(&[]) {
        t.clear();
        v.clear();
        if let Ok(n) = codec::decode_series_window(0, data, start, end, &mut t, &mut v) {
            assert!(t.len() <= n && v.len() == t.len());
        }
    }
    let mut r = codec::RollupColumns::default();
    let _ = codec::decode_rollups(0, data, &mut r);

    let (ts, vals) = series(data);
    for layout in LAYOUTS {
        let mut rec = Vec::new();
        codec::encode_series_packed(5, &ts, &vals, layout, &mut rec).expect("encodes");
        for (start, end) in windows(&ts) {
            let (mut t, mut v) = (Vec::new(), Vec::new());
            let n = codec::decode_series_window(5, &rec, start, end, &mut t, &mut v).expect("decodes");
            assert_eq!(n, ts.len());
            let (lo, hi) = codec::sealed::window_bounds(&ts, start, end);
            assert_eq!(t, ts[lo..hi], "{layout:?}");
            assert_eq!(bits(&v), bits(&vals[lo..hi]), "{layout:?}");
        }
    }
    let mut rec = Vec::new();
    codec::encode_series_with_base(5, &ts, &vals, &mut rec).expect("encodes");
    let (mut t, mut v) = (Vec::new(), Vec::new());
    codec::decode_series_with_base(5, &rec, &mut t, &mut v).expect("decodes");
    assert_eq!(t, ts);
    assert_eq!(bits(&v), bits(&vals));
});
