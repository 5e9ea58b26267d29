//! What independently decodable segments inside a sealed record would cost in bytes, measured
//! with the real range coder and symbol model (`codec::rc`) on value columns shaped like
//! `shared/bench/peers/gen.py` (two-decimal random-walk gauges and integer counters, 360 points;
//! constants are a few bytes and would never be segmented).
//!
//! For 1 to 4 equal segments per record it prints, per long record, the extra bytes over one
//! stream (every segment its own range-coded stream, so its flush is included) when each
//! segment's models start
//! - fresh (p = 1/2, what a self-contained segment pays: re-learning),
//! - from the state after the record's own first segment (then a read of segment k must
//!   decode segment 0 too),
//! - from a model trained on 120 symbols of another series *of the same kind* (what a
//!   block-level prior per column class would give if the class matched),
//! - from a model trained on a series of the *other* kind (a mismatched prior),
//! - from a block-level prior per column class a writer could build without knowing the
//!   series' kinds: the first 120 symbols of the first record in the block whose column has
//!   the same transform and length-tree depth, each record keeping the smaller of
//!   prior/fresh (one flag bit per record, counted),
//!
//! and the cost of the seek table: each later segment's head value as a zigzag varint of its
//! difference to the previous head, and each but the last segment's stream length as a zigzag
//! varint of its difference to (record length / segments). Timestamps 10 s apart are
//! a constant-stride column and need no per-segment head.
//!
//! Run: `CARGO_TARGET_DIR=... cargo bench -p tsdb --bench segments` (a second or two).

use tsdb::codec::rc::{Encoder, UintModel, len_bits_for};

#[path = "../tests/support/splitmix.rs"]
mod splitmix;
use splitmix::Gen;

const POINTS: usize = 360;
/// Symbols a prior is trained on.
const PRIOR_SYMBOLS: usize = 120;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Gauge,
    Counter,
}

/// Mantissas of one series (gauges at two decimals, counters as integers).
fn mantissas(g: &mut Gen, kind: Kind) -> Vec<i64> {
    let mut v = match kind {
        Kind::Gauge => (g.uniform() * 10_000.0).round() / 100.0,
        Kind::Counter => (g.next() % 1_000_000_000) as f64,
    };
    (0..POINTS)
        .map(|p| {
            if p > 0 {
                match kind {
                    Kind::Gauge => v = (v + g.gauss(1.5)).clamp(0.0, 100.0),
                    Kind::Counter => v += (g.next() % 5000) as f64,
                }
            }
            match kind {
                Kind::Gauge => (v * 100.0).round() as i64,
                Kind::Counter => v as i64,
            }
        })
        .collect()
}

fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 128 {
        v >>= 7;
        n += 1;
    }
    n
}

/// The symbols the sealed codec codes for an order-1 column (minus-min for counters' one-signed
/// increments, zigzag for walks) and the length-tree depth they need.
fn symbols(m: &[i64], kind: Kind) -> (Vec<u64>, u32) {
    let d: Vec<i64> = m.windows(2).map(|w| w[1] - w[0]).collect();
    let s: Vec<u64> = match kind {
        Kind::Counter => {
            let min = d.iter().copied().min().unwrap_or(0);
            d.iter().map(|x| (x - min) as u64).collect()
        }
        Kind::Gauge => d.iter().map(|&x| zigzag(x)).collect(),
    };
    let len_bits = len_bits_for(s.iter().copied().max().unwrap_or(0));
    (s, len_bits)
}

/// Bytes of one range-coded stream of `s` continuing from `model`'s state.
fn code(model: &mut UintModel, s: &[u64]) -> usize {
    let mut out = Vec::new();
    let mut enc = Encoder::new(&mut out);
    for &x in s {
        model.encode(&mut enc, x);
    }
    enc.finish();
    out.len()
}

fn trained(len_bits: u32, s: &[u64]) -> UintModel {
    let mut m = UintModel::with_len_bits(len_bits);
    code(&mut m, s);
    m
}

fn main() {
    let mut g = Gen(42);
    // 2,000 series in gen.py's mix; the 1,600 gauges and counters are the long records.
    let data: Vec<(Kind, Vec<i64>)> = (0..2000)
        .filter_map(|i| match i % 10 {
            0..5 => Some(Kind::Gauge),
            5..8 => Some(Kind::Counter),
            _ => None,
        })
        .map(|k| (k, mantissas(&mut g, k)))
        .collect();
    let n = data.len() as f64;
    let one: usize = data
        .iter()
        .map(|(k, m)| {
            let (s, lb) = symbols(m, *k);
            code(&mut UintModel::with_len_bits(lb), &s)
        })
        .sum();
    println!(
        "{} long records x {POINTS} points, one stream each: value streams {:.1} B per record",
        data.len(),
        one as f64 / n
    );
    for segments in 1..=4usize {
        let (mut fresh, mut own, mut peer, mut other, mut heads, mut lens) = (0, 0, 0, 0, 0, 0);
        let mut class_prior = 0.0;
        let mut classes: Vec<((bool, u32), Vec<u64>)> = Vec::new();
        for (j, (kind, m)) in data.iter().enumerate() {
            let (s, lb) = symbols(m, *kind);
            let per = s.len().div_ceil(segments);
            let segs: Vec<&[u64]> = s.chunks(per).collect();
            let prior_from = |same: bool| {
                data.get(..j)
                    .unwrap_or_default()
                    .iter()
                    .rev()
                    .find(|(k, _)| (k == kind) == same)
                    .map(|(k, pm)| trained(lb, &symbols(pm, *k).0[..PRIOR_SYMBOLS]))
            };
            let key = (*kind == Kind::Counter, lb);
            if !classes.iter().any(|(k, _)| *k == key) {
                classes.push((key, s[..PRIOR_SYMBOLS].to_vec()));
            }
            let (mut with_prior, mut without) = (0usize, 0usize);
            for seg in &segs {
                without += code(&mut UintModel::with_len_bits(lb), seg);
                with_prior += classes
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map_or(usize::MAX / 8, |(_, ps)| code(&mut trained(lb, ps), seg));
            }
            class_prior += with_prior.min(without) as f64 + 0.125;
            // Stream lengths of all but the last segment, as zigzag varints of their
            // difference to (sum of the streams / segments), which a reader knows from the
            // record's length in the block index.
            let seg_lens: Vec<usize> = segs
                .iter()
                .map(|seg| code(&mut UintModel::with_len_bits(lb), seg))
                .collect();
            let avg = seg_lens.iter().sum::<usize>() / segments;
            lens += seg_lens
                .iter()
                .take(segments - 1)
                .map(|&l| varint_len(zigzag(l as i64 - avg as i64)))
                .sum::<usize>();
            for (i, seg) in segs.iter().enumerate() {
                let fresh_model = || UintModel::with_len_bits(lb);
                fresh += code(&mut fresh_model(), seg);
                own += if i == 0 {
                    code(&mut fresh_model(), seg)
                } else {
                    code(&mut trained(lb, segs[0]), seg)
                };
                peer += code(&mut prior_from(true).unwrap_or_else(fresh_model), seg);
                other += code(&mut prior_from(false).unwrap_or_else(fresh_model), seg);
                if i > 0 {
                    heads += varint_len(zigzag(m[i * per] - m[(i - 1) * per]));
                }
            }
        }
        let extra = |x: usize| (x as f64 - one as f64) / n;
        println!(
            "{segments} segment(s) of {} points: extra B per long record: streams with fresh models {:+.2}, \
             own-first-segment prior {:+.2}, same-kind prior {:+.2}, other-kind prior {:+.2}, \
             block class prior {:+.2} ({} classes); seek table: heads {:.2} + lengths {:.2}",
            (POINTS - 1).div_ceil(segments),
            extra(fresh),
            extra(own),
            extra(peer),
            extra(other),
            (class_prior - one as f64) / n,
            classes.len(),
            heads as f64 / n,
            lens as f64 / n
        );
    }
}
