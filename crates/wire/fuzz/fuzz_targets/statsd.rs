//! Fuzz target for `wire::statsd`: any bytes parse without panicking, every metric satisfies
//! the limits it was parsed with, and every error names a line of the packet.
//!
//! Run from `crates/wire`: `RUSTC_BOOTSTRAP=1 cargo fuzz run statsd -- -max_total_time=60`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::WireLimits;
use wire::statsd::{StatsdValue, parse_packet, tags};

fuzz_target!(|data: &[u8]| {
    let limits = WireLimits {
        max_line_bytes: 512,
        max_labels: 4,
        max_name_bytes: 32,
        max_label_value_bytes: 32,
    };
    let (metrics, errors) = parse_packet(data, &limits);
    let lines = data.split(|b| *b == b'\n').count();
    for m in &metrics {
        assert!(!m.name.is_empty() && m.name.len() <= limits.max_name_bytes);
        assert!(m.sample_rate > 0.0 && m.sample_rate <= 1.0);
        assert!(tags(m.tags).count() <= limits.max_labels);
        for (k, v) in tags(m.tags) {
            assert!(!k.is_empty() && k.len() <= limits.max_name_bytes);
            assert!(v.len() <= limits.max_label_value_bytes);
        }
        match m.value {
            StatsdValue::Set(s) => assert!(!s.is_empty()),
            StatsdValue::Timer(v) => assert!(v.is_finite() && v >= 0.0),
            StatsdValue::Counter(v)
            | StatsdValue::Gauge(v)
            | StatsdValue::GaugeDelta(v)
            | StatsdValue::Histogram(v)
            | StatsdValue::Distribution(v) => assert!(v.is_finite()),
        }
    }
    for e in &errors {
        assert!(e.line >= 1 && e.line <= lines);
        assert!(e.excerpt.len() <= wire::EXCERPT_MAX_BYTES);
    }
});
