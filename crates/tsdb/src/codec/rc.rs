//! A binary adaptive range coder (LZMA-style carry handling) and the two symbol models the
//! sealed codec needs: unsigned integers and XOR-ed float bit patterns.
//!
//! Design constraints:
//! - No header and a trimmed tail: the encoder drops LZMA's always-zero first byte and picks
//!   the final code value with the most trailing zero bytes, then trims up to [`MAX_TRIM`] of
//!   them; the decoder reads zeros past the end. A stream therefore costs its information content plus about one byte.
//! - Probabilities start at 1/2 and adapt with a count-based rate (1/(n+2), Krichevsky–Trofimov
//!   while n is small, settling at [`RATE_LIMIT`]), so a 360-point series pays little to learn.
//! - The decoder never panics: it reads zeros past the end and reports how far it overran, so
//!   the caller can reject corrupt input.

/// Probability precision used for coding (the stored probability has 16 bits).
const PROB_BITS: u32 = 12;
/// The range is renormalised whenever it falls below this.
const TOP: u32 = 1 << 24;
/// Most trailing zero bytes [`Encoder::finish`] drops (the decoder reads zeros past the end).
pub const MAX_TRIM: usize = 4;
/// Most equiprobable bits coded with one range division (the range keeps >= 8 bits).
const DIRECT_CHUNK: u32 = 16;
/// Slowest adaptation: the update divides by at most this.
const RATE_LIMIT: u16 = 64;

/// Reciprocals `65536 / (n + 2)` for the count-based adaptation rate.
const RECIP: [u32; RATE_LIMIT as usize - 1] = {
    let mut t = [0u32; RATE_LIMIT as usize - 1];
    let mut i = 0;
    while i < t.len() {
        t[i] = 65536 / (i as u32 + 2);
        i += 1;
    }
    t
};

/// An adaptive estimate of the probability that the next bit is 0.
#[derive(Debug, Clone, Copy)]
pub struct Prob {
    /// P(bit = 0) in 1/65536.
    p: u16,
    /// Number of updates seen, saturating at `RATE_LIMIT - 2`.
    n: u16,
}

impl Default for Prob {
    fn default() -> Prob {
        Prob { p: 32768, n: 0 }
    }
}

impl Prob {
    #[inline]
    fn coding(self) -> u32 {
        (u32::from(self.p) >> (16 - PROB_BITS)).clamp(1, (1 << PROB_BITS) - 1)
    }

    #[inline]
    fn update(&mut self, bit: bool) {
        let recip = RECIP[usize::from(self.n).min(RECIP.len() - 1)];
        let p = i64::from(self.p);
        let target: i64 = if bit { 0 } else { 65535 };
        let np = p + (((target - p) * i64::from(recip)) >> 16);
        self.p = np.clamp(1, 65535) as u16;
        if usize::from(self.n) < RECIP.len() - 1 {
            self.n += 1;
        }
    }
}

/// Range encoder appending to a byte vector.
pub struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    low: u64,
    range: u32,
    cache: u8,
    cache_size: u64,
    first: bool,
}

impl<'a> Encoder<'a> {
    /// Starts a stream at the end of `out`.
    pub fn new(out: &'a mut Vec<u8>) -> Encoder<'a> {
        let start = out.len();
        Encoder {
            out,
            start,
            low: 0,
            range: u32::MAX,
            cache: 0,
            cache_size: 1,
            first: true,
        }
    }

    fn shift_low(&mut self) {
        if (self.low as u32) < 0xFF00_0000 || (self.low >> 32) != 0 {
            let carry = (self.low >> 32) as u8;
            let mut temp = self.cache;
            loop {
                if self.first {
                    // The first byte of an LZMA stream is always zero: not stored.
                    self.first = false;
                } else {
                    self.out.push(temp.wrapping_add(carry));
                }
                temp = 0xFF;
                self.cache_size -= 1;
                if self.cache_size == 0 {
                    break;
                }
            }
            self.cache = (self.low >> 24) as u8;
        }
        self.cache_size += 1;
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    #[inline]
    fn normalize(&mut self) {
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    /// Encodes one bit with an adaptive probability.
    #[inline]
    pub fn bit(&mut self, p: &mut Prob, bit: bool) {
        let bound = (self.range >> PROB_BITS) * p.coding();
        if bit {
            self.low += u64::from(bound);
            self.range -= bound;
        } else {
            self.range = bound;
        }
        p.update(bit);
        self.normalize();
    }

    /// Encodes the low `n` bits of `v` at probability 1/2 each, up to [`DIRECT_CHUNK`] bits
    /// per range division.
    pub fn direct(&mut self, v: u64, n: u32) {
        let mut left = n;
        while left > 0 {
            let k = left.min(DIRECT_CHUNK);
            left -= k;
            let sym = (v >> left) & ((1u64 << k) - 1);
            let r = self.range >> k;
            self.low += sym * u64::from(r);
            self.range = r;
            self.normalize();
        }
    }

    /// Ends the stream with as few bytes as possible (trailing zero bytes are implied).
    pub fn finish(mut self) {
        let high = self.low + u64::from(self.range);
        for shift in [32u32, 24, 16, 8, 0] {
            let mask = (1u64 << shift) - 1;
            let v = (self.low + mask) & !mask;
            if v < high {
                self.low = v;
                break;
            }
        }
        for _ in 0..5 {
            self.shift_low();
        }
        // Only the flushed tail may go: the decoder then overruns by at most `MAX_TRIM`
        // bytes, so a larger overrun proves corruption. (Zero bytes inside the stream stay.)
        let mut trimmed = 0;
        while trimmed < MAX_TRIM && self.out.len() > self.start && self.out.last() == Some(&0) {
            self.out.pop();
            trimmed += 1;
        }
    }
}

/// Range decoder over a byte slice; reads zeros past its end.
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    range: u32,
    code: u32,
}

impl<'a> Decoder<'a> {
    /// Starts decoding `buf`.
    pub fn new(buf: &'a [u8]) -> Decoder<'a> {
        let mut d = Decoder {
            buf,
            pos: 0,
            range: u32::MAX,
            code: 0,
        };
        for _ in 0..4 {
            d.code = (d.code << 8) | u32::from(d.next_byte());
        }
        d
    }

    #[inline]
    fn next_byte(&mut self) -> u8 {
        let b = self.buf.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// How many bytes past the end of the input have been consumed. A well-formed stream
    /// overruns by at most [`MAX_TRIM`] bytes (the trimmed tail).
    pub fn overrun(&self) -> usize {
        self.pos.saturating_sub(self.buf.len())
    }

    #[inline]
    fn normalize(&mut self) {
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | u32::from(self.next_byte());
        }
    }

    /// Decodes one bit with an adaptive probability.
    #[inline]
    pub fn bit(&mut self, p: &mut Prob) -> bool {
        let bound = (self.range >> PROB_BITS) * p.coding();
        let bit = if self.code < bound {
            self.range = bound;
            false
        } else {
            self.code = self.code.wrapping_sub(bound);
            self.range -= bound;
            true
        };
        p.update(bit);
        self.normalize();
        bit
    }

    /// Decodes `n` bits written by [`Encoder::direct`].
    pub fn direct(&mut self, n: u32) -> u64 {
        let mut v = 0u64;
        let mut left = n;
        while left > 0 {
            let k = left.min(DIRECT_CHUNK);
            left -= k;
            let r = self.range >> k;
            // Corrupt input can put the code past the range: clamp instead of trusting it.
            let q = (self.code / r.max(1)).min((1 << k) - 1);
            self.code = self.code.wrapping_sub(q * r);
            self.range = r;
            v = (v << k) | u64::from(q);
            self.normalize();
        }
        v
    }
}

/// How many high bits below the leading one of an integer are coded with context.
const CONTEXT_BITS: u32 = 2;

/// Adaptive model for unsigned 64-bit integers: the bit length `n` through a binary tree of
/// `len_bits` levels of adaptive probabilities (the column header says how many levels its
/// largest value needs, so columns of small numbers skip the always-zero top levels), then
/// the next [`CONTEXT_BITS`] bits with a context per length, then the remaining low bits
/// directly. Near-optimal for smooth unimodal distributions (zigzag deltas of random walks,
/// counter increments) at any scale.
pub struct UintModel {
    len_bits: u32,
    len_tree: [Prob; 128],
    top: [[Prob; 1 << CONTEXT_BITS]; 65],
}

impl Default for UintModel {
    /// A model for any u64 (7 length levels).
    fn default() -> UintModel {
        UintModel::with_len_bits(7)
    }
}

/// Length-tree levels needed for values up to `max` (0 when all are zero).
pub fn len_bits_for(max: u64) -> u32 {
    let n = 64 - max.leading_zeros();
    32 - n.leading_zeros()
}

impl UintModel {
    /// A model whose values all have a bit length below `2^len_bits` (`len_bits <= 7`).
    pub fn with_len_bits(len_bits: u32) -> UintModel {
        UintModel {
            len_bits: len_bits.min(7),
            len_tree: [Prob::default(); 128],
            top: [[Prob::default(); 1 << CONTEXT_BITS]; 65],
        }
    }

    /// Encodes `v` (whose bit length must fit the model's `len_bits`).
    #[inline]
    pub fn encode(&mut self, enc: &mut Encoder<'_>, v: u64) {
        let n = 64 - v.leading_zeros();
        let mut node = 1usize;
        for i in (0..self.len_bits).rev() {
            let bit = (n >> i) & 1 == 1;
            enc.bit(&mut self.len_tree[node], bit);
            node = (node << 1) | usize::from(bit);
        }
        if n >= 2 {
            let rest = n - 1;
            let k = rest.min(CONTEXT_BITS);
            let probs = &mut self.top[n as usize];
            let mut node = 1usize;
            for i in 0..k {
                let bit = (v >> (rest - 1 - i)) & 1 == 1;
                enc.bit(&mut probs[node], bit);
                node = (node << 1) | usize::from(bit);
            }
            enc.direct(v, rest - k);
        }
    }

    /// Decodes one value.
    #[inline]
    pub fn decode(&mut self, dec: &mut Decoder<'_>) -> u64 {
        let mut node = 1usize;
        for _ in 0..self.len_bits {
            let bit = dec.bit(&mut self.len_tree[node]);
            node = (node << 1) | usize::from(bit);
        }
        let n = (node - (1 << self.len_bits)) as u32;
        match n {
            0 => 0,
            1 => 1,
            65.. => u64::MAX,
            _ => {
                let rest = n - 1;
                let k = rest.min(CONTEXT_BITS);
                let probs = &mut self.top[n as usize];
                let mut node = 1usize;
                let mut v = 1u64;
                for _ in 0..k {
                    let bit = dec.bit(&mut probs[node]);
                    node = (node << 1) | usize::from(bit);
                    v = (v << 1) | u64::from(bit);
                }
                let low_n = rest - k;
                (v << low_n) | dec.direct(low_n)
            }
        }
    }
}

/// Adaptive model for XOR-ed float bit patterns (Gorilla's idea with adaptive costs): a zero
/// flag, the leading and trailing zero counts, then the bits between the two outer ones
/// directly.
#[derive(Default)]
pub struct XorModel {
    zero: Prob,
    lead: UintModel,
    trail: UintModel,
}

impl XorModel {
    /// Encodes `x`.
    pub fn encode(&mut self, enc: &mut Encoder<'_>, x: u64) {
        enc.bit(&mut self.zero, x == 0);
        if x == 0 {
            return;
        }
        let lz = x.leading_zeros();
        self.lead.encode(enc, u64::from(lz));
        let tz = x.trailing_zeros();
        // The bit at 63 - lz is one; tz <= 63 - lz.
        self.trail.encode(enc, u64::from(tz));
        let width = 63 - lz - tz;
        if width >= 2 {
            enc.direct(x >> (tz + 1), width - 1);
        }
    }

    /// Decodes one value; corrupt counts are clamped so that it never panics.
    pub fn decode(&mut self, dec: &mut Decoder<'_>) -> u64 {
        if dec.bit(&mut self.zero) {
            return 0;
        }
        let lz = self.lead.decode(dec).min(63) as u32;
        let tz = (self.trail.decode(dec).min(u64::from(63 - lz))) as u32;
        let width = 63 - lz - tz;
        let mut x = 1u64 << tz;
        if width >= 1 {
            x |= 1u64 << (63 - lz);
        }
        if width >= 2 {
            x |= dec.direct(width - 1) << (tz + 1);
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint_and_xor_round_trip() {
        let values: Vec<u64> = vec![
            0,
            1,
            2,
            3,
            7,
            8,
            255,
            1 << 40,
            u64::MAX,
            u64::MAX - 1,
            12345,
            0,
            0,
            1 << 63,
        ];
        let mut out = Vec::new();
        let mut enc = Encoder::new(&mut out);
        let (mut m, mut x) = (UintModel::default(), XorModel::default());
        for &v in &values {
            m.encode(&mut enc, v);
            x.encode(&mut enc, v);
        }
        enc.finish();
        let mut dec = Decoder::new(&out);
        let (mut m, mut x) = (UintModel::default(), XorModel::default());
        for &v in &values {
            assert_eq!(m.decode(&mut dec), v);
            assert_eq!(x.decode(&mut dec), v);
        }
        assert!(dec.overrun() <= 4);
    }

    #[test]
    fn streams_ending_in_zero_bytes_decode_within_the_overrun_bound() {
        // Large powers of two end the stream with dozens of zero direct bits.
        let values = [1u64 << 62, 1 << 62, 1 << 63, 1 << 40];
        let mut out = Vec::new();
        let mut enc = Encoder::new(&mut out);
        let mut m = UintModel::default();
        for &v in &values {
            m.encode(&mut enc, v);
        }
        enc.finish();
        let mut dec = Decoder::new(&out);
        let mut m = UintModel::default();
        for &v in &values {
            assert_eq!(m.decode(&mut dec), v);
        }
        assert!(dec.overrun() <= MAX_TRIM, "overrun {}", dec.overrun());
    }

    #[test]
    fn a_run_of_zeros_costs_almost_nothing() {
        let mut out = Vec::new();
        let mut enc = Encoder::new(&mut out);
        let mut m = UintModel::default();
        for _ in 0..1000 {
            m.encode(&mut enc, 0);
        }
        enc.finish();
        assert!(out.len() < 40, "{} bytes", out.len());
    }
}
