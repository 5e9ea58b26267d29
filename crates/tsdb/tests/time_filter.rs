//! The time filter of the series and label look-ups (`Db::series_in_range`,
//! `Db::label_names_in_range`, `Db::label_values_in_range`): a series counts when it holds a
//! sample in the range, whether its data is in blocks or the head.

use std::path::Path;
use std::sync::Arc;

use model::{Label, ManualClock, Matcher, Point, SeriesKey, Timestamp};
use tsdb::{Db, FsyncPolicy, Options};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const NOW: i64 = 1_700_000_000_000 / HOUR * HOUR;

fn open(dir: &Path) -> Arc<Db> {
    let opts = Options {
        fsync: FsyncPolicy::EveryBatch,
        maintenance_interval: None,
        ..Options::default()
    };
    Db::open(dir, opts, Arc::new(ManualClock::new(Timestamp(NOW)))).unwrap()
}

fn key(name: &str, labels: &[(&str, &str)]) -> SeriesKey {
    SeriesKey::new(name, labels.iter().map(|(k, v)| Label::new(*k, *v)).collect()).unwrap()
}

/// One sample a minute in `[from, to)`.
fn fill(db: &Db, k: &SeriesKey, from: i64, to: i64) {
    let id = db.resolve(k).unwrap();
    let batch: Vec<Point> = (from..to)
        .step_by(MIN as usize)
        .map(|ts| Point {
            series: id,
            ts,
            value: 1.0,
        })
        .collect();
    db.append(&batch).unwrap();
}

fn names(keys: &[SeriesKey]) -> Vec<&str> {
    let mut v: Vec<&str> = keys.iter().map(|k| k.name()).collect();
    v.sort();
    v
}

#[test]
fn series_and_labels_narrow_to_series_with_samples_in_range() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    // a and b end up in blocks, c stays in the head, d never has a sample
    fill(
        &db,
        &key("a", &[("job", "x"), ("zone", "1")]),
        NOW - 5 * HOUR,
        NOW - 4 * HOUR,
    );
    fill(
        &db,
        &key("b", &[("job", "y"), ("region", "2")]),
        NOW - 3 * HOUR,
        NOW - HOUR,
    );
    db.compact_now().unwrap();
    assert!(db.stats().blocks > 0);
    fill(&db, &key("c", &[("job", "z")]), NOW + MIN, NOW + 30 * MIN);
    db.resolve(&key("d", &[("job", "w"), ("extra", "1")])).unwrap();

    let all: Vec<Matcher> = Vec::new();
    let job = [Matcher::new(model::MatchOp::Regex, "job", ".+").unwrap()];
    // (start, end, series, label names, values of job)
    type Case<'a> = (i64, i64, &'a [&'a str], &'a [&'a str], &'a [&'a str]);
    let cases: &[Case<'_>] = &[
        (
            NOW - 270 * MIN,
            NOW - 250 * MIN,
            &["a"],
            &["__name__", "job", "zone"],
            &["x"],
        ),
        (
            NOW - 2 * HOUR,
            NOW + 10 * MIN,
            &["b", "c"],
            &["__name__", "job", "region"],
            &["y", "z"],
        ),
        // the edges are inclusive: a's last sample is at NOW - 4 h - 1 min
        (
            NOW - 4 * HOUR - MIN,
            NOW - 3 * HOUR - 30 * MIN,
            &["a"],
            &["__name__", "job", "zone"],
            &["x"],
        ),
        (NOW - 4 * HOUR, NOW - 3 * HOUR - MIN, &[], &[], &[]),
        (
            NOW - 3 * HOUR,
            NOW - 3 * HOUR,
            &["b"],
            &["__name__", "job", "region"],
            &["y"],
        ),
        (NOW + 31 * MIN, NOW + HOUR, &[], &[], &[]),
        (
            i64::MIN / 2,
            i64::MAX / 2,
            &["a", "b", "c"],
            &["__name__", "job", "region", "zone"],
            &["x", "y", "z"],
        ),
    ];
    for (start, end, series, labels, values) in cases {
        let what = format!("[{}, {}] min", (start - NOW) / MIN, (end - NOW) / MIN);
        for m in [&all[..], &job[..]] {
            assert_eq!(
                names(&db.series_in_range(m, *start, *end, 100)),
                *series,
                "{what}"
            );
            assert_eq!(db.label_names_in_range(m, *start, *end, 100), *labels, "{what}");
            assert_eq!(
                db.label_values_in_range("job", m, *start, *end, 100),
                *values,
                "{what}"
            );
        }
        // the same as reading the samples
        let mut read: Vec<String> = db
            .select(&job, *start, *end)
            .unwrap()
            .map(|s| s.unwrap().key.name().to_owned())
            .collect();
        read.sort();
        assert_eq!(read, *series, "{what}");
    }
    // limits and matchers still apply
    let b = [Matcher::equal("__name__", "b")];
    assert_eq!(
        names(&db.series_in_range(&b, i64::MIN / 2, i64::MAX / 2, 100)),
        ["b"]
    );
    assert_eq!(db.series_in_range(&all, i64::MIN / 2, i64::MAX / 2, 2).len(), 2);
    assert_eq!(
        db.label_names_in_range(&all, i64::MIN / 2, i64::MAX / 2, 2),
        ["__name__", "job"]
    );
    // the unfiltered look-ups still list the series without samples
    assert_eq!(names(&db.series(&all, 100)), ["a", "b", "c", "d"]);
}

#[test]
fn a_gap_covering_the_range_leaves_the_series_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let (e, f) = (key("e", &[]), key("f", &[]));
    // e: in blocks, a gap from -5 h 30 m to -5 h; f: in the head, a gap from +10 m to +40 m
    fill(&db, &e, NOW - 6 * HOUR, NOW - 5 * HOUR - 30 * MIN);
    fill(&db, &e, NOW - 5 * HOUR, NOW - 4 * HOUR - 30 * MIN);
    db.compact_now().unwrap();
    fill(&db, &f, NOW + MIN, NOW + 10 * MIN);
    fill(&db, &f, NOW + 40 * MIN, NOW + 50 * MIN);
    let all: Vec<Matcher> = Vec::new();
    let cases: &[(i64, i64, &[&str])] = &[
        (NOW - 5 * HOUR - 20 * MIN, NOW - 5 * HOUR - 10 * MIN, &[]),
        (NOW - 5 * HOUR - 20 * MIN, NOW - 5 * HOUR, &["e"]),
        (NOW - 5 * HOUR - 31 * MIN, NOW - 5 * HOUR - MIN, &["e"]),
        (NOW + 20 * MIN, NOW + 30 * MIN, &[]),
        (NOW + 9 * MIN, NOW + 30 * MIN, &["f"]),
        (NOW - 5 * HOUR - 20 * MIN, NOW + 30 * MIN, &["e", "f"]),
    ];
    for (start, end, want) in cases {
        let what = format!("[{}, {}] min", (start - NOW) / MIN, (end - NOW) / MIN);
        assert_eq!(
            names(&db.series_in_range(&all, *start, *end, 100)),
            *want,
            "{what}"
        );
        let names_want: &[&str] = if want.is_empty() { &[] } else { &["__name__"] };
        assert_eq!(
            db.label_names_in_range(&all, *start, *end, 100),
            names_want,
            "{what}"
        );
        assert_eq!(
            db.label_values_in_range("__name__", &all, *start, *end, 100),
            *want,
            "{what}"
        );
    }
}
