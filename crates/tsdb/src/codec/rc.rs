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
//! - Decoding is latency-bound (every bit depends on the previous one), so the decoder's hot
//!   path is branch-free on data (bits, renormalisation) and loads the next probability
//!   before the bit that picks it is known. It must stay bit-exact with the plain byte-wise
//!   LZMA-style decoder, including on corrupt input: a test pins the two together.

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

/// Reciprocals `65536 / (min(n, RATE_LIMIT - 2) + 2)` for the count-based adaptation rate,
/// padded to a power of two so that indexing with `n & (len - 1)` needs no bounds check.
const RECIP: [u32; RECIP_LEN] = {
    let mut t = [0u32; RECIP_LEN];
    let mut i = 0;
    while i < t.len() {
        let n = if i < N_MAX as usize { i } else { N_MAX as usize };
        t[i] = 65536 / (n as u32 + 2);
        i += 1;
    }
    t
};
/// Length of [`RECIP`] (a power of two above [`N_MAX`]).
const RECIP_LEN: usize = 64;
/// Saturation point of the update count `n` (the rate then stays at `1 / RATE_LIMIT`).
const N_MAX: u16 = RATE_LIMIT - 2;

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
    /// The probability of a 0 at coding precision, in `1..2^PROB_BITS`.
    #[inline(always)]
    fn coding(self) -> u32 {
        // p <= 65535, so the upper clamp of `1..=4095` never binds.
        (u32::from(self.p) >> (16 - PROB_BITS)).max(1)
    }

    /// Moves the probability towards the bit just seen at rate `1/(n+2)`, branch-free.
    /// Bit-exact with `p + ((target - p) * recip) >> 16` clamped to `1..=65535`: the product
    /// fits an i32 (|target - p| < 2^16, recip <= 2^15), a 0 pushes p at most to 65535 and a
    /// 1 at least to 0 (only from p = 1), hence the single `max(1)`.
    #[inline(always)]
    fn update(&mut self, bit: bool) {
        let recip = RECIP[usize::from(self.n) & (RECIP_LEN - 1)] as i32;
        let p = i32::from(self.p);
        let target = (i32::from(bit) - 1) & 65535;
        let np = p + (((target - p) * recip) >> 16);
        self.p = np.max(1) as u16;
        self.n += u16::from(self.n < N_MAX);
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

/// [`Decoder::peek4`] within four bytes of the end of `buf`.
#[cold]
#[inline(never)]
fn peek4_tail(buf: &[u8], pos: usize) -> u32 {
    (0..4).fold(0u32, |acc, i| {
        let b = buf.get(pos.saturating_add(i)).copied().unwrap_or(0);
        (acc << 8) | u32::from(b)
    })
}

/// Range decoder over a byte slice; reads zeros past its end.
///
/// It is `Copy` so that hot loops can work on a local copy (range and code then live in
/// registers for a whole column) and store it back once at the end.
#[derive(Clone, Copy)]
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
        d.code = d.peek4();
        d.pos = 4;
        d
    }

    /// The next four bytes big-endian, zeros past the end (without consuming them).
    #[inline(always)]
    fn peek4(&self) -> u32 {
        let end = self.pos.wrapping_add(4);
        match self.buf.get(end.wrapping_sub(4)..end) {
            Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
            // By value, not `&self`: a reference would force the decoder out of registers.
            _ => peek4_tail(self.buf, self.pos),
        }
    }

    /// How many bytes past the end of the input have been consumed. A well-formed stream
    /// overruns by at most [`MAX_TRIM`] bytes (the trimmed tail).
    pub fn overrun(&self) -> usize {
        self.pos.saturating_sub(self.buf.len())
    }

    /// Brings the range back to at least [`TOP`] in one branch-free step (whether a byte is
    /// due is data, and mispredicting it costs more than always shifting): the byte-wise
    /// loop `while range < TOP { range <<= 8; code = code << 8 | next }` shifts in exactly
    /// `leading_zeros(range) / 8` bytes (0 to 3, as every operation leaves range >= 2^8).
    #[inline(always)]
    fn normalize(&mut self) {
        // Three independent compares rather than `leading_zeros / 8`: shorter latency on
        // the range -> next bit dependency chain.
        let r = self.range;
        let nb = u32::from(r < 1 << 24) + u32::from(r < 1 << 16) + u32::from(r < 1 << 8);
        let bits = nb * 8;
        let next = u64::from(self.peek4());
        self.code = ((u64::from(self.code) << bits) | (next >> (32 - bits))) as u32;
        self.range = (u64::from(self.range) << bits) as u32;
        self.pos += nb as usize;
    }

    /// Decodes one bit with an adaptive probability (branch-free: the bit is data, and
    /// mispredicting it costs more than the selects).
    #[inline(always)]
    pub fn bit(&mut self, p: &mut Prob) -> bool {
        let bound = (self.range >> PROB_BITS) * p.coding();
        let bit = self.code >= bound;
        let mask = u32::from(bit).wrapping_neg();
        // bound < range, so range - bound never wraps.
        self.range = bound ^ ((bound ^ self.range.wrapping_sub(bound)) & mask);
        self.code = self.code.wrapping_sub(bound & mask);
        p.update(bit);
        self.normalize();
        bit
    }

    /// Decodes `n` bits written by [`Encoder::direct`].
    #[inline(always)]
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

    /// Decodes one value. Indexes are masked to their tables' sizes (they are in range by
    /// construction) so that the hot path has no bounds checks.
    #[inline(always)]
    pub fn decode(&mut self, dec: &mut Decoder<'_>) -> u64 {
        // Both children's probabilities are loaded before the bit that picks one is known,
        // which takes the table load off the bit-to-bit dependency chain (the bits are data:
        // the CPU cannot speculate the walk).
        let mut node = 1usize;
        let mut cur = self.len_tree[1];
        for _ in 0..self.len_bits {
            let left = self.len_tree[(node << 1) & 127];
            let right = self.len_tree[((node << 1) | 1) & 127];
            let bit = dec.bit(&mut cur);
            self.len_tree[node & 127] = cur;
            node = (node << 1) | usize::from(bit);
            cur = if bit { right } else { left };
        }
        let n = (node - (1 << self.len_bits)) as u32;
        match n {
            0 => 0,
            1 => 1,
            65.. => u64::MAX,
            _ => {
                let rest = n - 1;
                let k = rest.min(CONTEXT_BITS);
                let probs = &mut self.top[(n as usize).min(64)];
                let mut node = 1usize;
                for _ in 0..k {
                    let bit = dec.bit(&mut probs[node & 3]);
                    node = (node << 1) | usize::from(bit);
                }
                // node is 1 followed by the k context bits: the value's top k + 1 bits.
                let low_n = rest - k;
                ((node as u64) << low_n) | dec.direct(low_n)
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
    #[inline(always)]
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

    /// The decoder as first written (byte-wise renormalisation, branching bit, i64 update
    /// with a clamp): the fast one must match it bit for bit, on corrupt input too.
    struct RefDecoder<'a> {
        buf: &'a [u8],
        pos: usize,
        range: u32,
        code: u32,
    }

    impl RefDecoder<'_> {
        fn new(buf: &[u8]) -> RefDecoder<'_> {
            let mut d = RefDecoder {
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
        fn next_byte(&mut self) -> u8 {
            let b = self.buf.get(self.pos).copied().unwrap_or(0);
            self.pos += 1;
            b
        }
        fn normalize(&mut self) {
            while self.range < TOP {
                self.range <<= 8;
                self.code = (self.code << 8) | u32::from(self.next_byte());
            }
        }
        fn bit(&mut self, p: &mut (u16, u16)) -> bool {
            let coding = (u32::from(p.0) >> (16 - PROB_BITS)).clamp(1, (1 << PROB_BITS) - 1);
            let bound = (self.range >> PROB_BITS) * coding;
            let bit = if self.code < bound {
                self.range = bound;
                false
            } else {
                self.code = self.code.wrapping_sub(bound);
                self.range -= bound;
                true
            };
            let recip = 65536 / (i64::from(p.1.min(62)) + 2);
            let target: i64 = if bit { 0 } else { 65535 };
            let old = i64::from(p.0);
            p.0 = (old + (((target - old) * recip) >> 16)).clamp(1, 65535) as u16;
            if p.1 < 62 {
                p.1 += 1;
            }
            self.normalize();
            bit
        }
        fn direct(&mut self, n: u32) -> u64 {
            let mut v = 0u64;
            let mut left = n;
            while left > 0 {
                let k = left.min(DIRECT_CHUNK);
                left -= k;
                let r = self.range >> k;
                let q = (self.code / r.max(1)).min((1 << k) - 1);
                self.code = self.code.wrapping_sub(q * r);
                self.range = r;
                v = (v << k) | u64::from(q);
                self.normalize();
            }
            v
        }
    }

    #[test]
    fn fast_decoder_matches_the_reference_on_any_bytes() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..300 {
            // Arbitrary bytes (a corrupt stream) and a real one, of varied lengths.
            let len = (rand() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
            if round % 2 == 0 {
                bytes.clear();
                let mut enc = Encoder::new(&mut bytes);
                let mut m = UintModel::default();
                for _ in 0..(rand() % 50) {
                    m.encode(&mut enc, rand() >> (rand() % 64));
                }
                enc.finish();
            }
            let (mut fast, mut slow) = (Decoder::new(&bytes), RefDecoder::new(&bytes));
            let mut probs = [Prob::default(); 8];
            let mut ref_probs = [(32768u16, 0u16); 8];
            for step in 0..400 {
                let op = rand();
                let i = (op % 8) as usize;
                if op % 5 == 0 {
                    let n = ((op >> 8) % 65) as u32;
                    assert_eq!(fast.direct(n), slow.direct(n), "round {round} step {step}");
                } else {
                    let got = fast.bit(&mut probs[i]);
                    assert_eq!(got, slow.bit(&mut ref_probs[i]), "round {round} step {step}");
                    assert_eq!((probs[i].p, probs[i].n), ref_probs[i]);
                }
                assert_eq!((fast.range, fast.code), (slow.range, slow.code));
                assert_eq!(fast.overrun(), slow.pos.saturating_sub(bytes.len()));
            }
        }
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
