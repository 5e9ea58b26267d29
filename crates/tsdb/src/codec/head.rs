//! [`HeadChunk`]: the append-friendly in-memory chunk of one series.
//!
//! Bit layout (most significant bit first, no header: `first_ts` lives in the struct):
//! - timestamp of point `i >= 1`: delta-of-delta `dod` (wrapping), zigzag `z`:
//!   `0` (z = 0) · `10`+7 bits · `110`+12 bits · `1110`+20 bits · `1111`+64 bits.
//! - value: the chunk keeps a decimal scale `e` (only grows) and the previous mantissa `pm`;
//!   a value that is exactly `m / 10^e` is stored as zigzag `z` of `m - pm`:
//!   `0` (z = 0) · `10`+7 bits · `110`+14 bits · `1110`+24 bits · `11110`+64 bits.
//!   Escape `11111` then `1`+4 bits: the scale grows to that value (`pm` is rescaled) and the
//!   value follows as a delta; or `0`+64 bits: the raw f64 bits (`pm` unchanged).
//!
//! Two-decimal gauges cost about 2 bytes per point, regular timestamps 1 bit, constants 2 bits.
//! Growth is by a quarter, not doubling, so the spare capacity per series stays small.

use super::OutOfOrder;
use super::sealed::{MAX_SCALE, to_mantissa};
use super::varint::{unzigzag, zigzag};

/// Largest scale a head chunk uses (4 bits in the escape code).
const HEAD_MAX_SCALE: u8 = if MAX_SCALE < 15 { MAX_SCALE } else { 15 };

/// An MSB-first bit buffer: whole bytes in `bytes`, fewer than 8 pending bits in `acc`.
#[derive(Debug, Clone, Default)]
struct Bits {
    bytes: Vec<u8>,
    acc: u64,
    acc_bits: u32,
}

impl Bits {
    /// Appends the low `n <= 32` bits of `v`.
    #[inline]
    fn put(&mut self, v: u64, n: u32) {
        debug_assert!(n <= 32);
        self.acc = (self.acc << n) | (v & ((1u64 << n) - 1));
        self.acc_bits += n;
        while self.acc_bits >= 8 {
            self.acc_bits -= 8;
            if self.bytes.len() == self.bytes.capacity() {
                // growth by half (not doubling: open chunks of 100k series would carry tens of
                // MiB of slack; closed chunks are shrunk anyway)
                self.bytes.reserve_exact((self.bytes.len() / 2).max(32));
            }
            self.bytes.push((self.acc >> self.acc_bits) as u8);
        }
        self.acc &= (1u64 << self.acc_bits) - 1;
    }

    #[inline]
    fn put64(&mut self, v: u64) {
        self.put(v >> 32, 32);
        self.put(v & 0xFFFF_FFFF, 32);
    }
}

/// Reads bits MSB-first; returns zeros past the end.
struct BitReader<'a> {
    bytes: &'a [u8],
    tail: u8,
    pos: usize,
    bit: u32,
}

impl BitReader<'_> {
    #[inline]
    fn get(&mut self, n: u32) -> u64 {
        let mut v = 0u64;
        for _ in 0..n {
            let byte = match self.bytes.get(self.pos) {
                Some(&b) => b,
                None if self.pos == self.bytes.len() => self.tail,
                None => 0,
            };
            v = (v << 1) | u64::from((byte >> (7 - self.bit)) & 1);
            self.bit += 1;
            if self.bit == 8 {
                self.bit = 0;
                self.pos += 1;
            }
        }
        v
    }

    #[inline]
    fn get64(&mut self) -> u64 {
        (self.get(32) << 32) | self.get(32)
    }

    /// Counts leading one bits, at most `max`, consuming them and the terminating zero.
    #[inline]
    fn ones(&mut self, max: u32) -> u32 {
        let mut k = 0;
        while k < max && self.get(1) == 1 {
            k += 1;
        }
        k
    }
}

/// The append-friendly, in-memory chunk of one series: Gorilla-style delta-of-delta
/// timestamps and decimal-aware value deltas (see the module doc for the bit layout).
///
/// Invariant: timestamps strictly increase; [`HeadChunk::push`] refuses anything else.
#[derive(Debug, Clone, Default)]
pub struct HeadChunk {
    bits: Bits,
    len: u32,
    first_ts: i64,
    last_ts: i64,
    last_delta: i64,
    prev_m: i64,
    scale: u8,
}

impl HeadChunk {
    /// An empty chunk.
    pub fn new() -> HeadChunk {
        HeadChunk::default()
    }

    /// Appends one sample; `ts` must be greater than the last timestamp.
    pub fn push(&mut self, ts: i64, v: f64) -> Result<(), OutOfOrder> {
        if self.len > 0 && ts <= self.last_ts {
            return Err(OutOfOrder {
                last: self.last_ts,
                ts,
            });
        }
        if self.len == u32::MAX {
            return Err(OutOfOrder {
                last: self.last_ts,
                ts,
            });
        }
        if self.len == 0 {
            self.first_ts = ts;
        } else {
            let delta = ts.wrapping_sub(self.last_ts);
            let z = zigzag(delta.wrapping_sub(self.last_delta));
            let b = &mut self.bits;
            match z {
                0 => b.put(0, 1),
                1..0x80 => b.put((0b10 << 7) | z, 9),
                0x80..0x1000 => b.put((0b110 << 12) | z, 15),
                0x1000..0x10_0000 => b.put((0b1110 << 20) | z, 24),
                _ => {
                    b.put(0b1111, 4);
                    b.put64(z);
                }
            }
            self.last_delta = delta;
        }
        self.last_ts = ts;
        self.push_value(v);
        self.len += 1;
        Ok(())
    }

    #[inline]
    fn put_delta(&mut self, m: i64) {
        let z = zigzag(m.wrapping_sub(self.prev_m));
        self.prev_m = m;
        let b = &mut self.bits;
        match z {
            0 => b.put(0, 1),
            1..0x80 => b.put((0b10 << 7) | z, 9),
            0x80..0x4000 => b.put((0b110 << 14) | z, 17),
            0x4000..0x100_0000 => b.put((0b1110 << 24) | z, 28),
            _ => {
                b.put(0b11110, 5);
                b.put64(z);
            }
        }
    }

    #[inline]
    fn push_value(&mut self, v: f64) {
        if let Some(m) = to_mantissa(v, self.scale) {
            self.put_delta(m);
            return;
        }
        for e in self.scale + 1..=HEAD_MAX_SCALE {
            if let Some(m) = to_mantissa(v, e) {
                let factor = 10i64.pow(u32::from(e - self.scale));
                if let Some(pm) = self.prev_m.checked_mul(factor) {
                    self.bits.put(0b111_111, 6);
                    self.bits.put(u64::from(e), 4);
                    self.scale = e;
                    self.prev_m = pm;
                    self.put_delta(m);
                    return;
                }
                break;
            }
        }
        self.bits.put(0b111_110, 6);
        self.bits.put64(v.to_bits());
    }

    /// An empty chunk with room for `bytes` bytes of encoded samples (e.g. the size of the
    /// series' previous chunk), so that appends do not reallocate on the way.
    pub fn with_byte_capacity(bytes: usize) -> HeadChunk {
        let mut c = HeadChunk::default();
        c.bits.bytes.reserve_exact(bytes);
        c
    }

    /// Bytes of encoded samples held.
    pub fn byte_len(&self) -> usize {
        self.bits.bytes.len()
    }

    /// Drops spare capacity, for a chunk that will not grow again.
    pub fn shrink_to_fit(&mut self) {
        self.bits.bytes.shrink_to_fit();
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the chunk holds no sample.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first timestamp, if any.
    pub fn first_ts(&self) -> Option<i64> {
        (self.len > 0).then_some(self.first_ts)
    }

    /// The last timestamp, if any.
    pub fn last_ts(&self) -> Option<i64> {
        (self.len > 0).then_some(self.last_ts)
    }

    /// Heap bytes held (buffer capacity), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.bits.bytes.capacity()
    }

    /// Appends every sample, in order, to `ts` and `vals`.
    pub fn decode_into(&self, ts: &mut Vec<i64>, vals: &mut Vec<f64>) {
        let n = self.len as usize;
        ts.reserve(n);
        vals.reserve(n);
        let tail = if self.bits.acc_bits > 0 {
            (self.bits.acc << (8 - self.bits.acc_bits)) as u8
        } else {
            0
        };
        let mut r = BitReader {
            bytes: &self.bits.bytes,
            tail,
            pos: 0,
            bit: 0,
        };
        let (mut t, mut delta, mut pm, mut scale) = (self.first_ts, 0i64, 0i64, 0u8);
        for i in 0..n {
            if i > 0 {
                let z = match r.ones(4) {
                    0 => 0,
                    1 => r.get(7),
                    2 => r.get(12),
                    3 => r.get(20),
                    _ => r.get64(),
                };
                delta = delta.wrapping_add(unzigzag(z));
                t = t.wrapping_add(delta);
            }
            ts.push(t);
            let v = loop {
                let z = match r.ones(5) {
                    0 => 0,
                    1 => r.get(7),
                    2 => r.get(14),
                    3 => r.get(24),
                    4 => r.get64(),
                    _ => {
                        if r.get(1) == 1 {
                            let e = (r.get(4) as u8).min(HEAD_MAX_SCALE);
                            let factor = 10i64.wrapping_pow(u32::from(e.saturating_sub(scale)));
                            pm = pm.wrapping_mul(factor);
                            scale = e;
                            continue;
                        }
                        break f64::from_bits(r.get64());
                    }
                };
                pm = pm.wrapping_add(unzigzag(z));
                break super::sealed::from_mantissa(pm, scale);
            };
            vals.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_mixed_values() {
        let vals = [
            37.42,
            37.5,
            37.5,
            1.0,
            0.001,
            -0.0,
            f64::NAN,
            1e300,
            -5.25,
            f64::INFINITY,
            12345678.9,
            0.1 + 0.2,
        ];
        let mut c = HeadChunk::new();
        let mut t = -1_000_000i64;
        for (i, &v) in vals.iter().enumerate() {
            t += 10_000 + (i as i64 % 3) * 7;
            c.push(t, v).unwrap();
        }
        let (mut ts, mut vs) = (Vec::new(), Vec::new());
        c.decode_into(&mut ts, &mut vs);
        assert_eq!(ts.len(), vals.len());
        for (a, b) in vs.iter().zip(vals.iter()) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
    }

    #[test]
    fn rejects_out_of_order() {
        let mut c = HeadChunk::new();
        c.push(10, 1.0).unwrap();
        assert_eq!(c.push(10, 2.0), Err(OutOfOrder { last: 10, ts: 10 }));
        assert_eq!(c.push(9, 2.0), Err(OutOfOrder { last: 10, ts: 9 }));
        assert_eq!(c.len(), 1);
    }
}
