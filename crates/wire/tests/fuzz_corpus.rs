//! "Never panics" without cargo-fuzz: every decoder runs over a few hundred proptest-generated
//! byte strings (pure noise, and protocol-shaped noise that gets further into the parsers),
//! and the same invariants as the fuzz targets (`fuzz/fuzz_targets/*.rs`) are checked:
//! no panic, every error has a 1-based position and a short excerpt, every output satisfies
//! the limits it was given.

use proptest::prelude::*;
use wire::{LineError, Sample, WireLimits, graphite, influx, json, remote_write, statsd};

/// Small limits, so the generated inputs hit them.
fn limits() -> WireLimits {
    WireLimits {
        max_line_bytes: 64,
        max_labels: 3,
        max_name_bytes: 16,
        max_label_value_bytes: 8,
    }
}

fn check_errors(errors: &[LineError]) {
    for e in errors {
        assert!(e.line >= 1, "{e:?}");
        assert!(e.excerpt.len() <= wire::EXCERPT_MAX_BYTES, "{e:?}");
        assert!(!e.reason.as_str().is_empty());
        assert!(!e.detail.is_empty(), "{e:?}");
    }
}

fn check_samples(samples: &[Sample], limits: &WireLimits) {
    for s in samples {
        assert!(wire::key_within_limits(&s.key, limits), "{:?}", s.key);
    }
}

fn run_all(bytes: &[u8]) {
    let limits = limits();

    let (lines, errors) = graphite::decode(bytes, &limits);
    check_errors(&errors);
    for l in &lines {
        assert!(
            !l.path.is_empty() && l.path.len() <= limits.max_name_bytes,
            "{l:?}"
        );
        assert!(l.key.starts_with(l.path));
        assert!(graphite::tags(l.tags).count() <= limits.max_labels, "{l:?}");
        if let Ok(key) = l.series_key(None, &limits) {
            assert!(wire::key_within_limits(&key, &limits), "{key:?}");
        }
    }

    for precision in [influx::Precision::Nanoseconds, influx::Precision::Hours] {
        let (samples, errors) = influx::decode(bytes, precision, &limits);
        check_errors(&errors);
        check_samples(&samples, &limits);
    }

    if let Ok(rw) = remote_write::decode(bytes, 1 << 16, &limits) {
        check_errors(&rw.errors);
        check_samples(&rw.samples, &limits);
    }
    if let Ok(rw) = remote_write::decode_uncompressed(bytes, &limits) {
        check_errors(&rw.errors);
        check_samples(&rw.samples, &limits);
    }

    if let Ok((samples, errors)) = json::decode(bytes, &limits) {
        check_errors(&errors);
        check_samples(&samples, &limits);
    }

    let (_metrics, errors) = statsd::parse_packet(bytes, &limits);
    check_errors(&errors);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn noise(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        run_all(&bytes);
    }

    #[test]
    fn text_shaped_noise(text in "[a-z0-9.;=~,!^ \\t\\r\\n\\\\\"#:|@+eEiu_-]{0,200}") {
        run_all(text.as_bytes());
    }

    #[test]
    fn json_shaped_noise(text in r#"\{"series":\[(\{"name":"[a-z.]{0,20}","(labels|samples|x)":[\[\]\{\}0-9,":a-zNIf.+-]{0,40}\}|[0-9a-z"\[\]\{\},:]{0,10})(,\{"name":"a","samples":\[\[[0-9.e-]{0,20},[0-9"NaIf+-]{0,6}\]\]\})?\]\}"#) {
        run_all(text.as_bytes());
    }

    #[test]
    fn remote_write_mutations(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let samples: Vec<Sample> = ["a", "b.c", "d"]
            .iter()
            .enumerate()
            .map(|(i, name)| Sample {
                key: model::SeriesKey::new(*name, vec![model::Label::new("k", "v")]).unwrap(),
                timestamp_ms: Some(i64::try_from(i).unwrap()),
                value: 1.5,
            })
            .collect();
        let mut raw = prost::Message::encode_to_vec(&remote_write::write_request(&samples));
        for (at, byte) in &flips {
            let i = at.index(raw.len());
            raw[i] = *byte;
        }
        raw.truncate(cut.index(raw.len() + 1));
        run_all(&raw);
        let compressed = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
        run_all(&compressed);
    }
}
