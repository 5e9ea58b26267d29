//! The compact in-memory encoding of sealed head chunks (until they are cut into blocks).
//!
//! Timestamps: first as a zigzag varint, then delta-of-delta zigzag varints. Values: XOR
//! with the previous value's bits; a zero XOR is one byte `64`, otherwise one byte holding
//! the XOR's trailing-zero count followed by the shifted XOR as a varint. Every f64 bit
//! pattern round-trips exactly. In-memory only: not a persisted format.

use crate::wal::{get_uvarint, put_uvarint, unzigzag, zigzag};

/// Appends the encoding of `points` (ascending timestamps) to `out`.
pub(crate) fn encode(points: &[(i64, f64)], out: &mut Vec<u8>) {
    let (mut prev_t, mut prev_d, mut prev_bits) = (0i64, 0i64, 0u64);
    for (i, (t, v)) in points.iter().enumerate() {
        if i == 0 {
            put_uvarint(out, zigzag(*t));
        } else {
            let d = t.wrapping_sub(prev_t);
            put_uvarint(out, zigzag(d.wrapping_sub(prev_d)));
            prev_d = d;
        }
        prev_t = *t;
        let bits = v.to_bits();
        let x = bits ^ prev_bits;
        if x == 0 {
            out.push(64);
        } else {
            let tz = x.trailing_zeros();
            out.push(tz as u8);
            put_uvarint(out, x >> tz);
        }
        prev_bits = bits;
    }
}

/// Decodes `count` points written by [`encode`], appending to `out`.
pub(crate) fn decode(data: &[u8], count: usize, out: &mut Vec<(i64, f64)>) -> Result<(), ()> {
    let (mut prev_t, mut prev_d, mut prev_bits) = (0i64, 0i64, 0u64);
    let mut pos = 0;
    out.reserve(count);
    for i in 0..count {
        let z = unzigzag(get_uvarint(data, &mut pos).ok_or(())?);
        let t = if i == 0 {
            z
        } else {
            let d = prev_d.wrapping_add(z);
            prev_d = d;
            prev_t.wrapping_add(d)
        };
        prev_t = t;
        let tz = *data.get(pos).ok_or(())?;
        pos += 1;
        let bits = if tz == 64 {
            prev_bits
        } else if tz < 64 {
            prev_bits ^ (get_uvarint(data, &mut pos).ok_or(())? << tz)
        } else {
            return Err(());
        };
        prev_bits = bits;
        out.push((t, f64::from_bits(bits)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn round_trips_any_bits(mut ts in proptest::collection::vec(proptest::num::i64::ANY, 0..50), bits in proptest::collection::vec(proptest::num::u64::ANY, 50)) {
            ts.sort_unstable();
            ts.dedup();
            let pts: Vec<(i64, f64)> = ts.iter().zip(&bits).map(|(t, b)| (*t, f64::from_bits(*b))).collect();
            let mut buf = Vec::new();
            encode(&pts, &mut buf);
            let mut got = Vec::new();
            decode(&buf, pts.len(), &mut got).unwrap();
            let a: Vec<(i64, u64)> = pts.iter().map(|(t, v)| (*t, v.to_bits())).collect();
            let b: Vec<(i64, u64)> = got.iter().map(|(t, v)| (*t, v.to_bits())).collect();
            proptest::prop_assert_eq!(a, b);
        }
    }
}
