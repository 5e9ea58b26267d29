//! Codec throughput and size on data shaped like `shared/bench/peers/gen.py`.
//!
//! Measures, per point: sealed `encode_series` and `decode_series` (what compaction and reads
//! pay), `HeadChunk::push` and `HeadChunk::decode_into` (what ingest and head reads pay). Before
//! the timings it prints bytes/point of the sealed encoding and of head chunks, the figure the
//! issue compares with VictoriaMetrics (1.58 B/pt on disk; goal <= 1.26 including the index).
//!
//! `sealed_decode_xor` decodes full-precision random walks instead (the XOR float path, which
//! gen.py's shape never takes); its size is printed too. `sealed_decode_range_coded` decodes
//! the same data forced into the range-coded layout (tag 4) that table-coded records (tag 5)
//! replace where they are about as small: the two side by side are that choice's speed-up.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-tsdb cargo bench -p tsdb --bench codec`
//! (1,000 series x 360 points; set `CODEC_BENCH_SERIES` for another size).
//!
//! On a loaded machine timings swing by 2x; instruction counts do not. Per decoded point
//! (36,000 points, one iteration, only time inside `decode_series` counted):
//! `CODEC_BENCH_SERIES=100 valgrind --tool=callgrind --branch-sim=yes
//! --toggle-collect='*decode_series*' <bench binary> --bench sealed_decode --sample-count 1
//! --sample-size 1` and divide the `summary:` line of `callgrind.out.*` by 36,000 (Ir,
//! conditional branches, simulated mispredictions; the simulator's predictor has no history,
//! so it counts every loop exit as a miss).

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use tsdb::codec::{self, HeadChunk};

const POINTS: usize = 360;

// gen.py's shape: per cpu 5 random-walk gauges (2 decimals), 3 counters, 2 constants.
#[path = "../tests/support/splitmix.rs"]
mod splitmix;
use splitmix::Gen;

struct Series {
    ts: Vec<i64>,
    vals: Vec<f64>,
}

fn data() -> Vec<Series> {
    let n: usize = std::env::var("CODEC_BENCH_SERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut g = Gen(42);
    (0..n)
        .map(|i| {
            let ts = (0..POINTS as i64)
                .map(|p| 1_700_000_000_000 + p * 10_000)
                .collect();
            let kind = i % 10;
            let mut v = match kind {
                0..5 => (g.uniform() * 10_000.0).round() / 100.0,
                5..8 => (g.next() % 1_000_000_000) as f64,
                8 => 3400.0,
                _ => 1.0,
            };
            let vals = (0..POINTS)
                .map(|p| {
                    if p > 0 {
                        match kind {
                            0..5 => v = (v + g.gauss(1.5)).clamp(0.0, 100.0),
                            5..8 => v += (g.next() % 5000) as f64,
                            _ => {}
                        }
                    }
                    if kind < 5 {
                        format!("{v:.2}").parse().unwrap_or(v)
                    } else {
                        v
                    }
                })
                .collect();
            Series { ts, vals }
        })
        .collect()
}

/// Full-precision random walks (no decimal structure): the XOR float column.
fn xor_data() -> Vec<Series> {
    let n: usize = std::env::var("CODEC_BENCH_SERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut g = Gen(7);
    (0..n)
        .map(|_| {
            let ts = (0..POINTS as i64)
                .map(|p| 1_700_000_000_000 + p * 10_000)
                .collect();
            let mut v = g.uniform() * 100.0;
            let vals = (0..POINTS)
                .map(|_| {
                    v += g.gauss(1.5);
                    v
                })
                .collect();
            Series { ts, vals }
        })
        .collect()
}

fn points(d: &[Series]) -> usize {
    d.iter().map(|s| s.ts.len()).sum()
}

fn encoded(d: &[Series]) -> Vec<Vec<u8>> {
    d.iter()
        .map(|s| {
            let mut out = Vec::new();
            codec::encode_series(&s.ts, &s.vals, &mut out).expect("encodable");
            out
        })
        .collect()
}

fn encoded_as(d: &[Series], layout: codec::PackedLayout) -> Vec<Vec<u8>> {
    d.iter()
        .map(|s| {
            let mut out = Vec::new();
            codec::encode_series_packed(0, &s.ts, &s.vals, layout, &mut out).expect("encodable");
            out
        })
        .collect()
}

fn heads(d: &[Series]) -> Vec<HeadChunk> {
    d.iter()
        .map(|s| {
            let mut c = HeadChunk::new();
            for (&t, &v) in s.ts.iter().zip(&s.vals) {
                c.push(t, v).expect("increasing");
            }
            c
        })
        .collect()
}

fn main() {
    let d = data();
    let n = points(&d) as f64;
    let records = encoded(&d);
    let sealed: usize = records.iter().map(Vec::len).sum();
    let mut by_tag = [0usize; 6];
    for r in &records {
        if let Some(n) = r.first().and_then(|&t| by_tag.get_mut(usize::from(t))) {
            *n += 1;
        }
    }
    println!("records by codec tag (0 raw, 4 range-coded, 5 table-coded): {by_tag:?}");
    let range_coded: usize = encoded_as(&d, codec::PackedLayout::NewestFirst)
        .iter()
        .map(Vec::len)
        .sum();
    let head: usize = heads(&d).iter().map(HeadChunk::heap_bytes).sum();
    let x = xor_data();
    let xor: usize = encoded(&x).iter().map(Vec::len).sum();
    println!(
        "sealed: {:.4} B/pt (all range-coded: {:.4}); head chunks: {:.3} B/pt (heap capacity); \
         sealed XOR walks: {:.3} B/pt",
        sealed as f64 / n,
        range_coded as f64 / n,
        head as f64 / n,
        xor as f64 / points(&x) as f64
    );
    divan::main();
}

#[divan::bench]
fn sealed_encode(b: Bencher) {
    let d = data();
    let mut out = Vec::new();
    b.counter(ItemsCount::new(points(&d))).bench_local(|| {
        for s in &d {
            out.clear();
            codec::encode_series(&s.ts, &s.vals, &mut out).expect("encodable");
            black_box(&out);
        }
    });
}

/// Times decoding every record of `enc` (`points` samples in all).
fn bench_decode(b: Bencher, enc: &[Vec<u8>], points: usize) {
    let (mut ts, mut vals) = (Vec::new(), Vec::new());
    b.counter(ItemsCount::new(points)).bench_local(|| {
        for e in enc {
            ts.clear();
            vals.clear();
            codec::decode_series(e, &mut ts, &mut vals).expect("valid");
            black_box((&ts, &vals));
        }
    });
}

#[divan::bench]
fn sealed_decode(b: Bencher) {
    let d = data();
    bench_decode(b, &encoded(&d), points(&d));
}

#[divan::bench]
fn sealed_decode_range_coded(b: Bencher) {
    let d = data();
    bench_decode(b, &encoded_as(&d, codec::PackedLayout::NewestFirst), points(&d));
}

#[divan::bench]
fn sealed_decode_xor(b: Bencher) {
    let d = xor_data();
    bench_decode(b, &encoded(&d), points(&d));
}

#[divan::bench]
fn head_push(b: Bencher) {
    let d = data();
    b.counter(ItemsCount::new(points(&d)))
        .bench_local(|| black_box(heads(&d)));
}

#[divan::bench]
fn head_decode(b: Bencher) {
    let d = data();
    let h = heads(&d);
    let (mut ts, mut vals) = (Vec::new(), Vec::new());
    b.counter(ItemsCount::new(points(&d))).bench_local(|| {
        for c in &h {
            ts.clear();
            vals.clear();
            c.decode_into(&mut ts, &mut vals);
            black_box((&ts, &vals));
        }
    });
}
