//! Fuzzes `wire::graphite`: `decode` on arbitrary bytes, then `series_key` with and without
//! templates on every line it accepted. Invariants: no panic; every error has a 1-based line
//! and a short excerpt; every accepted line and key satisfies the limits.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wire::WireLimits;
use wire::graphite::{self, Templates};

const LIMITS: WireLimits = WireLimits {
    max_line_bytes: 256,
    max_labels: 4,
    max_name_bytes: 64,
    max_label_value_bytes: 16,
};

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    T.get_or_init(|| {
        let specs = [
            "host.measurement.field",
            "*.app env.service.measurement* dc=x",
            "a.*.c .measurement.tag.field*",
        ];
        Templates::parse(&specs.map(String::from)).unwrap_or_default()
    })
}

fuzz_target!(|data: &[u8]| {
    let (lines, errors) = graphite::decode(data, &LIMITS);
    for e in &errors {
        assert!(e.line >= 1 && e.excerpt.len() <= wire::EXCERPT_MAX_BYTES);
    }
    for l in &lines {
        assert!(!l.path.is_empty() && l.path.len() <= LIMITS.max_name_bytes);
        assert!(l.key.starts_with(l.path));
        assert!(graphite::tags(l.tags).count() <= LIMITS.max_labels);
        for t in [None, Some(templates())] {
            if let Ok(key) = l.series_key(t, &LIMITS) {
                assert!(wire::key_within_limits(&key, &LIMITS));
            }
        }
    }
    // a single line through parse_line must agree with decode on the same bytes
    if memchr_free(data) {
        let one = graphite::parse_line(data, &LIMITS);
        assert_eq!(one.is_ok(), lines.len() == 1);
    }
    // templates parse from arbitrary text without panicking
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(t) = Templates::parse(&[text.to_owned()])
    {
        let _ = t.apply("a.b.c.d");
    }
});

fn memchr_free(data: &[u8]) -> bool {
    !data.contains(&b'\n') && data.iter().any(|b| !matches!(b, b' ' | b'\t' | b'\r'))
}
