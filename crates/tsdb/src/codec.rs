//! Sample codecs: pure functions and in-memory chunks, no I/O.
//!
//! Two tiers, as the measurements in `shared/dependencies.md` demand (Gorilla XOR alone costs
//! ~7.7 bytes/point on two-decimal gauges):
//!
//! - [`HeadChunk`]: append-friendly, one per open series in the head. Delta-of-delta
//!   timestamps and *decimal-aware* value deltas (about 2 bytes/point on two-decimal gauges),
//!   with an escape to raw bits so every f64 round-trips. See [`head`] for the bit layout.
//! - [`encode_series`]/[`decode_series`]: the sealed encoding written into blocks. It keeps
//!   whichever of two encodings is smaller, tagged by the first byte:
//!
//! ```text
//! series   := tag:u8 count:varint body
//! tag 0    raw:    (first_ts - base):zigzag-varint (ts[i]-ts[i-1]):varint{count-1} f64-bits:u64le{count}
//! tag 1    packed, oldest first (written before 2026-11-21; still read):
//!                  ints-header(ts) floats-header(values) rc-stream
//! tag 4    packed, newest first (written when tag 5 is more than 1/32 larger): as tag 1 with
//!                  ts column    r[i] = ts[0] + ts[n-1] - ts[n-1-i] (wrapping; r[0] = ts[0],
//!                               the same differences in reverse order, so equally cheap)
//!                  value column the values in reverse order, decimal mantissas negated (the
//!                               same differences; exception indexes count from the newest)
//!                  so a reader decodes values from the newest back to its window's start
//! tag 5    packed, newest first, table-coded (written otherwise): as tag 4, but each
//!                  ints-header with symbols (transform != all zero) is followed by its
//!                  table-section (see `table`: a Huffman code of the bit lengths, then the
//!                  low bits raw), and only XOR value columns are in the rc-stream
//! tag 2    rollup: ints-header(bucket ts) ints-header(last_ts - ts) ints-header(count)
//!                  floats-header(min) floats-header(max) floats-header(sum) floats-header(last) rc-stream
//! tag 3    rollup, all values decimals at one scale (mantissas below):
//!                  ints-header(bucket ts) ints-header(last_ts - ts) ints-header(count) scale:u8
//!                  ints-header(min - previous bucket's last, 0 before the first)
//!                  ints-header(max - min) ints-header(max - last)
//!                  ints-header(2*sum - count*(min + max)) rc-stream (wrapping i64)
//! ints-header   := (order | transform<<2 | len_bits<<4 | has_gcd<<7):u8
//!                  initial-differences:zigzag-varint{order}
//!                  [min:zigzag-varint if transform = offset] [gcd:varint if has_gcd]
//!                  (the coded differences are divided by gcd; min is after that division)
//!                  order 0..=2 (differencing), transform 0 zigzag, 1 minus-min, 2 all zero,
//!                  len_bits 0..=7 levels of the symbols' bit-length tree (see `rc::UintModel`);
//!                  for timestamp columns the first initial value is stored minus `base`
//!                  (0 for [`encode_series`], the block's base time inside blocks)
//! floats-header := (0 | has_exc<<2 | scale<<3):u8 [n_exc:varint if has_exc]
//!                  (index-delta:varint bits:u64le){n_exc} ints-header(mantissas)
//!                | (2 | has_exc<<2 | scale<<3):u8 ... as above ... ints-header(corrections)
//!                                            (near-decimals: bits = decimal's bits + correction)
//!                | 1:u8                      (XOR of consecutive bit patterns in the stream)
//! rc-stream     := one adaptive binary range-coded stream with every column's symbols, in
//!                  header order, to the end of the record (up to 4 trailing zero bytes
//!                  trimmed; see `rc`)
//! ```
//!
//! Values are *decimal* at scale `e` when `v == (m as f64) / 10^e` bit for bit with
//! `|m| <= 2^53` (VictoriaMetrics' idea); up to 1/8 of a series may be exceptions (NaN stale
//! markers, ±inf, −0.0), stored raw. Values with float noise (`491.14 + 1118` is
//! `1609.1399999999999`) are *near-decimals*: the decimal's mantissa plus a small signed
//! difference of bit patterns, so they stay lossless and cheap. Integer columns pick the
//! differencing order and transform from a size estimate; an adaptive binary range coder
//! then spends close to the empirical entropy without per-column tables. (pco, a dependency,
//! is not used: `dependencies.md` warns its per-chunk overhead is high below ~500 points, and
//! this coder already sits within ~7% of the data set's entropy including headers; a
//! head-to-head measurement was not made.)
//!
//! The range coder decodes ~30 ns per value (every bit waits for the previous one), which
//! dominated a one-series query. So records are also coded with per-column Huffman tables of
//! the symbols' bit lengths (tag 5, [`table`]), which decode in ~4 ns per value, and that
//! form is kept unless it is more than 1/32 larger: on smooth data it costs ~1 % more, on
//! nearly constant columns (where a code spends at least a bit per value) far more, and
//! those stay range-coded.
//!
//! Measured on data shaped like `shared/bench/peers/gen.py` (2,000 series x 360 points,
//! `cargo test -p tsdb --test codec_props -- --nocapture bytes`): sealed series 1.119 B/pt
//! (two-decimal random-walk gauges 1.241, integer counters 1.630, constants 0.046; all
//! range-coded it would be 1.108, 1.226, 1.619, 0.046); a whole raw block with its index
//! 1.125 B/pt; head chunks ~1.85 B/pt. Entropy of that data is ~1.04 B/pt.
//!
//! Invariants: any f64 bit pattern and any timestamp sequence round-trip exactly (timestamps
//! use wrapping arithmetic, so even `i64::MIN..i64::MAX` gaps work). Decoding never panics
//! and never allocates more than [`MAX_POINTS`] samples per series; corrupt input yields
//! [`CodecError`] or wrong values (blocks add a CRC so the latter is caught above).

pub mod head;
pub mod rc;
pub mod sealed;
pub mod table;
pub mod varint;

pub use head::HeadChunk;

use sealed::{ColumnReader, ColumnWriter};
use varint::{Reader, put_i64, put_u64};

/// Most samples one encoded series may hold (a named limit so corrupt counts cannot make the
/// decoder allocate without bound).
pub const MAX_POINTS: usize = 1 << 24;

const TAG_RAW: u8 = 0;
const TAG_PACKED: u8 = 1;
const TAG_ROLLUP: u8 = 2;
const TAG_ROLLUP_DECIMAL: u8 = 3;
const TAG_PACKED_NEWEST_FIRST: u8 = 4;
const TAG_PACKED_NEWEST_FIRST_TABLE: u8 = 5;
/// A table-coded record (tag 5) is kept while it is at most `1 / TABLE_SLACK` larger than
/// the range-coded one (tag 4): it decodes several times faster.
const TABLE_SLACK: usize = 32;

/// A sample whose timestamp is not after the chunk's last one (or a chunk already holding
/// `u32::MAX` samples; cut chunks long before that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sample at {ts} is not after the chunk's last timestamp {last}")]
pub struct OutOfOrder {
    /// The chunk's last timestamp.
    pub last: i64,
    /// The refused timestamp.
    pub ts: i64,
}

/// Why encoding or decoding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Timestamp and value slices differ in length.
    #[error("{ts} timestamps but {vals} values")]
    LengthMismatch {
        /// Timestamps given.
        ts: usize,
        /// Values given.
        vals: usize,
    },
    /// More samples than [`MAX_POINTS`].
    #[error("{0} samples exceed the per-series limit")]
    TooManyPoints(u64),
    /// The bytes are not a valid encoding.
    #[error("corrupt encoding: {0}")]
    Corrupt(&'static str),
}

/// Timestamps and values of equal length, at most [`MAX_POINTS`].
fn check_samples(ts: &[i64], vals: &[f64]) -> Result<(), CodecError> {
    if ts.len() != vals.len() {
        return Err(CodecError::LengthMismatch {
            ts: ts.len(),
            vals: vals.len(),
        });
    }
    check_len(ts.len())
}

fn check_len(n: usize) -> Result<(), CodecError> {
    if n > MAX_POINTS {
        return Err(CodecError::TooManyPoints(n as u64));
    }
    Ok(())
}

/// Encodes one series' samples for a sealed block, appending to `out`: the packed encoding,
/// or the raw one when that is smaller. Timestamps need not be sorted for the codec (blocks
/// require it), and any f64 bit pattern round-trips.
pub fn encode_series(ts: &[i64], vals: &[f64], out: &mut Vec<u8>) -> Result<(), CodecError> {
    encode_series_with_base(0, ts, vals, out)
}

/// [`encode_series`] with the first timestamp stored relative to `base` (blocks pass a base
/// shared by all their series, so the first timestamp costs a byte instead of six). Decode
/// with [`decode_series_with_base`] and the same `base`. Packed records are written newest
/// first (tag 4), so that reading a window decodes from the newest sample back to the
/// window's start: queries mostly ask for the recent end of a block.
pub fn encode_series_with_base(
    base: i64,
    ts: &[i64],
    vals: &[f64],
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    encode_packed_or_raw(base, ts, vals, out)
}

/// A packed record layout, for [`encode_series_packed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedLayout {
    /// Tag 1, which blocks written before 2026-11-21 hold.
    OldestFirst,
    /// Tag 4: newest first, integer columns in the range-coded stream.
    NewestFirst,
    /// Tag 5: newest first, integer columns table-coded.
    NewestFirstTable,
}

/// [`encode_series_with_base`] in exactly `layout` (no raw fallback, no choice). The
/// database writes tag 4 or 5 through [`encode_series_with_base`]; this lets tests and
/// benchmarks make each layout, old ones included, and prove they read back.
pub fn encode_series_packed(
    base: i64,
    ts: &[i64],
    vals: &[f64],
    layout: PackedLayout,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    check_samples(ts, vals)?;
    match layout {
        PackedLayout::OldestFirst => encode_packed(base, ts, vals, TAG_PACKED, out),
        PackedLayout::NewestFirst | PackedLayout::NewestFirstTable => {
            let tag = if layout == PackedLayout::NewestFirst {
                TAG_PACKED_NEWEST_FIRST
            } else {
                TAG_PACKED_NEWEST_FIRST_TABLE
            };
            encode_packed(base, &sealed::reflect(ts), vals, tag, out);
        }
    }
    Ok(())
}

/// The table-coded newest-first record (tag 5) when it is at most `1 / TABLE_SLACK` larger
/// than the range-coded one (tag 4), else that; raw (tag 0) when smaller still.
fn encode_packed_or_raw(base: i64, ts: &[i64], vals: &[f64], out: &mut Vec<u8>) -> Result<(), CodecError> {
    check_samples(ts, vals)?;
    let start = out.len();
    let reflected = sealed::reflect(ts);
    encode_packed(base, &reflected, vals, TAG_PACKED_NEWEST_FIRST, out);
    let mut table = Vec::new();
    encode_packed(base, &reflected, vals, TAG_PACKED_NEWEST_FIRST_TABLE, &mut table);
    let ranged = out.len() - start;
    if table.len() <= ranged + ranged / TABLE_SLACK {
        out.truncate(start);
        out.extend_from_slice(&table);
    }
    // Raw costs at least 9 bytes per point; only build it when it could win.
    if out.len() - start > 9 * ts.len() + 2 {
        let mut raw = Vec::new();
        encode_raw(base, ts, vals, &mut raw);
        if raw.len() < out.len() - start {
            out.truncate(start);
            out.extend_from_slice(&raw);
        }
    }
    Ok(())
}

/// Appends a packed record with `tag` (1, 4 or 5); `ts` is already reflected for 4 and 5.
fn encode_packed(base: i64, ts: &[i64], vals: &[f64], tag: u8, out: &mut Vec<u8>) {
    let mut cols = if tag == TAG_PACKED_NEWEST_FIRST_TABLE {
        ColumnWriter::table_coded()
    } else {
        ColumnWriter::default()
    };
    out.push(tag);
    put_u64(out, ts.len() as u64);
    cols.ints(out, ts, 2, base);
    if tag == TAG_PACKED {
        cols.floats(out, vals);
    } else {
        cols.floats_newest_first(out, vals);
    }
    cols.finish(out);
}

fn encode_raw(base: i64, ts: &[i64], vals: &[f64], out: &mut Vec<u8>) {
    out.push(TAG_RAW);
    put_u64(out, ts.len() as u64);
    let mut prev = 0i64;
    for (i, &t) in ts.iter().enumerate() {
        if i == 0 {
            put_i64(out, t.wrapping_sub(base));
        } else {
            put_u64(out, t.wrapping_sub(prev) as u64);
        }
        prev = t;
    }
    for v in vals {
        out.extend_from_slice(&v.to_bits().to_le_bytes());
    }
}

fn read_count(r: &mut Reader<'_>) -> Result<usize, CodecError> {
    let n = r.u64().ok_or(CodecError::Corrupt("truncated count"))?;
    if n > MAX_POINTS as u64 {
        return Err(CodecError::TooManyPoints(n));
    }
    Ok(n as usize)
}

/// Decodes a series written by [`encode_series`], appending to `ts` and `vals`. Never panics;
/// on error the vectors may hold a partial, meaningless suffix (truncate to their old length).
pub fn decode_series(bytes: &[u8], ts: &mut Vec<i64>, vals: &mut Vec<f64>) -> Result<(), CodecError> {
    decode_series_with_base(0, bytes, ts, vals)
}

/// Decodes a series written by [`encode_series_with_base`] with the same `base`.
pub fn decode_series_with_base(
    base: i64,
    bytes: &[u8],
    ts: &mut Vec<i64>,
    vals: &mut Vec<f64>,
) -> Result<(), CodecError> {
    decode_series_window(base, bytes, i64::MIN, i64::MAX, ts, vals).map(|_| ())
}

/// [`decode_series_with_base`] of a window: appends the samples in `[start, end]` (for
/// sorted timestamps; any order gets the part [`sealed::window_bounds`] defines), exactly
/// what decoding everything and keeping that part gives, and returns the record's total
/// sample count (for the caller's consistency checks). Packed records decode only the
/// values they need: newest-first records (tag 4, what [`encode_series_with_base`] writes)
/// from the newest sample back to `start`, older oldest-first ones (tag 1) up to `end`. So
/// a read of the last minutes of a long record costs those minutes. Never panics; on error
/// the vectors may hold a partial, meaningless suffix.
pub fn decode_series_window(
    base: i64,
    bytes: &[u8],
    start: i64,
    end: i64,
    ts: &mut Vec<i64>,
    vals: &mut Vec<f64>,
) -> Result<usize, CodecError> {
    let mut r = Reader::new(bytes);
    let tag = r.u8().ok_or(CodecError::Corrupt("empty record"))?;
    let n = read_count(&mut r)?;
    match tag {
        TAG_RAW => {
            // Each point needs at least 9 bytes: reject impossible counts before allocating.
            if r.remaining() < n.saturating_mul(9) {
                return Err(CodecError::Corrupt("truncated raw series"));
            }
            let (t0, v0) = (ts.len(), vals.len());
            ts.reserve(n);
            vals.reserve(n);
            let mut t = 0i64;
            for i in 0..n {
                t = if i == 0 {
                    r.i64()
                        .ok_or(CodecError::Corrupt("truncated raw series"))?
                        .wrapping_add(base)
                } else {
                    t.wrapping_add(r.u64().ok_or(CodecError::Corrupt("truncated raw series"))? as i64)
                };
                ts.push(t);
            }
            for _ in 0..n {
                vals.push(f64::from_bits(
                    r.u64_le().ok_or(CodecError::Corrupt("truncated raw series"))?,
                ));
            }
            let (lo, hi) = sealed::window_bounds(ts.get(t0..).unwrap_or_default(), start, end);
            ts.truncate(t0 + hi);
            vals.truncate(v0 + hi);
            ts.drain(t0..t0 + lo);
            vals.drain(v0..v0 + lo);
            Ok(n)
        }
        TAG_PACKED | TAG_PACKED_NEWEST_FIRST | TAG_PACKED_NEWEST_FIRST_TABLE => {
            let mut cols = if tag == TAG_PACKED_NEWEST_FIRST_TABLE {
                ColumnReader::table_coded()
            } else {
                ColumnReader::new()
            };
            cols.ints(&mut r, n, base)?;
            cols.floats(&mut r, n)?;
            if tag == TAG_PACKED {
                cols.decode_window(r.rest(), start, end, ts, vals)?;
            } else {
                cols.decode_window_newest_first(r.rest(), start, end, ts, vals)?;
            }
            Ok(n)
        }
        TAG_ROLLUP | TAG_ROLLUP_DECIMAL => Err(CodecError::Corrupt(
            "rollup record where raw samples were expected",
        )),
        _ => Err(CodecError::Corrupt("unknown codec tag")),
    }
}

/// Column form of rollup points, as [`crate::rollup::RollupPoint`] fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RollupColumns {
    /// Bucket start times.
    pub ts: Vec<i64>,
    /// Timestamp of the sample that gave `last`.
    pub last_ts: Vec<i64>,
    /// Samples counted.
    pub count: Vec<u64>,
    /// Minimum per bucket.
    pub min: Vec<f64>,
    /// Maximum per bucket.
    pub max: Vec<f64>,
    /// Sum per bucket.
    pub sum: Vec<f64>,
    /// Last value per bucket.
    pub last: Vec<f64>,
}

impl RollupColumns {
    fn len_checked(&self) -> Option<usize> {
        let n = self.ts.len();
        let same = [
            self.last_ts.len(),
            self.count.len(),
            self.min.len(),
            self.max.len(),
            self.sum.len(),
            self.last.len(),
        ]
        .iter()
        .all(|&l| l == n);
        same.then_some(n)
    }
}

/// The four value columns of a rollup as mantissas at one common decimal scale, if every
/// value is such a decimal.
fn common_decimal(c: &RollupColumns) -> Option<(u8, [Vec<i64>; 4])> {
    let cols = [&c.min, &c.max, &c.sum, &c.last];
    let mut scale = 0u8;
    for col in cols {
        for &v in col.iter() {
            scale = (scale..=sealed::MAX_SCALE).find(|&e| sealed::to_mantissa(v, e).is_some())?;
        }
    }
    let conv = |col: &Vec<f64>| {
        col.iter()
            .map(|&v| sealed::to_mantissa(v, scale))
            .collect::<Option<Vec<i64>>>()
    };
    Some((
        scale,
        [conv(cols[0])?, conv(cols[1])?, conv(cols[2])?, conv(cols[3])?],
    ))
}

/// Encodes rollup columns, appending to `out`. Bucket times are stored relative to `base`, as
/// in [`encode_series_with_base`]. When all values are decimals at one scale (tag 3), the
/// mantissas are stored as `min - previous last`, `max - min`, `max - last` and
/// `2*sum - count*(min + max)`,
/// which are small (zero for `max - last` of counters); otherwise (tag 2) as four float
/// columns.
pub fn encode_rollups(base: i64, c: &RollupColumns, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let n = c.len_checked().ok_or(CodecError::LengthMismatch {
        ts: c.ts.len(),
        vals: c.min.len(),
    })?;
    check_len(n)?;
    let decimal = common_decimal(c);
    out.push(if decimal.is_some() {
        TAG_ROLLUP_DECIMAL
    } else {
        TAG_ROLLUP
    });
    put_u64(out, n as u64);
    let mut cols = ColumnWriter::default();
    cols.ints(out, &c.ts, 2, base);
    let offsets: Vec<i64> = c
        .last_ts
        .iter()
        .zip(&c.ts)
        .map(|(l, t)| l.wrapping_sub(*t))
        .collect();
    cols.ints(out, &offsets, 1, 0);
    let counts: Vec<i64> = c.count.iter().map(|&x| x as i64).collect();
    cols.ints(out, &counts, 1, 0);
    match decimal {
        Some((scale, [min, max, sum, last])) => {
            out.push(scale);
            let max_min: Vec<i64> = max.iter().zip(&min).map(|(x, m)| x.wrapping_sub(*m)).collect();
            let max_last: Vec<i64> = max.iter().zip(&last).map(|(x, l)| x.wrapping_sub(*l)).collect();
            // 2*sum - count*(min + max): the sum relative to the mid-range, exact in wrapping
            // arithmetic because |2*sum| < 2^63 (mantissas are bounded by 2^53).
            let sum_rel: Vec<i64> = (0..n)
                .map(|i| {
                    let mid = min[i].wrapping_add(max[i]);
                    sum[i].wrapping_mul(2).wrapping_sub(counts[i].wrapping_mul(mid))
                })
                .collect();
            // Each bucket's min relative to the previous bucket's last: for random walks and
            // counters that is about one step, not one bucket's worth of steps.
            let min_rel: Vec<i64> = (0..n)
                .map(|i| min[i].wrapping_sub(if i == 0 { 0 } else { last[i - 1] }))
                .collect();
            cols.ints(out, &min_rel, 1, 0);
            cols.ints(out, &max_min, 1, 0);
            cols.ints(out, &max_last, 1, 0);
            cols.ints(out, &sum_rel, 1, 0);
        }
        None => {
            for col in [&c.min, &c.max, &c.sum, &c.last] {
                cols.floats(out, col);
            }
        }
    }
    cols.finish(out);
    Ok(())
}

/// Decodes rollup columns written by [`encode_rollups`], appending to `out`.
pub fn decode_rollups(base: i64, bytes: &[u8], out: &mut RollupColumns) -> Result<(), CodecError> {
    let mut r = Reader::new(bytes);
    let tag = r.u8();
    if tag != Some(TAG_ROLLUP) && tag != Some(TAG_ROLLUP_DECIMAL) {
        return Err(CodecError::Corrupt("not a rollup record"));
    }
    let n = read_count(&mut r)?;
    let mut cols = ColumnReader::new();
    for b in [base, 0, 0] {
        cols.ints(&mut r, n, b)?;
    }
    let (mut ts, mut offsets, mut counts) = (Vec::new(), Vec::new(), Vec::new());
    if tag == Some(TAG_ROLLUP_DECIMAL) {
        let scale = r
            .u8()
            .filter(|&e| e <= sealed::MAX_SCALE)
            .ok_or(CodecError::Corrupt("bad decimal scale"))?;
        for _ in 0..4 {
            cols.ints(&mut r, n, 0)?;
        }
        let (mut min, mut max, mut last, mut sum) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        cols.decode(
            r.rest(),
            &mut [
                &mut ts,
                &mut offsets,
                &mut counts,
                &mut min,
                &mut max,
                &mut last,
                &mut sum,
            ],
            &mut [],
        )?;
        let mut prev_last = 0i64;
        for (i, &rel) in min.iter().enumerate() {
            let lo = rel.wrapping_add(prev_last);
            let k = counts.get(i).copied().unwrap_or(0);
            let hi = max.get(i).copied().unwrap_or(0).wrapping_add(lo);
            let l = hi.wrapping_sub(last.get(i).copied().unwrap_or(0));
            let twice = sum
                .get(i)
                .copied()
                .unwrap_or(0)
                .wrapping_add(k.wrapping_mul(lo.wrapping_add(hi)));
            out.min.push(sealed::from_mantissa(lo, scale));
            out.max.push(sealed::from_mantissa(hi, scale));
            prev_last = l;
            out.last.push(sealed::from_mantissa(l, scale));
            out.sum.push(sealed::from_mantissa(twice / 2, scale));
        }
    } else {
        for _ in 0..4 {
            cols.floats(&mut r, n)?;
        }
        cols.decode(
            r.rest(),
            &mut [&mut ts, &mut offsets, &mut counts],
            &mut [&mut out.min, &mut out.max, &mut out.sum, &mut out.last],
        )?;
    }
    out.last_ts
        .extend(ts.iter().zip(&offsets).map(|(t, o)| t.wrapping_add(*o)));
    out.ts.extend_from_slice(&ts);
    out.count.extend(counts.iter().map(|&c| c as u64));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(ts: &[i64], vals: &[f64]) -> usize {
        let mut out = Vec::new();
        encode_series(ts, vals, &mut out).unwrap();
        let (mut t2, mut v2) = (Vec::new(), Vec::new());
        decode_series(&out, &mut t2, &mut v2).unwrap();
        assert_eq!(t2, ts);
        assert_eq!(
            v2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            vals.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        out.len()
    }

    #[test]
    fn sizes_by_shape() {
        let ts: Vec<i64> = (0..360).map(|i| 1_700_000_000_000 + i * 10_000).collect();
        let constant = vec![3400.0; 360];
        let ints: Vec<f64> = (0..360).map(|i| (i * 2500) as f64).collect();
        let nan = vec![f64::NAN; 360];
        // Accumulating integers onto a two-decimal start: 491.14 + 1118 = 1609.1399999999999.
        let mut acc = 491.14;
        let noisy: Vec<f64> = (0..360)
            .map(|i| {
                acc += ((i * 7919) % 1000) as f64;
                acc
            })
            .collect();
        let blocks: Vec<f64> = (0..360).map(|i| (((i * 7919) % 1000) * 512) as f64).collect();
        let table: &[(&str, &[f64], usize)] = &[
            ("constant", &constant, 20),
            ("regular counter", &ints, 20),
            ("all NaN", &nan, 40),
            // ~10 bits of increment + ~1 bit of correction per point
            ("near-decimal counter", &noisy, 560),
            // multiples of 512: the common factor is divided out (~11 bits per point)
            ("common factor", &blocks, 520),
        ];
        for (name, vals, max) in table {
            let n = round_trip(&ts, vals);
            assert!(n <= *max, "{name}: {n} bytes");
        }
    }

    #[test]
    fn decoding_a_window_cuts_every_column_kind_and_layout_exactly() {
        let ts: Vec<i64> = (0..200).map(|i| 1_000 + i * 10).collect();
        let mut acc = 491.14;
        let near: Vec<f64> = (0..200)
            .map(|i| {
                acc += ((i * 7919) % 1000) as f64;
                acc
            })
            .collect();
        let mut decimals: Vec<f64> = (0..200).map(|i| f64::from(i) / 100.0).collect();
        decimals[3] = f64::NAN;
        decimals[150] = f64::INFINITY;
        decimals[199] = -0.0;
        let xor: Vec<f64> = (0..200).map(|i| (f64::from(i) * 0.37).sin()).collect();
        let bounds = [
            i64::MIN,
            999,
            1_000,
            1_005,
            1_030,
            2_495,
            2_500,
            2_991,
            2_990,
            i64::MAX,
        ];
        for (name, vals) in [("near", &near), ("decimal", &decimals), ("xor", &xor)] {
            let encoded = |layout| {
                let mut rec = Vec::new();
                encode_series_packed(1_000, &ts, vals, layout, &mut rec).unwrap();
                rec
            };
            let newest = encoded(PackedLayout::NewestFirst);
            assert_eq!(newest[0], TAG_PACKED_NEWEST_FIRST, "{name}");
            let table = encoded(PackedLayout::NewestFirstTable);
            assert_eq!(table[0], TAG_PACKED_NEWEST_FIRST_TABLE, "{name}");
            let oldest = encoded(PackedLayout::OldestFirst);
            assert_eq!(oldest[0], TAG_PACKED, "{name}");
            let mut raw = Vec::new();
            encode_raw(1_000, &ts, vals, &mut raw);
            for (layout, rec) in [
                ("newest first", &newest),
                ("newest first, table-coded", &table),
                ("oldest first", &oldest),
                ("raw", &raw),
            ] {
                for start in bounds {
                    for end in bounds {
                        let (mut t, mut v) = (vec![-1], vec![0.25]);
                        let got = decode_series_window(1_000, rec, start, end, &mut t, &mut v);
                        assert_eq!(got, Ok(200), "{name} {layout}");
                        let keep: Vec<usize> = (0..200).filter(|&i| ts[i] >= start && ts[i] <= end).collect();
                        let want_t: Vec<i64> = keep.iter().map(|&i| ts[i]).collect();
                        let want_v: Vec<u64> = keep.iter().map(|&i| vals[i].to_bits()).collect();
                        let ctx = format!("{name} {layout} [{start}, {end}]");
                        assert_eq!((t[0], v[0]), (-1, 0.25), "{ctx}: appends after what is there");
                        assert_eq!(t[1..], want_t, "{ctx}");
                        assert_eq!(
                            v[1..].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                            want_v,
                            "{ctx}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_table_coded_layout_is_kept_unless_notably_larger() {
        let ts: Vec<i64> = (0..360).map(|i| 1_700_000_000_000 + i * 10_000).collect();
        // A two-decimal random walk with bell-shaped steps (a sum of three uniform draws, a
        // standard deviation of ~1.5 as in gen.py): both coders store the low bits raw, so
        // they are close.
        let mut x = 5_000i64;
        let draw = |k: u64| {
            // splitmix64's finaliser: consecutive inputs give unrelated outputs
            let mut z = k.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % 301) as i64
        };
        let walk: Vec<f64> = (0..360u64)
            .map(|i| {
                x += draw(3 * i) + draw(3 * i + 1) + draw(3 * i + 2) - 450;
                x as f64 / 100.0
            })
            .collect();
        // A gauge that rarely moves: a code spends at least a bit per value, the range coder
        // a small fraction of one.
        let flat: Vec<f64> = (0..360).map(|i| if i % 50 == 0 { 2.0 } else { 1.0 }).collect();
        let sizes = |vals: &[f64]| {
            [PackedLayout::NewestFirst, PackedLayout::NewestFirstTable].map(|layout| {
                let mut rec = Vec::new();
                encode_series_packed(0, &ts, vals, layout, &mut rec).unwrap();
                rec.len()
            })
        };
        for (name, vals, want) in [
            ("walk", &walk, TAG_PACKED_NEWEST_FIRST_TABLE),
            ("flat", &flat, TAG_PACKED_NEWEST_FIRST),
        ] {
            let [ranged, table] = sizes(vals);
            let mut rec = Vec::new();
            encode_series(&ts, vals, &mut rec).unwrap();
            assert_eq!(
                rec[0], want,
                "{name}: range-coded {ranged} B, table-coded {table} B"
            );
            assert_eq!(
                rec.len(),
                if want == TAG_PACKED_NEWEST_FIRST {
                    ranged
                } else {
                    table
                }
            );
            round_trip(&ts, vals);
        }
    }

    #[test]
    fn edge_cases_round_trip() {
        round_trip(&[], &[]);
        round_trip(&[i64::MIN], &[-0.0]);
        round_trip(
            &[i64::MIN, -1, 0, i64::MAX],
            &[
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::MIN_POSITIVE / 3.0,
            ],
        );
        round_trip(&[5, 3, 9], &[1.5, 1e-300, 2.25]);
    }

    #[test]
    fn rollups_round_trip() {
        let c = RollupColumns {
            ts: vec![0, 60_000, 120_000],
            last_ts: vec![50_000, 110_000, 170_000],
            count: vec![6, 6, 5],
            min: vec![1.5, 2.0, f64::NAN],
            max: vec![3.0, 4.0, 5.0],
            sum: vec![10.1, 20.2, 30.300000000000004],
            last: vec![2.0, 3.0, 4.0],
        };
        let mut out = Vec::new();
        encode_rollups(0, &c, &mut out).unwrap();
        let mut back = RollupColumns::default();
        decode_rollups(0, &out, &mut back).unwrap();
        assert_eq!(format!("{back:?}"), format!("{c:?}"));
    }

    #[test]
    fn decimal_rollups_round_trip_at_the_mantissa_limits() {
        let c = |big: f64| RollupColumns {
            ts: vec![0, 60_000, 120_000, 180_000],
            last_ts: vec![0, 60_000, 170_000, 180_001],
            count: vec![1, u64::MAX, 3, 0],
            min: vec![-big, -1.5, 0.01, 3400.0],
            max: vec![big, 1.5, 0.03, 3400.0],
            sum: vec![big, -big, 0.06, 0.0],
            last: vec![0.0, 1.5, 0.02, 3400.0],
        };
        // 2^53 / 100 still has a two-decimal mantissa; 2^53 does not (mantissa limit).
        for (big, tag) in [
            (90_071_992_547_409.92, TAG_ROLLUP_DECIMAL),
            (9_007_199_254_740_992.0, TAG_ROLLUP),
        ] {
            let c = c(big);
            let mut out = Vec::new();
            encode_rollups(-7, &c, &mut out).unwrap();
            assert_eq!(out[0], tag, "{big}");
            let mut back = RollupColumns::default();
            decode_rollups(-7, &out, &mut back).unwrap();
            assert_eq!(format!("{back:?}"), format!("{c:?}"));
        }
    }

    #[test]
    fn corrupt_counts_are_rejected() {
        let table: &[&[u8]] = &[
            &[],
            &[9, 1],
            &[0, 0xff, 0xff, 0xff, 0xff, 0x0f],
            &[1, 5],
            &[0, 3, 1],
        ];
        for bytes in table {
            let (mut t, mut v) = (Vec::new(), Vec::new());
            assert!(decode_series(bytes, &mut t, &mut v).is_err(), "{bytes:?}");
        }
    }
}
