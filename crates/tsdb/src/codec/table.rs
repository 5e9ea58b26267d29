//! Table-coded integer columns: each value's bit length through a per-column canonical
//! Huffman code of at most [`MAX_CODE_LEN`] bits, then the bits below its leading one raw.
//!
//! Why it exists next to the range coder: a range-coded column costs ~25–50 ns per value to
//! decode because every bit depends on the previous one, while this decodes a value with one
//! table lookup and two shifts (~4 ns). It codes smooth distributions (random-walk deltas,
//! counter increments) within ~1 % of the adaptive range coder, because most of their
//! information is in the low bits, which both store raw. It loses where a column is nearly
//! constant (a Huffman code spends at least one bit per value), so the record encoder keeps
//! whichever coding is about as small; see `codec::encode_packed_or_raw`.
//!
//! Layout of one column, written after its ints-header:
//!
//! ```text
//! table-section := first:u8 count:u8 code-lengths:nibble{count} (padded to a byte)
//!                  bits:varint stream:u8{ceil(bits / 8)}
//! ```
//!
//! `code-lengths` holds the code length (0 = unused, 1..=8) of bit lengths
//! `first..first + count`, high nibble first. Codes are canonical: assigned in order of
//! (length, bit length), each the previous plus one, shifted left when the length grows. The
//! stream is MSB-first: per value, the code of its bit length `n`, then for `n >= 2` its low
//! `n - 1` bits.
//!
//! Decoding never panics: a table that is not a prefix code is refused, reads past the
//! stream see zeros, and the caller checks that no more than `bits` were consumed.

use super::CodecError;
use super::varint::{Reader, put_u64};

/// Longest code; the decoder's lookup table has `2^MAX_CODE_LEN` entries.
pub const MAX_CODE_LEN: u32 = 8;
/// Bit lengths of u64 values: 0 (the value 0) to 64.
const SYMBOLS: usize = 65;
/// A decode-table entry: the bit length in the low byte, the code length in the high byte.
type Entry = u16;
/// The decoder's lookup table, indexed by the next [`MAX_CODE_LEN`] stream bits.
pub type DecodeTable = [Entry; 1 << MAX_CODE_LEN];
/// Bit lengths above this take the slow path (the fast path reads one 64-bit word, which
/// holds at least 57 unread bits: the code's 8 and 49 raw ones).
const FAST_MAX_BITLEN: u32 = 50;

fn corrupt(what: &'static str) -> CodecError {
    CodecError::Corrupt(what)
}

fn bit_length(v: u64) -> usize {
    (64 - v.leading_zeros()) as usize
}

/// Huffman code lengths for the bit lengths of `values`, limited to [`MAX_CODE_LEN`].
fn code_lengths(values: &[u64]) -> [u8; SYMBOLS] {
    let mut freq = [0u64; SYMBOLS];
    for &v in values {
        freq[bit_length(v)] += 1;
    }
    let used: Vec<usize> = (0..SYMBOLS).filter(|&s| freq[s] > 0).collect();
    let mut lens = [0u8; SYMBOLS];
    if let [only] = used[..] {
        lens[only] = 1;
        return lens;
    }
    // Huffman's merge of the two lightest nodes; leaves are 0..SYMBOLS, inner nodes after.
    let mut parent = vec![usize::MAX; 2 * SYMBOLS];
    let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize)>> =
        used.iter().map(|&s| std::cmp::Reverse((freq[s], s))).collect();
    let mut next = SYMBOLS;
    while let (Some(std::cmp::Reverse((wa, a))), Some(std::cmp::Reverse((wb, b)))) = (heap.pop(), heap.pop())
    {
        parent[a] = next;
        parent[b] = next;
        heap.push(std::cmp::Reverse((wa + wb, next)));
        next += 1;
    }
    for &s in &used {
        let (mut depth, mut node) = (0u32, s);
        while let Some(&p) = parent.get(node).filter(|&&p| p != usize::MAX) {
            node = p;
            depth += 1;
        }
        lens[s] = depth.min(MAX_CODE_LEN) as u8;
    }
    // Clamping broke the Kraft inequality if any code was longer than the limit: lengthen
    // the longest codes still below it (the cheapest repair) until it holds again. It ends:
    // all 65 symbols at 8 bits use 65/256 of the code space.
    let kraft = |lens: &[u8; SYMBOLS]| -> u32 {
        used.iter()
            .map(|&s| 1u32 << (MAX_CODE_LEN - u32::from(lens[s])))
            .sum()
    };
    while kraft(&lens) > 1 << MAX_CODE_LEN {
        let Some(&s) = used
            .iter()
            .filter(|&&s| u32::from(lens[s]) < MAX_CODE_LEN)
            .max_by_key(|&&s| (lens[s], std::cmp::Reverse(freq[s])))
        else {
            break;
        };
        lens[s] += 1;
    }
    lens
}

/// Canonical codes for `lens` (MSB-first, `codes[s]` has `lens[s]` bits). `None` when the
/// lengths are not a prefix code.
fn canonical_codes(lens: &[u8; SYMBOLS]) -> Option<[u16; SYMBOLS]> {
    let mut codes = [0u16; SYMBOLS];
    // On the stack: every table-coded column of every record read builds its codes.
    let mut order = [0usize; SYMBOLS];
    let mut used = 0;
    for s in (0..SYMBOLS).filter(|&s| lens[s] > 0) {
        order[used] = s;
        used += 1;
    }
    let order = &mut order[..used];
    order.sort_unstable_by_key(|&s| (lens[s], s));
    let (mut code, mut prev_len) = (0u32, 0u8);
    for &s in order.iter() {
        code <<= lens[s] - prev_len;
        prev_len = lens[s];
        if code >> prev_len != 0 {
            return None;
        }
        codes[s] = code as u16;
        code += 1;
    }
    Some(codes)
}

/// Appends bits MSB-first.
struct BitWriter<'o> {
    out: &'o mut Vec<u8>,
    acc: u64,
    /// Bits held in `acc` (< 8 between calls).
    held: u32,
    total: u64,
}

impl BitWriter<'_> {
    /// Appends the low `n` bits of `v` (`n <= 56`).
    fn put(&mut self, v: u64, n: u32) {
        debug_assert!(n <= 56);
        if n == 0 {
            return;
        }
        self.acc = (self.acc << n) | (v & ((1u64 << n) - 1));
        self.held += n;
        self.total += u64::from(n);
        while self.held >= 8 {
            self.held -= 8;
            self.out.push((self.acc >> self.held) as u8);
        }
    }

    /// Appends the low `n` bits of `v` (`n <= 64`).
    fn put_long(&mut self, v: u64, n: u32) {
        if n > 32 {
            self.put(v >> 32, n - 32);
            self.put(v, 32);
        } else {
            self.put(v, n);
        }
    }

    fn finish(self) {
        if self.held > 0 {
            self.out.push((self.acc << (8 - self.held)) as u8);
        }
    }
}

/// Appends the table section of a column of `values` to `out` (see the module doc).
pub fn encode_column(values: &[u64], out: &mut Vec<u8>) {
    let lens = code_lengths(values);
    // Holds by construction: the lengths satisfy Kraft's inequality.
    let codes = canonical_codes(&lens).unwrap_or([0; SYMBOLS]);
    let first = lens.iter().position(|&l| l > 0).unwrap_or(0);
    let last = lens.iter().rposition(|&l| l > 0).unwrap_or(0);
    out.push(first as u8);
    out.push((last + 1 - first) as u8);
    for pair in lens[first..=last].chunks(2) {
        out.push(pair[0] << 4 | pair.get(1).copied().unwrap_or(0));
    }
    let mut stream = Vec::with_capacity(values.len() * 2);
    let mut w = BitWriter {
        out: &mut stream,
        acc: 0,
        held: 0,
        total: 0,
    };
    for &v in values {
        let n = bit_length(v);
        w.put(u64::from(codes[n]), u32::from(lens[n]));
        if n >= 2 {
            w.put_long(v, n as u32 - 1);
        }
    }
    let bits = w.total;
    w.finish();
    put_u64(out, bits);
    out.extend_from_slice(&stream);
}

/// A parsed table section: the lookup table and the stream.
pub struct TableColumn<'a> {
    table: Box<DecodeTable>,
    stream: &'a [u8],
    bits: u64,
}

impl<'a> TableColumn<'a> {
    /// Parses a table section (see the module doc) from `r`.
    pub fn parse(r: &mut Reader<'a>) -> Result<TableColumn<'a>, CodecError> {
        let truncated = || corrupt("truncated code table");
        let first = usize::from(r.u8().ok_or_else(truncated)?);
        let count = usize::from(r.u8().ok_or_else(truncated)?);
        if count == 0 || first + count > SYMBOLS {
            return Err(corrupt("bad code table"));
        }
        let packed = r.bytes(count.div_ceil(2)).ok_or_else(truncated)?;
        let mut lens = [0u8; SYMBOLS];
        for (i, slot) in lens.iter_mut().skip(first).take(count).enumerate() {
            let byte = packed.get(i / 2).copied().unwrap_or(0);
            *slot = if i % 2 == 0 { byte >> 4 } else { byte & 15 };
            if u32::from(*slot) > MAX_CODE_LEN {
                return Err(corrupt("bad code length"));
            }
        }
        let codes = canonical_codes(&lens).ok_or(corrupt("code table is not a prefix code"))?;
        // Unused entries (an incomplete code) decode as an impossible 8-bit code of the
        // value 0: only corrupt streams reach them, and the bit count check catches those.
        let mut table: Box<DecodeTable> = Box::new([(MAX_CODE_LEN as Entry) << 8; 1 << MAX_CODE_LEN]);
        for (s, (&len, &code)) in lens.iter().zip(&codes).enumerate() {
            if len == 0 {
                continue;
            }
            let spare = MAX_CODE_LEN - u32::from(len);
            let at = usize::from(code) << spare;
            let entry = (Entry::from(len) << 8) | s as Entry;
            if let Some(span) = table.get_mut(at..at + (1 << spare)) {
                span.fill(entry);
            }
        }
        let bits = r.u64().ok_or_else(truncated)?;
        let len = usize::try_from(bits.div_ceil(8)).map_err(|_| corrupt("bad stream length"))?;
        let stream = r.bytes(len).ok_or(corrupt("truncated bit stream"))?;
        Ok(TableColumn { table, stream, bits })
    }

    /// A reader at the start of the stream.
    pub fn reader(&self) -> TableReader<'_> {
        TableReader {
            table: &self.table,
            stream: self.stream,
            pos: 0,
        }
    }

    /// Whether a reader that stopped at bit `pos` stayed within the stream.
    pub fn check_consumed(&self, pos: u64) -> Result<(), CodecError> {
        if pos > self.bits {
            return Err(corrupt("bit stream overrun"));
        }
        Ok(())
    }
}

/// Decodes values of a table-coded column. `Copy` so that loops keep it in registers.
#[derive(Clone, Copy)]
pub struct TableReader<'t> {
    table: &'t DecodeTable,
    stream: &'t [u8],
    /// Bits consumed.
    pos: u64,
}

/// The 8 bytes at `byte` big-endian, zeros past the end of `stream`.
#[cold]
#[inline(never)]
fn word_tail(stream: &[u8], byte: usize) -> u64 {
    (0..8).fold(0u64, |acc, i| {
        let b = stream.get(byte.saturating_add(i)).copied().unwrap_or(0);
        (acc << 8) | u64::from(b)
    })
}

impl TableReader<'_> {
    /// Bits consumed so far.
    pub fn consumed(&self) -> u64 {
        self.pos
    }

    /// The next 64 stream bits MSB-aligned (at least 57 of them unread bits; zeros past
    /// the end).
    #[inline(always)]
    fn word(&self) -> u64 {
        let byte = usize::try_from(self.pos >> 3).unwrap_or(usize::MAX);
        let w = match byte.checked_add(8).and_then(|end| self.stream.get(byte..end)) {
            Some(&[a, b, c, d, e, f, g, h]) => u64::from_be_bytes([a, b, c, d, e, f, g, h]),
            _ => word_tail(self.stream, byte),
        };
        w << (self.pos & 7)
    }

    /// Decodes the next value.
    #[inline(always)]
    pub fn next_value(&mut self) -> u64 {
        let word = self.word();
        let entry = self.table[(word >> (64 - MAX_CODE_LEN)) as usize];
        let (n, len) = (u32::from(entry & 0x7f), u32::from(entry >> 8));
        if n > FAST_MAX_BITLEN {
            return self.next_long(n, len);
        }
        // n <= 50: the leading one is 1 << (n - 1) (nothing for n = 0), then the n - 1 raw
        // bits after the code (none for n <= 1: `>> 63` of a value shifted right is 0).
        let lead = (1u64 << n) >> 1;
        let raw = ((word << len) >> 1) >> (64 - n).min(63);
        self.pos += u64::from(len + n.saturating_sub(1));
        lead | raw
    }

    /// [`TableReader::next_value`] for bit lengths above [`FAST_MAX_BITLEN`] (rare: raw float
    /// bits, huge counters), reading the raw bits in two parts.
    #[cold]
    #[inline(never)]
    fn next_long(&mut self, n: u32, len: u32) -> u64 {
        self.pos += u64::from(len);
        let rest = n.saturating_sub(1).min(63);
        let hi_bits = rest - 32;
        let hi = self.word() >> (64 - hi_bits);
        self.pos += u64::from(hi_bits);
        let lo = self.word() >> 32;
        self.pos += 32;
        (1u64 << rest) | (hi << 32) | lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(values: &[u64]) -> usize {
        let mut out = Vec::new();
        encode_column(values, &mut out);
        let mut r = Reader::new(&out);
        let col = TableColumn::parse(&mut r).unwrap();
        assert_eq!(r.remaining(), 0, "the section is self-delimiting");
        let mut reader = col.reader();
        let got: Vec<u64> = values.iter().map(|_| reader.next_value()).collect();
        assert_eq!(got, values);
        assert_eq!(reader.consumed(), col.bits, "every bit is consumed");
        out.len()
    }

    #[test]
    fn values_of_every_bit_length_round_trip() {
        let cases: Vec<Vec<u64>> = vec![
            vec![0],
            vec![0; 100],
            vec![1; 7],
            vec![u64::MAX],
            vec![
                u64::MAX,
                0,
                1,
                u64::MAX - 1,
                1 << 63,
                (1 << 50) - 1,
                1 << 50,
                1 << 49,
            ],
            (0..64).map(|k| 1u64 << k).collect(),
            (0..64).map(|k| (1u64 << k) | 1).collect(),
            (0..2000)
                .map(|i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (i % 64))
                .collect(),
        ];
        for values in cases {
            round_trip(&values);
        }
    }

    #[test]
    fn skewed_lengths_are_limited_to_eight_bits() {
        // Fibonacci-like frequencies make Huffman codes far longer than 8 bits.
        let mut values = Vec::new();
        let (mut a, mut b) = (1usize, 1usize);
        for n in 0..30u32 {
            values.extend(std::iter::repeat_n(if n == 0 { 0 } else { 1u64 << (n - 1) }, a));
            (a, b) = (b, a + b);
        }
        let lens = code_lengths(&values);
        assert!(lens.iter().all(|&l| u32::from(l) <= MAX_CODE_LEN));
        assert!(canonical_codes(&lens).is_some());
        round_trip(&values);
    }

    #[test]
    fn a_random_walk_costs_about_its_entropy() {
        // Zigzag deltas uniform in -100..=100: log2(201) = 7.65 bits of entropy per value.
        let values: Vec<u64> = (0..3600u64)
            .map(|i| {
                let d = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 201;
                super::super::varint::zigzag(d as i64 - 100)
            })
            .collect();
        let bytes = round_trip(&values);
        let bits_per_value = bytes as f64 * 8.0 / values.len() as f64;
        assert!(bits_per_value < 7.65 * 1.05, "{bits_per_value} bits per value");
    }

    #[test]
    fn bad_tables_are_refused() {
        let cases: [(&[u8], &str); 5] = [
            (&[], "truncated code table"),
            (&[0, 0], "bad code table"),
            (&[60, 6, 0x11, 0x11, 0x11], "bad code table"),
            (&[0, 2, 0x9f], "bad code length"),
            // Three codes of one bit.
            (&[0, 3, 0x11, 0x10], "code table is not a prefix code"),
        ];
        for (bytes, why) in cases {
            let err = TableColumn::parse(&mut Reader::new(bytes)).err();
            assert_eq!(err, Some(CodecError::Corrupt(why)), "{bytes:?}");
        }
        // A stream length beyond the record.
        let err = TableColumn::parse(&mut Reader::new(&[0, 1, 0x10, 80, 0])).err();
        assert_eq!(err, Some(CodecError::Corrupt("truncated bit stream")));
    }

    #[test]
    fn reading_past_the_stream_never_panics_and_is_detected() {
        let mut out = Vec::new();
        encode_column(&[5, 1 << 60, 3], &mut out);
        let col = TableColumn::parse(&mut Reader::new(&out)).unwrap();
        let mut reader = col.reader();
        for _ in 0..1000 {
            reader.next_value();
        }
        assert!(col.check_consumed(reader.consumed()).is_err());
    }
}
