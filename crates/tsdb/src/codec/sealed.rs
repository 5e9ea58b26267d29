//! The sealed (block) encoding: column headers as varints, then one adaptive range-coded
//! stream holding every column's symbols. See the `codec` module doc for the byte layout.

use super::CodecError;
use super::priors::{ClassKey, Priors, ROLE_CORRECTION, ROLE_MANTISSA, ROLE_OTHER};
use super::rc::{Decoder, Encoder, UintModel, XorModel, len_bits_for};
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

/// Symbols a writer codes both ways to pick prior or fresh for a column: the models differ
/// most while the fresh one learns (its adaptation rate settles after ~62 updates per
/// probability), so the first symbols decide at a fraction of coding all of them twice.
const PICK_PROBE: usize = 64;

/// Most segments of a segmented record (bounds the seek table a reader allocates).
pub const MAX_SEGMENTS: usize = 64;
/// Points of every segment of a segmented record but the first, which holds the rest
/// (segments are counted from the record's end, where recent-data reads look).
pub const SEGMENT_POINTS: usize = 60;
/// Fewest points of the first segment (its head values must fit).
const MIN_FIRST_SEGMENT: usize = 3;

/// Points `a..b` of segment `s` of `k` in a record of `n` points: the last `k - 1` segments
/// hold [`SEGMENT_POINTS`] each, the first the rest. `None` unless the first keeps at least
/// 3 points (`MIN_FIRST_SEGMENT`: its head values must fit).
pub fn segment_range(n: usize, k: usize, s: usize) -> Option<(usize, usize)> {
    let tail = k.checked_sub(1)?.checked_mul(SEGMENT_POINTS)?;
    let first = n.checked_sub(tail).filter(|&f| f >= MIN_FIRST_SEGMENT)?;
    if s >= k {
        return None;
    }
    let a = if s == 0 {
        0
    } else {
        first + (s - 1) * SEGMENT_POINTS
    };
    Some((a, first + s * SEGMENT_POINTS))
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
    /// Values, the length-tree depth they need and the column's class (for priors).
    Uint {
        xs: Vec<u64>,
        len_bits: u32,
        key: ClassKey,
        /// The column's values and differencing order (segment heads come from them).
        values: Vec<i64>,
        order: u8,
    },
    Xor(Vec<u64>),
}

/// Builds the column headers first and codes all symbols afterwards in one stream.
#[derive(Default)]
pub struct ColumnWriter {
    symbols: Vec<Symbols>,
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
    /// Plans an integer column: picks the differencing order in `orders` and the transform
    /// that minimise an estimate of the coded size, writes its header to `hdr`.
    /// The first stored initial value is written relative to `base` (timestamps use the
    /// block's base time so that it costs a byte). Such columns never use priors.
    pub fn ints(&mut self, hdr: &mut Vec<u8>, xs: &[i64], max_order: u8, base: i64) {
        self.ints_as(hdr, xs, max_order, base, ROLE_OTHER);
    }

    /// [`ColumnWriter::ints`] for a column of class role `role` (see `priors`).
    pub fn ints_as(&mut self, hdr: &mut Vec<u8>, xs: &[i64], max_order: u8, base: i64, role: u8) {
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
        let header = best_order | (best_xf << 2) | ((len_bits as u8) << 4);
        hdr.push(header | if has_gcd { HAS_GCD } else { 0 });
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
            self.symbols.push(Symbols::Uint {
                xs: symbols,
                len_bits,
                key: ClassKey { role, header },
                values: xs.to_vec(),
                order: best_order,
            });
        }
    }

    /// Plans a float column: decimal mantissas (with a few exceptions stored raw) when the
    /// values are decimals, otherwise XOR of consecutive bit patterns.
    pub fn floats(&mut self, hdr: &mut Vec<u8>, vals: &[f64]) {
        if let Some(DecimalPlan {
            scale,
            mantissas,
            corrections,
            exceptions,
        }) = decimal_plan(vals).or_else(|| near_decimal_plan(vals))
        {
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
            self.ints_as(hdr, &mantissas, 2, 0, ROLE_MANTISSA);
            if let Some(c) = corrections {
                self.ints_as(hdr, &c, 1, 0, ROLE_CORRECTION);
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
        self.code(out, None);
    }

    /// Learns priors from this record's columns (see [`Priors::learn`]). When any of its
    /// integer columns' classes has a prior, codes the stream with a *prior bit* before each
    /// integer column's symbols (1: its model starts from the class's prior, chosen only
    /// where that codes its first 64 symbols smaller) and returns `true` (the record is then
    /// tag 4); otherwise codes what [`ColumnWriter::finish`] would and returns `false`.
    pub fn finish_with_priors(self, out: &mut Vec<u8>, priors: &mut Priors) -> bool {
        let mut any = false;
        for s in &self.symbols {
            if let Symbols::Uint { xs, key, .. } = s {
                priors.learn(*key, xs);
                any |= priors.get(*key).is_some();
            }
        }
        self.code(out, any.then_some(&*priors));
        any
    }

    /// Whether the planned record can be coded in segments: every column with symbols is an
    /// integer column (no XOR values) and there is at least one.
    pub fn segmentable(&self) -> bool {
        !self.symbols.is_empty() && self.symbols.iter().all(|s| matches!(s, Symbols::Uint { .. }))
    }

    /// Codes a [`ColumnWriter::segmentable`] record of `n` values per column in `k`
    /// segments ([`segment_range`]; `2 <= k <= MAX_SEGMENTS`, which it clamps to what `n`
    /// allows), learning
    /// priors first as [`ColumnWriter::finish_with_priors`] does:
    ///
    /// ```text
    /// k:u8 heads{k-1} (stream length - total / k):zigzag-varint{k-1} stream{k}
    /// heads  := per integer column with symbols, in column order: (x - previous head):
    ///           zigzag-varint [(x - x_prev):zigzag-varint if order 2], where x is the value
    ///           just before the segment (the previous head of segment 1 is the first value)
    /// stream := one rc-stream: per integer column with symbols its prior bit, then its
    ///           symbols of the segment's points (columns without symbols need nothing:
    ///           constant-stride timestamps are computed)
    /// ```
    pub fn finish_segmented(self, out: &mut Vec<u8>, priors: &mut Priors, k: usize, n: usize) {
        // (symbols, length-tree depth, class, values, order) of each column with symbols.
        type Col<'a> = (&'a Vec<u64>, u32, ClassKey, &'a Vec<i64>, usize);
        let cols: Vec<Col<'_>> = self
            .symbols
            .iter()
            .filter_map(|s| match s {
                Symbols::Uint {
                    xs,
                    len_bits,
                    key,
                    values,
                    order,
                } => Some((xs, *len_bits, *key, values, usize::from(*order))),
                Symbols::Xor(_) => None,
            })
            .collect();
        for &(xs, _, key, _, _) in &cols {
            priors.learn(key, xs);
        }
        let mut k = k.clamp(2, MAX_SEGMENTS);
        while k > 2 && segment_range(n, k, 0).is_none() {
            k -= 1;
        }
        out.push(k as u8);
        let mut prev: Vec<i64> = cols.iter().map(|c| c.3.first().copied().unwrap_or(0)).collect();
        for seg in 1..k {
            let i = segment_range(n, k, seg).map_or(1, |(a, _)| a) - 1;
            for (c, prev) in cols.iter().zip(prev.iter_mut()) {
                let x = c.3.get(i).copied().unwrap_or(0);
                put_i64(out, x.wrapping_sub(*prev));
                *prev = x;
                if c.4 == 2 {
                    put_i64(out, x.wrapping_sub(c.3.get(i - 1).copied().unwrap_or(0)));
                }
            }
        }
        let (mut streams, mut lens, mut scratch) = (Vec::new(), Vec::with_capacity(k), Vec::new());
        for seg in 0..k {
            let (a, b) = segment_range(n, k, seg).unwrap_or((n, n));
            let at = streams.len();
            let mut enc = Encoder::new(&mut streams);
            for &(xs, len_bits, key, _, order) in &cols {
                let part = xs
                    .get(a.saturating_sub(order)..b.saturating_sub(order))
                    .unwrap_or(&[]);
                let (used, mut m) = pick_model(priors, key, len_bits, part, &mut scratch);
                enc.direct(u64::from(used), 1);
                for &x in part {
                    m.encode(&mut enc, x);
                }
            }
            enc.finish();
            lens.push(streams.len() - at);
        }
        let avg = (streams.len() / k.max(1)) as i64;
        for &l in lens.iter().take(k.saturating_sub(1)) {
            put_i64(out, l as i64 - avg);
        }
        out.extend_from_slice(&streams);
    }

    /// Codes the columns into one stream; with `priors`, each integer column starts with
    /// its prior bit.
    fn code(self, out: &mut Vec<u8>, priors: Option<&Priors>) {
        let mut scratch = Vec::new();
        let mut enc = Encoder::new(out);
        for s in self.symbols {
            match s {
                Symbols::Uint {
                    xs, len_bits, key, ..
                } => {
                    let mut m = match priors {
                        None => UintModel::with_len_bits(len_bits),
                        Some(p) => {
                            let (used, m) = pick_model(p, key, len_bits, &xs, &mut scratch);
                            enc.direct(u64::from(used), 1);
                            m
                        }
                    };
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

/// The model a column's symbols `xs` start from: the class's prior when there is one and it
/// codes their first `PICK_PROBE` smaller (then `true`), else a fresh one.
fn pick_model(
    priors: &Priors,
    key: ClassKey,
    len_bits: u32,
    xs: &[u64],
    scratch: &mut Vec<u8>,
) -> (bool, UintModel) {
    let fresh = UintModel::with_len_bits(len_bits);
    let probe = xs.get(..PICK_PROBE).unwrap_or(xs);
    match priors.get(key) {
        Some(prior)
            if coded_len(prior.clone(), probe, scratch) < coded_len(fresh.clone(), probe, scratch) =>
        {
            (true, prior.clone())
        }
        _ => (false, fresh),
    }
}

/// Bytes of one stream coding `xs` with `model` (scratch is reused).
fn coded_len(mut model: UintModel, xs: &[u64], scratch: &mut Vec<u8>) -> usize {
    scratch.clear();
    let mut enc = Encoder::new(scratch);
    for &x in xs {
        model.encode(&mut enc, x);
    }
    enc.finish();
    scratch.len()
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
#[derive(Clone)]
struct IntCol<'p> {
    n: usize,
    /// Class of the column (role and header byte without the factor flag).
    key: ClassKey,
    /// Whether the stream codes a prior bit before this column's symbols (tag 4 records).
    prior_bit: bool,
    /// The block prior of the column's class, used when its prior bit is set.
    prior: Option<&'p UintModel>,
    order: u8,
    xf: u8,
    len_bits: u32,
    head: Vec<i64>,
    min: i64,
    /// Common factor of the differences (1 when none was divided out).
    factor: i64,
}

impl<'p> IntCol<'p> {
    /// This column cut to its first `limit` values (at least its head values: callers
    /// truncate the output to `limit`). Decoding it reads the same stream prefix.
    fn prefix(&self, limit: usize) -> IntCol<'p> {
        IntCol {
            n: self.n.min(limit.max(self.head.len())),
            ..self.clone()
        }
    }
}

/// A column header parsed before the stream is decoded.
enum Column<'p> {
    Ints(IntCol<'p>),
    Decimal {
        /// Per-value ULP corrections (near-decimal columns only).
        corrections: Option<IntCol<'p>>,
        scale: u8,
        exceptions: Vec<(usize, u64)>,
        ints: IntCol<'p>,
    },
    Xor {
        n: usize,
    },
}

/// Parses column headers, then decodes the stream.
#[derive(Default)]
pub struct ColumnReader<'p> {
    columns: Vec<Column<'p>>,
}

fn corrupt(what: &'static str) -> CodecError {
    CodecError::Corrupt(what)
}

fn parse_ints<'p>(r: &mut Reader<'_>, n: usize, base: i64, role: u8) -> Result<IntCol<'p>, CodecError> {
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
    Ok(IntCol {
        n,
        key: ClassKey {
            role,
            header: b & !HAS_GCD,
        },
        prior_bit: false,
        prior: None,
        order,
        xf,
        len_bits,
        head,
        min,
        factor,
    })
}

fn parse_floats<'p>(r: &mut Reader<'_>, n: usize) -> Result<Column<'p>, CodecError> {
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
            let ints = parse_ints(r, n, 0, ROLE_MANTISSA)?;
            let corrections = if b & 3 == VALUES_NEAR_DECIMAL {
                Some(parse_ints(r, n, 0, ROLE_CORRECTION)?)
            } else {
                None
            };
            Ok(Column::Decimal {
                scale,
                exceptions,
                ints,
                corrections,
            })
        }
        VALUES_XOR if b == VALUES_XOR => Ok(Column::Xor { n }),
        _ => Err(corrupt("bad value column kind")),
    }
}

/// One stream symbol of an integer column turned back into a (scaled) difference; `XF` is
/// the column transform, a constant so that each transform gets its own loop.
#[inline(always)]
fn symbol<const XF: u8>(model: &mut UintModel, dec: &mut Decoder<'_>, min: i64) -> i64 {
    match XF {
        XF_ZERO => 0,
        XF_OFFSET => (model.decode(dec) as i64).wrapping_add(min),
        _ => unzigzag(model.decode(dec)),
    }
}

/// Decodes an integer column and undoes its differencing in the same pass, handing each
/// value to `sink` in order. `XF` and `ORDER` are constants so that the per-value loop has
/// no branches on the column header. Works on a local copy of the decoder (registers) and
/// stores it back at the end.
#[inline(always)]
///
/// With `from = None` it emits the column's head values and then decodes symbols up to
/// `count` values in all; with `from = Some((x, dx))` (a segment of a segmented record: the
/// value before the segment and, for order 2, the difference that led to it) it decodes
/// `count` symbols starting from that state.
fn ints_loop<const XF: u8, const ORDER: u8>(
    col: &IntCol,
    dec: &mut Decoder<'_>,
    from: Option<(i64, i64)>,
    count: usize,
    sink: &mut impl FnMut(i64),
) {
    let mut d = *dec;
    // A set prior bit without a prior is corrupt input: it decodes wrong values (caught by
    // the block's checksum), never panics.
    let use_prior = col.prior_bit && d.direct(1) == 1;
    let mut model = match col.prior {
        Some(p) if use_prior => p.clone(),
        _ => UintModel::with_len_bits(col.len_bits),
    };
    let (min, factor) = (col.min, col.factor);
    // x: the last value; dx: the last first difference (order 2).
    let (mut x, mut dx) = from.unwrap_or((0, 0));
    let mut symbols = count;
    if from.is_none() {
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
        symbols = count.saturating_sub(col.head.len());
    }
    for _ in 0..symbols {
        let s = symbol::<XF>(&mut model, &mut d, min).wrapping_mul(factor);
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
    *dec = d;
}

/// Decodes an integer column, handing its values to `sink` in order.
fn decode_ints_with(col: &IntCol, dec: &mut Decoder<'_>, sink: &mut impl FnMut(i64)) {
    decode_ints_from(col, dec, None, col.n, sink);
}

/// [`ints_loop`] for the column's order and transform.
fn decode_ints_from(
    col: &IntCol,
    dec: &mut Decoder<'_>,
    from: Option<(i64, i64)>,
    count: usize,
    sink: &mut impl FnMut(i64),
) {
    match (col.xf, col.order) {
        (XF_ZERO, 0) => ints_loop::<XF_ZERO, 0>(col, dec, from, count, sink),
        (XF_ZERO, 1) => ints_loop::<XF_ZERO, 1>(col, dec, from, count, sink),
        (XF_ZERO, _) => ints_loop::<XF_ZERO, 2>(col, dec, from, count, sink),
        (XF_OFFSET, 0) => ints_loop::<XF_OFFSET, 0>(col, dec, from, count, sink),
        (XF_OFFSET, 1) => ints_loop::<XF_OFFSET, 1>(col, dec, from, count, sink),
        (XF_OFFSET, _) => ints_loop::<XF_OFFSET, 2>(col, dec, from, count, sink),
        (_, 0) => ints_loop::<XF_ZIGZAG, 0>(col, dec, from, count, sink),
        (_, 1) => ints_loop::<XF_ZIGZAG, 1>(col, dec, from, count, sink),
        (_, _) => ints_loop::<XF_ZIGZAG, 2>(col, dec, from, count, sink),
    }
}

/// Drops, of the samples appended from `t0`/`v0` on, those before the first one at or
/// after `start` (for sorted timestamps: all those before `start`). Costs the dropped
/// prefix, not a pass over everything.
pub(crate) fn drop_before(start: i64, t0: usize, v0: usize, ts: &mut Vec<i64>, vals: &mut Vec<f64>) {
    let Some(appended) = ts.get(t0..) else {
        return;
    };
    let drop = appended
        .iter()
        .position(|&t| t >= start)
        .unwrap_or(appended.len());
    if drop > 0 {
        ts.drain(t0..t0 + drop);
        vals.drain(v0.min(vals.len())..v0.saturating_add(drop).min(vals.len()));
    }
}

/// The state `(x_i, x_i - x_{i-1})` of a column without symbols (transform "all zero") at
/// value `i`: constant-stride columns need no per-segment head.
fn zero_state(col: &IntCol, i: usize) -> (i64, i64) {
    let h0 = col.head.first().copied().unwrap_or(0);
    let h1 = col.head.get(1).copied().unwrap_or(0);
    match col.order {
        0 => (0, 0),
        1 => (h0, 0),
        _ => (h0.wrapping_add((i as i64).wrapping_mul(h1)), h1),
    }
}

/// Decodes the first `limit` values (all when `limit >= n`) of a decimal (or near-decimal)
/// float column into `out`. With a corrections column every mantissa is decoded (the
/// corrections follow them in the stream), otherwise decoding stops after `limit`.
fn decode_decimal(
    ints: &IntCol,
    corrections: Option<&IntCol>,
    scale: u8,
    exceptions: &[(usize, u64)],
    dec: &mut Decoder<'_>,
    out: &mut Vec<f64>,
    limit: usize,
) {
    let start = out.len();
    let limited;
    let ints = if corrections.is_none() && limit < ints.n {
        limited = ints.prefix(limit);
        &limited
    } else {
        ints
    };
    out.reserve(ints.n);
    // Same result as `from_mantissa` (dividing an integer-valued float by 1.0 is exact).
    let p = POW10.get(usize::from(scale)).copied().unwrap_or(1.0);
    decode_ints_with(ints, dec, &mut |m| out.push(m as f64 / p));
    if let Some(c) = corrections {
        let c = c.prefix(limit);
        let mut i = start;
        decode_ints_with(&c, dec, &mut |d| {
            if let Some(slot) = out.get_mut(i) {
                *slot = f64::from_bits(slot.to_bits().wrapping_add(d as u64));
            }
            i += 1;
        });
    }
    out.truncate(start.saturating_add(limit));
    for &(i, bits) in exceptions {
        if let Some(slot) = out.get_mut(start + i) {
            *slot = f64::from_bits(bits);
        }
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

impl<'p> ColumnReader<'p> {
    /// An empty reader; add columns in the order they were written.
    pub fn new() -> ColumnReader<'p> {
        ColumnReader { columns: Vec::new() }
    }

    /// Parses the header of an integer column of `n` values.
    pub fn ints(&mut self, r: &mut Reader<'_>, n: usize, base: i64) -> Result<(), CodecError> {
        self.ints_as(r, n, base, ROLE_OTHER)
    }

    /// Parses the header of an integer column of `n` values of class role `role`.
    pub fn ints_as(&mut self, r: &mut Reader<'_>, n: usize, base: i64, role: u8) -> Result<(), CodecError> {
        self.columns.push(Column::Ints(parse_ints(r, n, base, role)?));
        Ok(())
    }

    /// Marks the parsed columns as coded by [`ColumnWriter::finish_with_priors`] with
    /// prior bits (a tag 4 record): each integer column with symbols reads its prior bit
    /// and may start from its class's prior in `priors`.
    pub fn use_priors(&mut self, priors: &'p Priors) {
        for col in &mut self.columns {
            let ints: [Option<&mut IntCol<'p>>; 2] = match col {
                Column::Ints(c) => [Some(c), None],
                Column::Decimal {
                    ints, corrections, ..
                } => [Some(ints), corrections.as_mut()],
                Column::Xor { .. } => [None, None],
            };
            for c in ints.into_iter().flatten() {
                if c.xf != XF_ZERO {
                    c.prior_bit = true;
                    c.prior = priors.get(c.key);
                }
            }
        }
    }

    /// Parses the header of a float column of `n` values.
    pub fn floats(&mut self, r: &mut Reader<'_>, n: usize) -> Result<(), CodecError> {
        self.columns.push(parse_floats(r, n)?);
        Ok(())
    }

    /// Decodes a raw series (one integer column of timestamps, then one float column) from
    /// the stream `rest`, stopping early: appends the samples up to and including the last
    /// one whose timestamp is `<= end` (nothing when there is none), exactly what decoding
    /// everything and truncating after that sample gives. Every timestamp is decoded (they
    /// come first in the stream and say where to stop); the values after the cut are not,
    /// unless a near-decimal column's corrections follow them.
    pub fn decode_until(
        self,
        rest: &[u8],
        end: i64,
        ts: &mut Vec<i64>,
        vals: &mut Vec<f64>,
    ) -> Result<(), CodecError> {
        let (Some(Column::Ints(tcol)), Some(vcol), 2) =
            (self.columns.first(), self.columns.get(1), self.columns.len())
        else {
            return Err(corrupt("column mismatch"));
        };
        let mut dec = Decoder::new(rest);
        let t0 = ts.len();
        ts.reserve(tcol.n);
        decode_ints_with(tcol, &mut dec, &mut |v| ts.push(v));
        let keep = ts
            .get(t0..)
            .unwrap_or_default()
            .iter()
            .rposition(|&t| t <= end)
            .map_or(0, |i| i + 1);
        ts.truncate(t0 + keep);
        match vcol {
            Column::Decimal {
                scale,
                exceptions,
                ints,
                corrections,
            } => decode_decimal(
                ints,
                corrections.as_ref(),
                *scale,
                exceptions,
                &mut dec,
                vals,
                keep,
            ),
            Column::Xor { n } => decode_xor((*n).min(keep), &mut dec, vals),
            Column::Ints(_) => return Err(corrupt("column mismatch")),
        }
        if dec.overrun() > MAX_OVERRUN {
            return Err(corrupt("stream overrun"));
        }
        Ok(())
    }

    /// Decodes a segmented raw series (written by [`ColumnWriter::finish_segmented`] after
    /// a timestamp column and a decimal value column of `n` values; `r` is positioned after
    /// their headers), appending the samples with `start <= ts <= end`. Only the segments
    /// whose time span can overlap `start..=end` are decoded: segment `s` holds the points
    /// after the last timestamp of segment `s - 1` (the timestamp column's state before it,
    /// from the seek table or computed for constant-stride columns). Timestamps must be
    /// sorted (writers segment only such records); never panics on corrupt input.
    pub fn decode_segmented(
        &self,
        r: &mut Reader<'_>,
        n: usize,
        start: i64,
        end: i64,
        ts: &mut Vec<i64>,
        vals: &mut Vec<f64>,
    ) -> Result<(), CodecError> {
        let (
            Some(Column::Ints(tcol)),
            Some(Column::Decimal {
                scale,
                exceptions,
                ints,
                corrections,
            }),
            2,
        ) = (self.columns.first(), self.columns.get(1), self.columns.len())
        else {
            return Err(corrupt("column mismatch"));
        };
        let cols: [Option<&IntCol<'p>>; 3] = [Some(tcol), Some(ints), corrections.as_ref()];
        let k = usize::from(r.u8().ok_or(corrupt("truncated segment count"))?);
        if !(2..=MAX_SEGMENTS).contains(&k) || segment_range(n, k, 0).is_none() {
            return Err(corrupt("bad segment count"));
        }
        // states[s][c]: column c's (value, difference) just before segment s (s >= 1).
        let mut states = vec![[(0i64, 0i64); 3]; k];
        let mut prev = cols.map(|c| c.and_then(|c| c.head.first().copied()).unwrap_or(0));
        for (seg, state) in states.iter_mut().enumerate().skip(1) {
            let (a, _) = segment_range(n, k, seg).ok_or(corrupt("bad segment count"))?;
            let i = a - 1;
            for (ci, c) in cols.iter().enumerate() {
                let (Some(c), Some(slot), Some(prev)) = (c, state.get_mut(ci), prev.get_mut(ci)) else {
                    continue;
                };
                if c.xf == XF_ZERO {
                    *slot = zero_state(c, i);
                    continue;
                }
                let x = prev.wrapping_add(r.i64().ok_or(corrupt("truncated seek table"))?);
                *prev = x;
                let dx = if c.order == 2 {
                    r.i64().ok_or(corrupt("truncated seek table"))?
                } else {
                    0
                };
                *slot = (x, dx);
            }
        }
        let mut deltas = [0i64; MAX_SEGMENTS];
        for d in deltas.iter_mut().take(k - 1) {
            *d = r.i64().ok_or(corrupt("truncated seek table"))?;
        }
        let rest = r.rest();
        let avg = (rest.len() / k) as i64;
        let mut bounds = [0usize; MAX_SEGMENTS + 1];
        for seg in 0..k {
            let len = match deltas.get(seg) {
                Some(&d) if seg + 1 < k => {
                    usize::try_from(avg.checked_add(d).ok_or(corrupt("bad segment length"))?)
                        .map_err(|_| corrupt("bad segment length"))?
                }
                _ => rest
                    .len()
                    .checked_sub(bounds[seg])
                    .ok_or(corrupt("bad segment length"))?,
            };
            bounds[seg + 1] = bounds[seg]
                .checked_add(len)
                .filter(|&e| e <= rest.len())
                .ok_or(corrupt("bad segment length"))?;
        }
        let pw = POW10.get(usize::from(*scale)).copied().unwrap_or(1.0);
        for seg in 0..k {
            // Points of segment `seg` have timestamps after `states[seg][0].0`.
            let after_end = seg > 0 && states[seg][0].0 >= end;
            let before_start = seg + 1 < k && states[seg + 1][0].0 < start;
            if after_end {
                break;
            }
            if before_start {
                continue;
            }
            let stream = rest.get(bounds[seg]..bounds[seg + 1]).unwrap_or(&[]);
            let mut dec = Decoder::new(stream);
            let (a, b) = segment_range(n, k, seg).ok_or(corrupt("bad segment count"))?;
            let from = |ci: usize| (seg > 0).then(|| states[seg][ci]);
            let count = if seg == 0 { b } else { b - a };
            let (t0, v0) = (ts.len(), vals.len());
            ts.reserve(count);
            vals.reserve(count);
            decode_ints_from(tcol, &mut dec, from(0), count, &mut |t| ts.push(t));
            // Values after the last timestamp <= end are not decoded (unless corrections
            // follow the mantissas in the stream); `count` of segment 0 includes the heads.
            let keep = ts
                .get(t0..)
                .unwrap_or_default()
                .iter()
                .rposition(|&t| t <= end)
                .map_or(0, |i| i + 1);
            ts.truncate(t0 + keep);
            let upto = |c: &IntCol| if seg == 0 { keep.max(c.head.len()) } else { keep };
            let m_count = if corrections.is_some() { count } else { upto(ints) };
            decode_ints_from(ints, &mut dec, from(1), m_count, &mut |m| {
                vals.push(m as f64 / pw)
            });
            if let Some(c) = corrections {
                let mut i = v0;
                decode_ints_from(c, &mut dec, from(2), upto(c), &mut |d| {
                    if let Some(slot) = vals.get_mut(i) {
                        *slot = f64::from_bits(slot.to_bits().wrapping_add(d as u64));
                    }
                    i += 1;
                });
            }
            if dec.overrun() > MAX_OVERRUN {
                return Err(corrupt("stream overrun"));
            }
            vals.truncate(v0 + keep);
            for &(i, bits) in exceptions.iter().filter(|(i, _)| (a..b).contains(i)) {
                if let Some(slot) = vals.get_mut(v0 + i - a) {
                    *slot = f64::from_bits(bits);
                }
            }
            drop_before(start, t0, v0, ts, vals);
            if keep < b - a {
                break;
            }
        }
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
                    decode_ints_with(c, &mut dec, &mut |v| out.push(v));
                }
                Column::Decimal {
                    scale,
                    exceptions,
                    ints: inner,
                    corrections,
                } => {
                    let out = floats.get_mut(fi).ok_or(corrupt("column mismatch"))?;
                    fi += 1;
                    decode_decimal(
                        inner,
                        corrections.as_ref(),
                        *scale,
                        exceptions,
                        &mut dec,
                        out,
                        usize::MAX,
                    );
                }
                Column::Xor { n } => {
                    let out = floats.get_mut(fi).ok_or(corrupt("column mismatch"))?;
                    fi += 1;
                    decode_xor(*n, &mut dec, out);
                }
            }
            if dec.overrun() > MAX_OVERRUN {
                return Err(corrupt("stream overrun"));
            }
        }
        Ok(())
    }
}
