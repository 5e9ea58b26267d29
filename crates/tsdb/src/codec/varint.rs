//! LEB128 varints and zigzag mapping shared by the sealed codec and the block index.
//!
//! Readers never panic: a truncated or over-long varint is an error.

/// Appends `v` as an unsigned LEB128 varint (1 to 10 bytes).
pub fn put_u64(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` zigzag-mapped as an unsigned varint.
pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    put_u64(out, zigzag(v));
}

/// Maps a signed integer to an unsigned one so that small magnitudes stay small.
#[inline]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag`].
#[inline]
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A forward-only reader over a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    /// Reads an unsigned varint; `None` if truncated or longer than 10 bytes.
    pub fn u64(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return None;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    /// Reads a zigzag-mapped signed varint.
    pub fn i64(&mut self) -> Option<i64> {
        self.u64().map(unzigzag)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// Reads a little-endian u64.
    pub fn u64_le(&mut self) -> Option<u64> {
        let bytes = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(bytes);
        Some(u64::from_le_bytes(a))
    }

    /// Reads a little-endian u32.
    pub fn u32_le(&mut self) -> Option<u32> {
        let bytes = self.bytes(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(bytes);
        Some(u32::from_le_bytes(a))
    }

    /// Takes the next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    /// How many bytes remain.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_extremes() {
        for v in [0i64, 1, -1, 63, -64, i64::MAX, i64::MIN, 1 << 40] {
            let mut out = Vec::new();
            put_i64(&mut out, v);
            assert_eq!(Reader::new(&out).i64(), Some(v));
        }
    }

    #[test]
    fn rejects_overlong_and_truncated() {
        assert_eq!(Reader::new(&[0x80; 11]).u64(), None);
        assert_eq!(Reader::new(&[0x80]).u64(), None);
        assert_eq!(
            Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]).u64(),
            None
        );
    }
}
