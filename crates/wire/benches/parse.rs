//! Parse throughput of the wire codecs, per line / per sample, on realistic shapes:
//! - `graphite_parse_line`: the ingest hot path, `wire::graphite::parse_line` on lines like
//!   `host123.cpu4.usage_user 37.42 1700000000` (split with memchr, as the TCP reader does).
//!   Budget: the whole Graphite path (read, parse, series lookup, WAL, append) has ~450 ns of
//!   CPU per point (issue 3), so parsing should take a small fraction of that.
//! - `graphite_decode`: the same lines through `decode` (collects into a Vec, as UDP does).
//! - `influx_decode`: 2 fields, 2 tags per line (`cpu,host=..,cpu=.. usage_user=..,usage_system=.. ts`).
//! - `remote_write_decode`: snappy + protobuf, 500 series x 4 samples (a Prometheus-sized batch).
//! - `json_decode`: 200 series x 10 samples.
//! - `statsd_parse_packet`: 1,400-byte packets of DogStatsD lines (`name:1|c|@0.5|#env:prod`).
//!
//! Run: `CARGO_TARGET_DIR=/work/target-wire cargo bench -p wire --bench parse`
//! (add `-- graphite` to run one group). Counters are items = lines or samples, so divan
//! prints items/s next to the time per iteration.

use divan::counter::ItemsCount;
use divan::{Bencher, black_box};
use wire::{Sample, WireLimits, graphite, influx, json, remote_write, statsd};

fn main() {
    divan::main();
}

const LINES: usize = 10_000;

/// `host{h}.cpu{c}.usage_user 37.42 1700000000` lines, varied like a fleet's output.
fn graphite_buf() -> Vec<u8> {
    let mut s = String::new();
    for i in 0..LINES {
        let value = (i * 7919 % 10_000) as f64 / 100.0;
        graphite::format_line(
            &mut s,
            &format!("host{}.cpu{}.usage_user", i % 1000, i % 8),
            value,
            Some(1_700_000_000_000 + (i as i64 / 1000) * 1000),
        );
    }
    s.into_bytes()
}

#[divan::bench]
fn graphite_parse_line(bencher: Bencher) {
    let buf = graphite_buf();
    let limits = WireLimits::default();
    bencher.counter(ItemsCount::new(LINES)).bench(|| {
        let mut rest = black_box(buf.as_slice());
        let mut sum = 0.0;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            if let Ok(l) = graphite::parse_line(&rest[..i], &limits) {
                sum += l.value;
            }
            rest = &rest[i + 1..];
        }
        sum
    });
}

#[divan::bench]
fn graphite_decode(bencher: Bencher) {
    let buf = graphite_buf();
    let limits = WireLimits::default();
    bencher
        .counter(ItemsCount::new(LINES))
        .bench(|| graphite::decode(black_box(&buf), &limits).0.len());
}

#[divan::bench]
fn influx_decode(bencher: Bencher) {
    let mut body = String::new();
    let lines: usize = 2_000;
    for i in 0..lines {
        body.push_str(&format!(
            "cpu,host=host{},cpu=cpu{} usage_user={},usage_system={} {}\n",
            i % 1000,
            i % 8,
            (i * 7919 % 10_000) as f64 / 100.0,
            (i % 100) as f64 / 10.0,
            1_700_000_000_000_000_000i64 + i as i64
        ));
    }
    let limits = WireLimits::default();
    bencher.counter(ItemsCount::new(lines * 2)).bench(|| {
        influx::decode(
            black_box(body.as_bytes()),
            influx::Precision::Nanoseconds,
            &limits,
        )
        .0
        .len()
    });
}

fn samples(series: usize, per_series: usize) -> Vec<Sample> {
    let mut out = Vec::new();
    for s in 0..series {
        let key = model::SeriesKey::new(
            "node_cpu_seconds_total",
            vec![
                model::Label::new("instance", format!("host{s}:9100")),
                model::Label::new("job", "node"),
                model::Label::new("mode", "user"),
            ],
        )
        .expect("valid key");
        for p in 0..per_series {
            out.push(Sample {
                key: key.clone(),
                timestamp_ms: Some(1_700_000_000_000 + p as i64 * 15_000),
                value: (s * p) as f64 * 0.25,
            });
        }
    }
    out
}

#[divan::bench]
fn remote_write_decode(bencher: Bencher) {
    let samples = samples(500, 4);
    let body = remote_write::encode(&remote_write::write_request(&samples)).expect("encodes");
    let limits = WireLimits::default();
    bencher.counter(ItemsCount::new(samples.len())).bench(|| {
        remote_write::decode(black_box(&body), 64 << 20, &limits)
            .map(|r| r.samples.len())
            .unwrap_or(0)
    });
}

#[divan::bench]
fn json_decode(bencher: Bencher) {
    let mut body = String::from(r#"{"series":["#);
    let (series, per_series) = (200, 10);
    for s in 0..series {
        if s > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"name":"host{s}.temperature","labels":{{"room":"r{}"}},"samples":["#,
            s % 10
        ));
        for p in 0..per_series {
            if p > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                "[{},{}]",
                1_450_000_000_000i64 + p * 1000,
                20.0 + p as f64 / 10.0
            ));
        }
        body.push_str("]}");
    }
    body.push_str("]}");
    let limits = WireLimits::default();
    bencher
        .counter(ItemsCount::new(series * per_series as usize))
        .bench(|| {
            json::decode(black_box(body.as_bytes()), &limits)
                .map(|r| r.0.len())
                .unwrap_or(0)
        });
}

#[divan::bench]
fn statsd_parse_packet(bencher: Bencher) {
    // packets of up to 1,400 bytes (a typical UDP payload), many lines each
    let mut packets: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut lines = 0usize;
    for i in 0..10_000usize {
        let line = match i % 4 {
            0 => format!("app{}.requests:1|c|@0.5|#env:prod,host:h{}", i % 100, i % 50),
            1 => format!("app{}.latency:{}|ms|#env:prod", i % 100, i % 900),
            2 => format!("app{}.queue:{}|g", i % 100, i % 77),
            _ => format!("app{}.users:u{}|s", i % 100, i % 1000),
        };
        if current.len() + line.len() + 1 > 1400 {
            packets.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(&line);
        lines += 1;
    }
    packets.push(current);
    let limits = WireLimits::default();
    bencher.counter(ItemsCount::new(lines)).bench(|| {
        let mut n = 0;
        for p in &packets {
            n += statsd::parse_packet(black_box(p.as_bytes()), &limits).0.len();
        }
        n
    });
}
