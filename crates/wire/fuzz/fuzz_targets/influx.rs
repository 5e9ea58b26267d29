//! Fuzzes `wire::influx::decode` on arbitrary bytes in every precision. Invariants: no panic;
//! every error has a 1-based line and a short excerpt; every sample satisfies the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::WireLimits;
use wire::influx::{self, Precision};

const LIMITS: WireLimits = WireLimits {
    max_line_bytes: 256,
    max_labels: 4,
    max_name_bytes: 64,
    max_label_value_bytes: 16,
};

fuzz_target!(|data: &[u8]| {
    for precision in [Precision::Nanoseconds, Precision::Seconds, Precision::Hours] {
        let (samples, errors) = influx::decode(data, precision, &LIMITS);
        for e in &errors {
            assert!(e.line >= 1 && e.excerpt.len() <= wire::EXCERPT_MAX_BYTES);
        }
        for s in &samples {
            assert!(wire::key_within_limits(&s.key, &LIMITS));
        }
    }
});
