//! Blocks written by older format versions stay readable: `fixtures/v1-block/data` is a
//! format-1 block written by the v1 code path (before priors existed) and
//! `fixtures/v2-block/data` a format-2 one (priors, no segmented records), both from
//! [`fixture_series`]; reading them must give exactly those samples, and compacting them
//! with a current block must too.

use std::path::{Path, PathBuf};

use model::SeriesId;
use tsdb::block::{BlockOptions, BlockReader, BlockWriter};
use tsdb::rollup::Resolution;

/// splitmix64 with gen.py-like distributions.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The series in the v1 fixture: (id, timestamps, values) for ids 1..=40 — gauges with two
/// decimals, integer counters, constants, an irregular series with NaN and infinities, and
/// an XOR-coded one.
fn fixture_series() -> Vec<(u64, Vec<i64>, Vec<f64>)> {
    let mut g = Gen(7);
    let start = 1_763_524_800_000i64;
    (1..=40u64)
        .map(|id| {
            let n = 360usize;
            let mut ts: Vec<i64> = (0..n as i64).map(|i| start + i * 10_000).collect();
            let mut v = (g.uniform() * 10_000.0).round() / 100.0;
            let vals: Vec<f64> = (0..n)
                .map(|i| match id % 5 {
                    0 => {
                        v = (v + (g.uniform() - 0.5) * 3.0).clamp(0.0, 100.0);
                        format!("{v:.2}").parse().unwrap()
                    }
                    1 => {
                        v = v.round() + (g.next() % 5000) as f64;
                        v
                    }
                    2 => 3400.0,
                    3 => match i % 97 {
                        0 => f64::NAN,
                        50 => f64::INFINITY,
                        _ => (g.next() % 1000) as f64 / 8.0,
                    },
                    _ => (i as f64 * 0.37 + id as f64).sin(),
                })
                .collect();
            if id % 5 == 3 {
                for (i, t) in ts.iter_mut().enumerate() {
                    *t += (g.next() % 900) as i64 + i as i64;
                }
            }
            (id, ts, vals)
        })
        .collect()
}

fn fixture(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/v{version}-block"))
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn check_reads(r: &BlockReader, want: &[(u64, Vec<i64>, Vec<f64>)]) {
    assert_eq!(
        r.series_ids().map(|s| s.0).collect::<Vec<_>>(),
        want.iter().map(|w| w.0).collect::<Vec<_>>()
    );
    for (id, ts, vals) in want {
        let (mut t, mut v) = (Vec::new(), Vec::new());
        r.read(SeriesId(*id), i64::MIN, i64::MAX, &mut t, &mut v).unwrap();
        assert_eq!(&t, ts, "series {id}");
        assert_eq!(bits(&v), bits(vals), "series {id}");
        // A window at the end, as `rate[5m]` reads it.
        let (a, b) = (ts[ts.len() - 30], ts[ts.len() - 1]);
        let (mut t, mut v) = (Vec::new(), Vec::new());
        r.read(SeriesId(*id), a, b, &mut t, &mut v).unwrap();
        assert_eq!(&t[..], &ts[ts.len() - 30..], "series {id}");
        assert_eq!(bits(&v), bits(&vals[vals.len() - 30..]), "series {id}");
    }
}

#[test]
fn older_formats_still_read() {
    for version in [1, 2] {
        let r = BlockReader::open(&fixture(version)).unwrap();
        assert_eq!(r.meta().format_version, version);
        assert_eq!(r.priors().is_empty(), version == 1);
        check_reads(&r, &fixture_series());
    }
}

/// Compacting an older block with a current one (disjoint and shared series) gives a
/// current block holding exactly the merged samples.
#[test]
fn older_formats_compact_into_current_ones() {
    for version in [1, 2] {
        compact_with_current(version);
    }
}

fn compact_with_current(version: u32) {
    let dir = tempfile::tempdir().unwrap();
    let old = BlockReader::open(&fixture(version)).unwrap();
    let mut want = fixture_series();
    // A newer block: series 1..=10 again, shifted values (overwriting), and 41..=60 new.
    let newer = dir.path().join("newer");
    let mut w = BlockWriter::create(
        &newer,
        BlockOptions {
            id: 12,
            resolution: Resolution::Raw,
            seq: 12,
        },
    )
    .unwrap();
    let mut extra = Vec::new();
    for (id, ts, vals) in fixture_series().into_iter().take(10) {
        let vals: Vec<f64> = vals.iter().map(|v| v + 1.0).collect();
        w.add_series(SeriesId(id), &ts, &vals).unwrap();
        want[id as usize - 1].2 = vals;
    }
    for (id, ts, vals) in fixture_series().into_iter().take(20) {
        extra.push((id + 40, ts, vals));
    }
    for (id, ts, vals) in &extra {
        w.add_series(SeriesId(*id), ts, vals).unwrap();
    }
    w.finish().unwrap();
    want.extend(extra);
    let newer = BlockReader::open(&newer).unwrap();
    assert_eq!(newer.meta().format_version, tsdb::block::FORMAT_VERSION);
    let out = dir.path().join("out");
    tsdb::compact::compact(&[&old, &newer], &out, 13).unwrap();
    let r = BlockReader::open(&out).unwrap();
    assert_eq!(r.meta().format_version, tsdb::block::FORMAT_VERSION);
    check_reads(&r, &want);
}
