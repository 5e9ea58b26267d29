//! The sealed (block) encoding: column headers as varints, then one adaptive range-coded
//! stream holding every column's symbols; or, table-coded (tag 5), each integer column's
//! symbols right after its header (`table`) and only XOR columns in the stream. See the
//! `codec` module doc for the byte layout.

use super::CodecError;
use super::rc::{Decoder, Encoder, UintModel, XorModel, len_bits_for};
use super::table::{TableColumn, TableReader, encode_column};
use super::varint::{Reader, put_i64, put_u64, unzigzag, zigzag};

/// Largest decimal scale tried: values are `mantissa / 10^scale` with `|mantissa| <= 2^53`.
pub const MAX_SCALE: u8 = 15;
/// Exact powers of ten up to `10^MAX_SCALE`.
const POW10: [f64; MAX_SCALE as usize + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
const MANTISSA_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
/// Below this magnitude (2^51) `x + 0.5` is exact enough for rounding by truncation.
const FAST_ROUND_LIMIT: f64 = 2_251_799_813_685_248.0;
/// A well-formed stream overruns its end by at most `rc::MAX_TRIM` bytes; more means
/// corruption.
const MAX_OVERRUN: usize = super::rc::MAX_TRIM;

/// The part `lo..hi` of `ts` a read of the window `[start, end]` keeps: the prefix up to and
/// including the last timestamp at or before `end`, without everything up to and including
/// the last timestamp before `start` in that prefix. For sorted timestamps (as in blocks)
/// exactly the samples in `[start, end]`; for any order it is well defined and never needs
/// a sample before `lo` or after `hi`.
pub fn window_bounds(ts: &[i64], start: i64, end: i64) -> (usize, usize) {
    let hi = ts.iter().rposition(|&t| t <= end).map_or(0, |i| i + 1);
    let lo = ts
        .get(..hi)
        .unwrap_or_default()
        .iter()
        .rposition(|&t| t < start)
        .map_or(0, |i| i + 1);
    (lo, hi)
}

/// Column transform of an integer sequence after differencing.
const XF_ZIGZAG: u8 = 0;
const XF_OFFSET: u8 = 1;
const XF_ZERO: u8 = 2;

/// Flag in an ints header byte: a common factor (varint) of the differences follows.
const HAS_GCD: u8 = 0x80;

/// Value column kinds.
const VALUES_DECIMAL: u8 = 0;
const VALUES_XOR: u8 = 1;
/// Values that are decimals up to a few ULPs of float noise (`1609.1399999999999`): the
/// mantissa column is followed by a column of bit-pattern corrections.
const VALUES_NEAR_DECIMAL: u8 = 2;
/// Largest scale tried for near-decimals (finer scales would make every float "near").
const NEAR_MAX_SCALE: u8 = 9;
/// Largest correction, in units in the last place, for a value to count as near-decimal.
const NEAR_MAX_ULPS: i64 = 64;
/// Flag in the value header byte: an exception list follows.
const HAS_EXCEPTIONS: u8 = 4;

/// The mantissa of `v` at `scale` if `v` is exactly `mantissa as f64 / 10^scale` (bit for bit).
#[inline]
pub fn to_mantissa(v: f64, scale: u8) -> Option<i64> {
    let p = *POW10.get(usize::from(scale))?;
    let x = v * p;
    if x.is_nan() || x.abs() > MANTISSA_LIMIT {
        return None;
    }
    // `f64::round` is a libm call on baseline x86-64 and costs ~6 % of the append path; below
    // 2^51 adding ±0.5 and truncating gives the same integer wherever the exactness check
    // below can pass (x is then within float noise of that integer)
    let m = if x.abs() < FAST_ROUND_LIMIT {
        (x + 0.5f64.copysign(x)) as i64
    } else {
        x.round() as i64
    };
    (from_mantissa(m, scale).to_bits() == v.to_bits()).then_some(m)
}

/// Inverse of [`to_mantissa`].
#[inline]
pub fn from_mantissa(m: i64, scale: u8) -> f64 {
    let p = POW10.get(usize::from(scale)).copied().unwrap_or(1.0);
    if scale == 0 { m as f64 } else { m as f64 / p }
}

/// Symbols queued for the range coder, column by column.
enum Symbols {
    /// Values and the length-tree depth they need.
    Uint(Vec<u64>, u32),
    Xor(Vec<u64>),
}

/// Builds the column headers first and codes all symbols afterwards in one stream.
#[derive(Default)]
pub struct ColumnWriter {
    symbols: Vec<Symbols>,
    /// Integer columns are table-coded (`table` module) right after their headers instead
    /// of going to the range-coded stream.
    table_coded: bool,
}

fn bitlen(v: u64) -> u64 {
    u64::from(64 - v.leading_zeros())
}

/// Estimated coded size (sum of bit lengths) of a difference column and the cheaper
/// transform: zigzag, minus-min (better for one-signed data such as counter increments), or
/// all zero.
fn column_cost(tail: &[i64]) -> (u64, u8) {
    let (mut zz, mut min, mut max_zz) = (0u64, i64::MAX, 0u64);
    for &d in tail {
        let z = zigzag(d);
        zz += bitlen(z);
        max_zz |= z;
        min = min.min(d);
    }
    if max_zz == 0 {
        return (0, XF_ZERO);
    }
    let off = tail
        .iter()
        .map(|&d| bitlen(d.wrapping_sub(min) as u64))
        .sum::<u64>()
        + bitlen(zigzag(min));
    if off < zz {
        (off, XF_OFFSET)
    } else {
        (zz, XF_ZIGZAG)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn diff(xs: &mut [i64]) {
    for i in (1..xs.len()).rev() {
        xs[i] = xs[i].wrapping_sub(xs[i - 1]);
    }
}

impl ColumnWriter {
    /// A writer whose integer columns are table-coded: each column's symbols follow its
    /// header as a table section, and only XOR float columns use the range-coded stream.
    /// Read with [`ColumnReader::table_coded`].
    pub fn table_coded() -> ColumnWriter {
        ColumnWriter {
            symbols: Vec::new(),
            table_coded: true,
        }
    }

    /// Plans an integer column: picks the differencing order in `orders` and the transform
    /// that minimise an estimate of the coded size, writes its header to `hdr`.
    /// The first stored initial value is written relative to `base` (timestamps use the
    /// block's base time so that it costs a byte).
    pub fn ints(&mut self, hdr: &mut Vec<u8>, xs: &[i64], max_order: u8, base: i64) {
        // Pass 1: differences of increasing order in place, costing each without copies.
        let mut work = xs.to_vec();
        let (mut best_cost, mut best_order, mut best_xf) = (u64::MAX, 0u8, XF_ZIGZAG);
        for order in 0..=max_order.min(2) {
            if order > 0
                && let Some(tail) = work.get_mut(usize::from(order - 1)..)
            {
                diff(tail);
            }
            let tail = work.get(usize::from(order).min(work.len())..).unwrap_or(&[]);
            let (cost, xf) = column_cost(tail);
            if cost < best_cost {
                (best_cost, best_order, best_xf) = (cost, order, xf);
            }
        }
        // Pass 2: rebuild the chosen order's differences (cheap) and write the header.
        work.copy_from_slice(xs);
        for k in 1..=best_order {
            if let Some(tail) = work.get_mut(usize::from(k - 1)..) {
                diff(tail);
            }
        }
        let split = usize::from(best_order).min(work.len());
        let (head, tail) = work.split_at(split);
        // A common factor of the differences (counters stepping by 512, decimals whose
        // steps are whole units) is divided out; division is exact.
        let g = tail.iter().fold(0u64, |g, &d| gcd(g, d.unsigned_abs()));
        let scaled: Vec<i64>;
        let tail = if g > 1 && best_xf != XF_ZERO {
            scaled = tail.iter().map(|&d| d / g as i64).collect();
            &scaled[..]
        } else {
            tail
        };
        let (min, symbols): (i64, Vec<u64>) = match best_xf {
            XF_ZERO => (0, Vec::new()),
            XF_OFFSET => {
                let min = tail.iter().copied().min().unwrap_or(0);
                (min, tail.iter().map(|&d| d.wrapping_sub(min) as u64).collect())
            }
            _ => (0, tail.iter().map(|&d| zigzag(d)).collect()),
        };
        let has_gcd = g > 1 && best_xf != XF_ZERO;
        let len_bits = len_bits_for(symbols.iter().copied().max().unwrap_or(0));
        hdr.push(best_order | (best_xf << 2) | ((len_bits as u8) << 4) | if has_gcd { HAS_GCD } else { 0 });
        for (i, &h) in head.iter().enumerate() {
            put_i64(hdr, if i == 0 { h.wrapping_sub(base) } else { h });
        }
        if best_xf == XF_OFFSET {
            put_i64(hdr, min);
        }
        if has_gcd {
            put_u64(hdr, g);
        }
        if best_xf != XF_ZERO {
            if self.table_coded {
                encode_column(&symbols, hdr);
            } else {
                self.symbols.push(Symbols::Uint(symbols, len_bits));
            }
        }
    }

    /// Plans a float column: decimal mantissas (with a few exceptions stored raw) when the
    /// values are decimals, otherwise XOR of consecutive bit patterns.
    pub fn floats(&mut self, hdr: &mut Vec<u8>, vals: &[f64]) {
        self.floats_in_order(hdr, vals, false);
    }

    /// [`ColumnWriter::floats`] for `vals` stored newest first: the column holds the values
    /// in reverse order, and decimal mantissas negated, so that their differences are the
    /// original ones (counter increments stay positive, which the minus-min transform
    /// codes cheaply) and the first stored value is the newest. Read it with
    /// [`ColumnReader::decode_window_newest_first`].
    pub fn floats_newest_first(&mut self, hdr: &mut Vec<u8>, vals: &[f64]) {
        let reversed: Vec<f64> = vals.iter().rev().copied().collect();
        self.floats_in_order(hdr, &reversed, true);
    }

    fn floats_in_order(&mut self, hdr: &mut Vec<u8>, vals: &[f64], negate_mantissas: bool) {
        if let Some(DecimalPlan {
            scale,
            mut mantissas,
            corrections,
            exceptions,
        }) = decimal_plan(vals).or_else(|| near_decimal_plan(vals))
        {
            if negate_mantissas {
                // |m| <= 2^53: negation is exact.
                mantissas.iter_mut().for_each(|m| *m = m.wrapping_neg());
            }
            let exc_flag = if exceptions.is_empty() { 0 } else { HAS_EXCEPTIONS };
            let kind = if corrections.is_some() {
                VALUES_NEAR_DECIMAL
            } else {
                VALUES_DECIMAL
            };
            hdr.push(kind | exc_flag | (scale << 3));
            if !exceptions.is_empty() {
                put_u64(hdr, exceptions.len() as u64);
            }
            let mut prev = 0usize;
            for &i in &exceptions {
                put_u64(hdr, (i - prev) as u64);
                prev = i;
                let bits = vals.get(i).map_or(0, |v| v.to_bits());
                hdr.extend_from_slice(&bits.to_le_bytes());
            }
            self.ints(hdr, &mantissas, 2, 0);
            if let Some(c) = corrections {
                self.ints(hdr, &c, 1, 0);
            }
        } else {
            hdr.push(VALUES_XOR);
            let mut prev = 0u64;
            let xs = vals
                .iter()
                .map(|v| {
                    let b = v.to_bits();
                    let x = b ^ prev;
                    prev = b;
                    x
                })
                .collect();
            self.symbols.push(Symbols::Xor(xs));
        }
    }

    /// Codes every planned column into one range-coded stream appended to `out`.
    pub fn finish(self, out: &mut Vec<u8>) {
        let mut enc = Encoder::new(out);
        for s in self.symbols {
            match s {
                Symbols::Uint(xs, len_bits) => {
                    let mut m = UintModel::with_len_bits(len_bits);
                    for x in xs {
                        m.encode(&mut enc, x);
                    }
                }
                Symbols::Xor(xs) => {
                    let mut m = XorModel::default();
                    for x in xs {
                        m.encode(&mut enc, x);
                    }
                }
            }
        }
        enc.finish();
    }
}

/// Picks the decimal scale for `vals`; `None` if more than 1/8 of them (or all) are not
/// decimals. Exceptions reuse the previous mantissa so that they cost nothing in the stream.
fn decimal_plan(vals: &[f64]) -> Option<DecimalPlan> {
    let mut scale = 0u8;
    let mut misses = 0usize;
    let allowed = vals.len() / 8;
    for &v in vals {
        match (scale..=MAX_SCALE).find(|&s| to_mantissa(v, s).is_some()) {
            Some(s) => scale = s,
            None => {
                misses += 1;
                if misses > allowed {
                    return None;
                }
            }
        }
    }
    let mut mantissas = Vec::with_capacity(vals.len());
    let mut exceptions = Vec::new();
    let mut prev = 0i64;
    for (i, &v) in vals.iter().enumerate() {
        match to_mantissa(v, scale) {
            Some(m) => prev = m,
            None => exceptions.push(i),
        }
        mantissas.push(prev);
    }
    (exceptions.len() <= allowed && exceptions.len() < vals.len()).then_some(DecimalPlan {
        scale,
        mantissas,
        corrections: None,
        exceptions,
    })
}

/// How a float column is stored as decimal mantissas.
struct DecimalPlan {
    scale: u8,
    mantissas: Vec<i64>,
    /// Bit-pattern corrections for near-decimals; `None` for exact decimals.
    corrections: Option<Vec<i64>>,
    /// Indexes of values stored raw.
    exceptions: Vec<usize>,
}

/// The decimal mantissa of `v` at `scale` and the bit-pattern correction that turns the
/// decimal back into `v`, if that correction is at most [`NEAR_MAX_ULPS`].
fn near_mantissa(v: f64, scale: u8) -> Option<(i64, i64)> {
    let p = *POW10.get(usize::from(scale))?;
    let x = v * p;
    if x.is_nan() || x.abs() > MANTISSA_LIMIT {
        return None;
    }
    let m = x.round() as i64;
    let d = v.to_bits().wrapping_sub(from_mantissa(m, scale).to_bits()) as i64;
    (d.unsigned_abs() <= NEAR_MAX_ULPS as u64).then_some((m, d))
}

/// Like [`decimal_plan`] for values carrying float noise (sums and products of decimals):
/// mantissas, corrections (exact by construction: `bits = decimal bits + correction`) and
/// exceptions. `None` when more than 1/8 of the values are not near any decimal.
fn near_decimal_plan(vals: &[f64]) -> Option<DecimalPlan> {
    let allowed = vals.len() / 8;
    let mut scale = 0u8;
    let mut misses = 0usize;
    for &v in vals {
        match (scale..=NEAR_MAX_SCALE).find(|&s| near_mantissa(v, s).is_some()) {
            Some(s) => scale = s,
            None => {
                misses += 1;
                if misses > allowed {
                    return None;
                }
            }
        }
    }
    let (mut mantissas, mut corrections, mut exceptions) = (Vec::new(), Vec::new(), Vec::new());
    let mut prev = 0i64;
    for (i, &v) in vals.iter().enumerate() {
        let d = match near_mantissa(v, scale) {
            Some((m, d)) => {
                prev = m;
                d
            }
            None => {
                exceptions.push(i);
                0
            }
        };
        mantissas.push(prev);
        corrections.push(d);
    }
    (exceptions.len() <= allowed && exceptions.len() < vals.len()).then_some(DecimalPlan {
        scale,
        mantissas,
        corrections: Some(corrections),
        exceptions,
    })
}

/// The header of an integer column.
struct IntCol<'a> {
    n: usize,
    order: u8,
    xf: u8,
    len_bits: u32,
    head: Vec<i64>,
    min: i64,
    /// Common factor of the differences (1 when none was divided out).
    factor: i64,
    /// The column's own table-coded symbols; `None` when they are in the range-coded stream
    /// (or the column has none).
    table: Option<TableColumn<'a>>,
}

impl IntCol<'_> {
    /// How many values decoding the first `limit` yields: at least the head values
    /// (callers truncate), at most the column's.
    fn values(&self, limit: usize) -> usize {
        self.n.min(limit.max(self.head.len()))
    }
}

/// The header of a decimal (or near-decimal) float column.
struct DecimalCol<'a> {
    /// Per-value ULP corrections (near-decimal columns only).
    corrections: Option<IntCol<'a>>,
    scale: u8,
    exceptions: Vec<(usize, u64)>,
    ints: IntCol<'a>,
}

/// A column header parsed before the stream is decoded.
enum Column<'a> {
    Ints(IntCol<'a>),
    Decimal(DecimalCol<'a>),
    Xor { n: usize },
}

/// Parses column headers, then decodes the stream.
#[derive(Default)]
pub struct ColumnReader<'a> {
    columns: Vec<Column<'a>>,
    /// Integer columns carry table sections ([`ColumnWriter::table_coded`]).
    table_coded: bool,
}

fn corrupt(what: &'static str) -> CodecError {
    CodecError::Corrupt(what)
}

fn parse_ints<'a>(
    r: &mut Reader<'a>,
    n: usize,
    base: i64,
    table_coded: bool,
) -> Result<IntCol<'a>, CodecError> {
    let b = r.u8().ok_or(corrupt("truncated column header"))?;
    let (order, xf, len_bits) = (b & 3, (b >> 2) & 3, u32::from((b >> 4) & 7));
    if order > 2 || xf > XF_ZERO {
        return Err(corrupt("bad column header"));
    }
    let mut head = Vec::new();
    for i in 0..usize::from(order).min(n) {
        let h = r.i64().ok_or(corrupt("truncated column header"))?;
        head.push(if i == 0 { h.wrapping_add(base) } else { h });
    }
    let min = if xf == XF_OFFSET {
        r.i64().ok_or(corrupt("truncated column header"))?
    } else {
        0
    };
    let factor = if b & HAS_GCD != 0 {
        r.u64().ok_or(corrupt("truncated column header"))? as i64
    } else {
        1
    };
    let table = if table_coded && xf != XF_ZERO {
        Some(TableColumn::parse(r)?)
    } else {
        None
    };
    Ok(IntCol {
        n,
        order,
        xf,
        len_bits,
        head,
        min,
        factor,
        table,
    })
}

fn parse_floats<'a>(r: &mut Reader<'a>, n: usize, table_coded: bool) -> Result<Column<'a>, CodecError> {
    let b = r.u8().ok_or(corrupt("truncated value header"))?;
    match b & 3 {
        VALUES_DECIMAL | VALUES_NEAR_DECIMAL => {
            let scale = b >> 3;
            if scale > MAX_SCALE {
                return Err(corrupt("bad decimal scale"));
            }
            let count = if b & HAS_EXCEPTIONS != 0 {
                r.u64().ok_or(corrupt("truncated exceptions"))?
            } else {
                0
            };
            if count > n as u64 {
                return Err(corrupt("too many exceptions"));
            }
            let mut exceptions = Vec::with_capacity(count as usize);
            let mut at = 0u64;
            for _ in 0..count {
                at = at
                    .checked_add(r.u64().ok_or(corrupt("truncated exceptions"))?)
                    .ok_or(corrupt("bad exception index"))?;
                if at >= n as u64 {
                    return Err(corrupt("bad exception index"));
                }
                let bits = r.u64_le().ok_or(corrupt("truncated exceptions"))?;
                exceptions.push((at as usize, bits));
            }
            let ints = parse_ints(r, n, 0, table_coded)?;
            let corrections = if b & 3 == VALUES_NEAR_DECIMAL {
                Some(parse_ints(r, n, 0, table_coded)?)
            } else {
                None
            };
            Ok(Column::Decimal(DecimalCol {
                scale,
                exceptions,
                ints,
                corrections,
            }))
        }
        VALUES_XOR if b == VALUES_XOR => Ok(Column::Xor { n }),
        _ => Err(corrupt("bad value column kind")),
    }
}

/// Where an integer column's symbols come from.
trait SymbolSource {
    fn next_symbol(&mut self) -> u64;
}

/// Symbols of the range-coded stream.
struct RangeSymbols<'a> {
    model: UintModel,
    dec: Decoder<'a>,
}

impl SymbolSource for RangeSymbols<'_> {
    #[inline(always)]
    fn next_symbol(&mut self) -> u64 {
        self.model.decode(&mut self.dec)
    }
}

impl SymbolSource for TableReader<'_> {
    #[inline(always)]
    fn next_symbol(&mut self) -> u64 {
        self.next_value()
    }
}

/// One symbol of an integer column turned back into a (scaled) difference; `XF` is the
/// column transform, a constant so that each transform gets its own loop.
#[inline(always)]
fn symbol<const XF: u8>(src: &mut impl SymbolSource, min: i64) -> i64 {
    match XF {
        XF_ZERO => 0,
        XF_OFFSET => (src.next_symbol() as i64).wrapping_add(min),
        _ => unzigzag(src.next_symbol()),
    }
}

/// Decodes the first `n` values of an integer column and undoes its differencing in the
/// same pass, handing each value to `sink` in order. `XF` and `ORDER` are constants so that
/// the per-value loop has no branches on the column header; the source is a local value
/// (registers) for the whole loop.
#[inline(always)]
fn ints_loop<const XF: u8, const ORDER: u8>(
    col: &IntCol<'_>,
    n: usize,
    src: &mut impl SymbolSource,
    sink: &mut impl FnMut(i64),
) {
    let (min, factor) = (col.min, col.factor);
    // x: the last value; dx: the last first difference (order 2).
    let (mut x, mut dx) = (0i64, 0i64);
    let mut head = col.head.iter().copied();
    if ORDER >= 1
        && let Some(h0) = head.next()
    {
        x = h0;
        sink(x);
    }
    if ORDER >= 2
        && let Some(h1) = head.next()
    {
        dx = h1;
        x = x.wrapping_add(dx);
        sink(x);
    }
    for _ in col.head.len()..n {
        let s = symbol::<XF>(src, min).wrapping_mul(factor);
        match ORDER {
            0 => x = s,
            1 => x = x.wrapping_add(s),
            _ => {
                dx = dx.wrapping_add(s);
                x = x.wrapping_add(dx);
            }
        }
        sink(x);
    }
}

/// [`ints_loop`] with the column's transform and order as constants.
#[inline(always)]
fn ints_dispatch(col: &IntCol<'_>, n: usize, src: &mut impl SymbolSource, sink: &mut impl FnMut(i64)) {
    match (col.xf, col.order) {
        (XF_ZERO, 0) => ints_loop::<XF_ZERO, 0>(col, n, src, sink),
        (XF_ZERO, 1) => ints_loop::<XF_ZERO, 1>(col, n, src, sink),
        (XF_ZERO, _) => ints_loop::<XF_ZERO, 2>(col, n, src, sink),
        (XF_OFFSET, 0) => ints_loop::<XF_OFFSET, 0>(col, n, src, sink),
        (XF_OFFSET, 1) => ints_loop::<XF_OFFSET, 1>(col, n, src, sink),
        (XF_OFFSET, _) => ints_loop::<XF_OFFSET, 2>(col, n, src, sink),
        (_, 0) => ints_loop::<XF_ZIGZAG, 0>(col, n, src, sink),
        (_, 1) => ints_loop::<XF_ZIGZAG, 1>(col, n, src, sink),
        (_, _) => ints_loop::<XF_ZIGZAG, 2>(col, n, src, sink),
    }
}

/// Decodes the first `limit` values of an integer column (all when `limit >= n`; at least
/// its head values, so callers truncate), handing them to `sink` in order. Range-coded
/// columns read `dec`; table-coded ones their own stream, which must not overrun.
fn decode_ints_with(
    col: &IntCol<'_>,
    limit: usize,
    dec: &mut Decoder<'_>,
    sink: &mut impl FnMut(i64),
) -> Result<(), CodecError> {
    let n = col.values(limit);
    match &col.table {
        Some(table) => {
            let mut src = table.reader();
            ints_dispatch(col, n, &mut src, sink);
            table.check_consumed(src.consumed())
        }
        None => {
            let mut src = RangeSymbols {
                model: UintModel::with_len_bits(col.len_bits),
                dec: *dec,
            };
            ints_dispatch(col, n, &mut src, sink);
            *dec = src.dec;
            Ok(())
        }
    }
}

impl DecimalCol<'_> {
    /// Decodes the first `limit` values (all when `limit >= n`) of this column into `out`;
    /// `negated`: the mantissas were stored negated (newest-first columns). Decoding stops
    /// after `limit` values, except that a range-coded near-decimal column decodes every
    /// mantissa (its corrections follow them in the stream).
    fn decode(
        &self,
        dec: &mut Decoder<'_>,
        out: &mut Vec<f64>,
        limit: usize,
        negated: bool,
    ) -> Result<(), CodecError> {
        let start = out.len();
        let mantissa_limit = if self.corrections.is_some() && self.ints.table.is_none() {
            usize::MAX
        } else {
            limit
        };
        // Values are stored into slots made beforehand, not pushed: a push reloads the
        // vector's length and capacity through the closure's reference on every value, and
        // that spills the decoder's state out of registers.
        out.resize(start + self.ints.values(mantissa_limit), 0.0);
        let mut slots = out.get_mut(start..).unwrap_or_default().iter_mut();
        // Same result as `from_mantissa` (dividing an integer-valued float by 1.0 is exact).
        let p = POW10.get(usize::from(self.scale)).copied().unwrap_or(1.0);
        if negated {
            decode_ints_with(&self.ints, mantissa_limit, dec, &mut |m| {
                if let Some(slot) = slots.next() {
                    *slot = m.wrapping_neg() as f64 / p;
                }
            })?;
        } else {
            decode_ints_with(&self.ints, mantissa_limit, dec, &mut |m| {
                if let Some(slot) = slots.next() {
                    *slot = m as f64 / p;
                }
            })?;
        }
        if let Some(c) = &self.corrections {
            let mut i = start;
            decode_ints_with(c, limit, dec, &mut |d| {
                if let Some(slot) = out.get_mut(i) {
                    *slot = f64::from_bits(slot.to_bits().wrapping_add(d as u64));
                }
                i += 1;
            })?;
        }
        out.truncate(start.saturating_add(limit));
        for &(i, bits) in &self.exceptions {
            if let Some(slot) = out.get_mut(start + i) {
                *slot = f64::from_bits(bits);
            }
        }
        Ok(())
    }
}

/// Decodes an XOR float column of `n` values into `out`.
fn decode_xor(n: usize, dec: &mut Decoder<'_>, out: &mut Vec<f64>) {
    out.reserve(n);
    let mut d = *dec;
    let mut model = XorModel::default();
    let mut prev = 0u64;
    for _ in 0..n {
        prev ^= model.decode(&mut d);
        out.push(f64::from_bits(prev));
    }
    *dec = d;
}

impl<'a> ColumnReader<'a> {
    /// An empty reader; add columns in the order they were written.
    pub fn new() -> ColumnReader<'a> {
        ColumnReader::default()
    }

    /// An empty reader for columns written by [`ColumnWriter::table_coded`].
    pub fn table_coded() -> ColumnReader<'a> {
        ColumnReader {
            columns: Vec::new(),
            table_coded: true,
        }
    }

    /// Parses the header of an integer column of `n` values.
    pub fn ints(&mut self, r: &mut Reader<'a>, n: usize, base: i64) -> Result<(), CodecError> {
        self.columns
            .push(Column::Ints(parse_ints(r, n, base, self.table_coded)?));
        Ok(())
    }

    /// Parses the header of a float column of `n` values.
    pub fn floats(&mut self, r: &mut Reader<'a>, n: usize) -> Result<(), CodecError> {
        self.columns.push(parse_floats(r, n, self.table_coded)?);
        Ok(())
    }

    /// Decodes a raw series record's whole timestamp column (it comes first in the stream),
    /// appending to `ts`; returns the value column and the decoder positioned at its symbols.
    fn decode_timestamps<'r>(
        &self,
        rest: &'r [u8],
        ts: &mut Vec<i64>,
    ) -> Result<(&Column<'a>, Decoder<'r>), CodecError> {
        let (tcol, vcol) = match (self.columns.first(), self.columns.get(1), self.columns.len()) {
            (Some(Column::Ints(tcol)), Some(vcol @ (Column::Decimal(_) | Column::Xor { .. })), 2) => {
                (tcol, vcol)
            }
            _ => return Err(corrupt("column mismatch")),
        };
        let mut dec = Decoder::new(rest);
        ts.reserve(tcol.n);
        decode_ints_with(tcol, usize::MAX, &mut dec, &mut |v| ts.push(v))?;
        Ok((vcol, dec))
    }

    /// Decodes a raw series (one integer column of timestamps, then one float column, oldest
    /// sample first) from the stream `rest`, keeping the window that [`window_bounds`]
    /// gives for `start` and `end` (for sorted timestamps: the samples in `[start, end]`).
    /// Every timestamp is decoded (they come first in the stream and say where to stop);
    /// the values after the window are not, unless a near-decimal column's corrections
    /// follow them.
    pub fn decode_window(
        self,
        rest: &[u8],
        start: i64,
        end: i64,
        ts: &mut Vec<i64>,
        vals: &mut Vec<f64>,
    ) -> Result<(), CodecError> {
        let (t0, v0) = (ts.len(), vals.len());
        let (vcol, mut dec) = self.decode_timestamps(rest, ts)?;
        let (lo, hi) = window_bounds(ts.get(t0..).unwrap_or_default(), start, end);
        decode_values(vcol, &mut dec, vals, hi, false)?;
        check_overrun(&dec)?;
        keep_window(ts, t0, lo, hi);
        keep_window(vals, v0, lo, hi);
        Ok(())
    }

    /// [`ColumnReader::decode_window`] for a record written newest first: the timestamp
    /// column holds the series reflected (`first + last - t`, read backwards: the same
    /// differences, so it codes as cheaply) and the value column is
    /// [`ColumnWriter::floats_newest_first`]. Only the values from the newest sample back
    /// to the window's start are decoded, so a window at the end of a long record costs
    /// its own length, not the record's.
    pub fn decode_window_newest_first(
        self,
        rest: &[u8],
        start: i64,
        end: i64,
        ts: &mut Vec<i64>,
        vals: &mut Vec<f64>,
    ) -> Result<(), CodecError> {
        let (t0, v0) = (ts.len(), vals.len());
        let (vcol, mut dec) = self.decode_timestamps(rest, ts)?;
        let got = ts.get_mut(t0..).unwrap_or_default();
        unreflect(got);
        let n = got.len();
        let (lo, hi) = window_bounds(got, start, end);
        // The stream holds the newest value first: decode back to the window's start.
        decode_values(vcol, &mut dec, vals, n - lo, true)?;
        check_overrun(&dec)?;
        if let Some(newest) = vals.get_mut(v0..) {
            newest.reverse();
        }
        // `vals[v0..]` now holds samples `lo..n`; `ts[t0..]` holds `0..n`.
        keep_window(ts, t0, lo, hi);
        keep_window(vals, v0, 0, hi - lo);
        Ok(())
    }

    /// Decodes the stream `rest`; column `i`'s values go to `ints[..]`/`floats[..]` in
    /// order of appearance (integer columns fill `ints`, float columns fill `floats`).
    pub fn decode(
        self,
        rest: &[u8],
        ints: &mut [&mut Vec<i64>],
        floats: &mut [&mut Vec<f64>],
    ) -> Result<(), CodecError> {
        let mut dec = Decoder::new(rest);
        let (mut ii, mut fi) = (0usize, 0usize);
        for col in &self.columns {
            match col {
                Column::Ints(c) => {
                    let out = ints.get_mut(ii).ok_or(corrupt("column mismatch"))?;
                    ii += 1;
                    out.reserve(c.n);
                    decode_ints_with(c, usize::MAX, &mut dec, &mut |v| out.push(v))?;
                }
                Column::Decimal(d) => {
                    let out = floats.get_mut(fi).ok_or(corrupt("column mismatch"))?;
                    fi += 1;
                    d.decode(&mut dec, out, usize::MAX, false)?;
                }
                Column::Xor { n } => {
                    let out = floats.get_mut(fi).ok_or(corrupt("column mismatch"))?;
                    fi += 1;
                    decode_xor(*n, &mut dec, out);
                }
            }
            check_overrun(&dec)?;
        }
        Ok(())
    }
}

fn check_overrun(dec: &Decoder<'_>) -> Result<(), CodecError> {
    if dec.overrun() > MAX_OVERRUN {
        return Err(corrupt("stream overrun"));
    }
    Ok(())
}

/// Decodes the first `limit` values of a float column (`negated`: decimal mantissas stored
/// negated, as newest-first columns are).
fn decode_values(
    col: &Column<'_>,
    dec: &mut Decoder<'_>,
    out: &mut Vec<f64>,
    limit: usize,
    negated: bool,
) -> Result<(), CodecError> {
    match col {
        Column::Decimal(d) => d.decode(dec, out, limit, negated),
        Column::Xor { n } => {
            decode_xor((*n).min(limit), dec, out);
            Ok(())
        }
        Column::Ints(_) => Ok(()),
    }
}

/// Undoes the reflection of a newest-first timestamp column in place: the column stores
/// `r[i] = t[0] + t[n-1] - t[n-1-i]` (wrapping), so `r[0] = t[0]`, `r[n-1] = t[n-1]`.
fn unreflect(r: &mut [i64]) {
    let (Some(&first), Some(&last)) = (r.first(), r.last()) else {
        return;
    };
    let sum = first.wrapping_add(last);
    for x in r.iter_mut() {
        *x = sum.wrapping_sub(*x);
    }
    r.reverse();
}

/// The reflection [`unreflect`] undoes, for the writer.
pub(crate) fn reflect(ts: &[i64]) -> Vec<i64> {
    let (Some(&first), Some(&last)) = (ts.first(), ts.last()) else {
        return Vec::new();
    };
    let sum = first.wrapping_add(last);
    ts.iter().rev().map(|&t| sum.wrapping_sub(t)).collect()
}

/// Keeps `v[at + lo .. at + hi]` of what was appended after `at` (clamped to what is there).
fn keep_window<T>(v: &mut Vec<T>, at: usize, lo: usize, hi: usize) {
    let hi = at.saturating_add(hi).min(v.len());
    v.truncate(hi);
    let lo = at.saturating_add(lo).min(hi);
    v.drain(at..lo);
}
