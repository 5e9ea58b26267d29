//! Fuzzes `wire::remote_write`: the bytes as a snappy body, as an uncompressed protobuf, and
//! compressed by us (so the fuzzer explores protobuf structure behind valid snappy).
//! Invariants: no panic; no allocation beyond the decompressed-size limit; per-series errors
//! have a 1-based position; every sample satisfies the limits and has a timestamp.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::WireLimits;
use wire::remote_write::{self, RemoteWrite};

const LIMITS: WireLimits = WireLimits {
    max_line_bytes: 256,
    max_labels: 4,
    max_name_bytes: 64,
    max_label_value_bytes: 16,
};

fn check(rw: &RemoteWrite) {
    for e in &rw.errors {
        assert!(e.line >= 1 && e.excerpt.len() <= wire::EXCERPT_MAX_BYTES);
    }
    for s in &rw.samples {
        assert!(wire::key_within_limits(&s.key, &LIMITS));
        assert!(s.timestamp_ms.is_some());
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(rw) = remote_write::decode(data, 1 << 20, &LIMITS) {
        check(&rw);
    }
    if let Ok(rw) = remote_write::decode_uncompressed(data, &LIMITS) {
        check(&rw);
    }
    if let Ok(body) = snap::raw::Encoder::new().compress_vec(data) {
        match remote_write::decode(&body, 1 << 20, &LIMITS) {
            Ok(rw) => check(&rw),
            Err(wire::DecodeError::Snappy(e)) => panic!("our own snappy was refused: {e}"),
            Err(_) => {}
        }
    }
});
