//! Blocks seen from the engine: a corrupt block is quarantined and the rest stays readable;
//! snapshots reopen with every sample; retention drops old blocks; rollups are exact.

use std::path::Path;
use std::sync::Arc;

use model::{Label, ManualClock, Matcher, Point, SeriesId, SeriesKey, Timestamp};
use tsdb::rollup::Resolution;
use tsdb::{Db, FsyncPolicy, Options, Retention};

const HOUR: i64 = 3_600_000;
const NOW: i64 = 1_700_000_000_000 / HOUR * HOUR;

fn opts() -> Options {
    Options {
        fsync: FsyncPolicy::EveryBatch,
        maintenance_interval: None,
        ..Options::default()
    }
}

fn open_with(dir: &Path, opts: Options, clock: Arc<ManualClock>) -> Arc<Db> {
    Db::open(dir, opts, clock).unwrap()
}

fn key(i: usize) -> SeriesKey {
    SeriesKey::new("m", vec![Label::new("i", i.to_string())]).unwrap()
}

/// `series` series, one sample a minute for `hours` hours ending at NOW, value = minute.
fn fill(db: &Db, series: usize, hours: i64) -> Vec<SeriesId> {
    let ids: Vec<SeriesId> = (0..series).map(|i| db.resolve(&key(i)).unwrap()).collect();
    for m in 0..hours * 60 {
        let ts = NOW - hours * HOUR + m * 60_000;
        let batch: Vec<Point> = ids
            .iter()
            .map(|id| Point {
                series: *id,
                ts,
                value: m as f64,
            })
            .collect();
        db.append(&batch).unwrap();
    }
    ids
}

fn total_points(db: &Db) -> usize {
    db.select(&[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX)
        .unwrap()
        .map(|s| s.unwrap().values.len())
        .sum()
}

#[test]
fn corrupt_block_is_quarantined_and_other_data_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(NOW)));
    let no_compaction = || Options {
        max_compacted_block_ms: 0, // keep one block per window
        ..opts()
    };
    let db = open_with(dir.path(), no_compaction(), clock.clone());
    fill(&db, 3, 6); // 6 h: three 2-hour windows
    let report = db.compact_now().unwrap();
    assert_eq!(report.points_sealed, 3 * 6 * 60);
    assert_eq!(
        report.blocks_written, 6,
        "per window one raw and one hour block; minute rollups of minute data are not smaller, so they wait for retention"
    );
    db.close().unwrap();
    drop(db);

    // flip a byte in the middle of the first raw block's data
    let mut raws: Vec<_> = std::fs::read_dir(dir.path().join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".raw"))
        .collect();
    raws.sort();
    let data = raws[0].join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x5a; // the footer: caught on open
    std::fs::write(&data, &bytes).unwrap();

    let db = open_with(dir.path(), no_compaction(), clock);
    assert_eq!(db.stats().quarantined, 1);
    assert!(dir.path().join("quarantine").read_dir().unwrap().count() == 1);
    assert_eq!(
        total_points(&db),
        3 * 4 * 60,
        "the two intact windows stay readable"
    );
    // and the engine keeps taking writes
    let id = db.resolve(&key(0)).unwrap();
    db.append(&[Point {
        series: id,
        ts: NOW + 1,
        value: 1.0,
    }])
    .unwrap();
    assert!(db.readiness().is_ok());
}

#[test]
fn snapshot_while_running_reopens_with_every_sample() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(NOW)));
    let db = open_with(dir.path(), opts(), clock.clone());
    let ids = fill(&db, 4, 3);
    db.compact_now().unwrap(); // some data in blocks...
    db.append(&[Point {
        series: ids[0],
        ts: NOW + 5,
        value: 42.0,
    }])
    .unwrap(); // ...some only in the WAL
    let snap = dir.path().join("snap");
    db.snapshot(&snap).unwrap();
    db.append(&[Point {
        series: ids[1],
        ts: NOW + 6,
        value: 43.0,
    }])
    .unwrap(); // after: not in it
    let copy = open_with(&snap, opts(), clock);
    assert_eq!(total_points(&copy), 4 * 3 * 60 + 1);
    assert_eq!(copy.lookup(&key(3)), Some(ids[3]));
}

#[test]
fn retention_drops_old_blocks_by_age_and_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(NOW)));
    let o = Options {
        retention: Retention {
            raw_ms: 3 * HOUR,
            ..Retention::default()
        },
        ..opts()
    };
    let db = open_with(dir.path(), o, clock.clone());
    fill(&db, 2, 6);
    let r = db.compact_now().unwrap();
    // windows [NOW-6h, NOW-4h) and [NOW-4h, NOW-2h) end before NOW-3h... only the first
    // one's samples are all older than 3 h
    assert_eq!(r.blocks_expired, 1);
    assert_eq!(total_points(&db), 2 * 4 * 60);
    // hour rollups of the expired window are still there
    let hours: usize = db
        .select_rollup(
            &[Matcher::equal("__name__", "m")],
            NOW - 6 * HOUR,
            NOW,
            Resolution::Hour,
        )
        .unwrap()
        .map(|s| s.unwrap().points.len())
        .sum();
    assert_eq!(hours, 2 * 6);
    db.close().unwrap();
    drop(db);

    let small = Options {
        retention: Retention {
            max_disk_bytes: Some(1),
            ..Retention::default()
        },
        ..opts()
    };
    let db = open_with(dir.path(), small, clock);
    let r = db.compact_now().unwrap();
    assert!(r.blocks_expired > 0);
    assert_eq!(db.stats().blocks, 0);
}

#[test]
fn rollups_are_exact_for_every_resolution() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(NOW)));
    let db = open_with(dir.path(), opts(), clock);
    fill(&db, 1, 2);
    // (resolution, sealed first, expected point count, first bucket's count)
    let cases = [
        (Resolution::Minute, false, 120, 1),
        (Resolution::Hour, false, 2, 60),
        (Resolution::Minute, true, 120, 1),
        (Resolution::Hour, true, 2, 60),
    ];
    for (res, seal, points, count) in cases {
        if seal {
            db.compact_now().unwrap();
        }
        let got: Vec<_> = db
            .select_rollup(&[Matcher::equal("i", "0")], NOW - 2 * HOUR, NOW, res)
            .unwrap()
            .map(|s| s.unwrap())
            .collect();
        assert_eq!(got.len(), 1);
        let p = &got[0].points;
        assert_eq!(p.len(), points, "{res:?} sealed={seal}");
        assert_eq!(p[0].count, count, "{res:?} sealed={seal}");
        if res == Resolution::Hour {
            assert_eq!(
                (p[0].min, p[0].max, p[0].sum, p[0].last),
                (0.0, 59.0, 1770.0, 59.0)
            );
        }
    }
}

#[test]
fn backfill_into_a_sealed_window_last_write_wins() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(NOW)));
    let db = open_with(dir.path(), opts(), clock.clone());
    let ids = fill(&db, 1, 2);
    db.compact_now().unwrap();
    let ts = NOW - 2 * HOUR + 60_000; // minute 1, value 1.0 in the block
    // (write, expected value at ts)
    let cases = [(100.0, 100.0), (200.0, 200.0)];
    for (v, want) in cases {
        db.append(&[Point {
            series: ids[0],
            ts,
            value: v,
        }])
        .unwrap();
        let s = db
            .select(&[Matcher::equal("i", "0")], ts, ts)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(s.values, vec![want], "before sealing");
        db.compact_now().unwrap();
        let s = db
            .select(&[Matcher::equal("i", "0")], ts, ts)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(s.values, vec![want], "after sealing");
    }
    assert_eq!(total_points(&db), 120);
    assert_eq!(
        db.stats().blocks,
        2,
        "the window's raw and hour blocks were rewritten, not stacked"
    );
    db.close().unwrap();
    drop(db);
    let db = open_with(dir.path(), opts(), clock);
    assert_eq!(total_points(&db), 120);
}

fn block_dirs(dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

#[test]
fn hour_rollups_are_written_at_seal_and_minute_rollups_only_when_much_smaller() {
    // (sample spacing ms, minute blocks kept at seal, hour blocks kept at seal)
    let cases = [(1_000, 1, 1), (10_000, 0, 1), (60_000, 0, 1)];
    for (spacing, minutes, hours) in cases {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(Timestamp(NOW)));
        let db = open_with(dir.path(), opts(), clock);
        let ids: Vec<SeriesId> = (0..20).map(|i| db.resolve(&key(i)).unwrap()).collect();
        let mut t = NOW - 2 * HOUR;
        let mut k = 0u64;
        while t < NOW {
            let batch: Vec<Point> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    k = k
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    Point {
                        series: *id,
                        ts: t,
                        value: (20.0 + i as f64) + ((k >> 40) % 1000) as f64 / 100.0,
                    }
                })
                .collect();
            db.append(&batch).unwrap();
            t += spacing;
        }
        db.compact_now().unwrap();
        assert_eq!(block_dirs(dir.path(), ".1m").len(), minutes, "spacing {spacing}");
        assert_eq!(block_dirs(dir.path(), ".1h").len(), hours, "spacing {spacing}");
        assert_eq!(block_dirs(dir.path(), ".raw").len(), 1, "spacing {spacing}");
    }
}

#[test]
fn rollups_written_at_seal_serve_reads_after_raw_expiry_even_after_a_crash_mid_seal() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(NOW)));
    let db = open_with(dir.path(), opts(), clock.clone());
    let ids = fill(&db, 1, 2);
    db.compact_now().unwrap();
    // keep a copy of the first seal's blocks, as a crash before their deletion would
    let saved = tempfile::tempdir().unwrap();
    for p in block_dirs(dir.path(), "") {
        let to = saved.path().join(p.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(p.join("data"), to.join("data")).unwrap();
    }
    // backfill one new sample into the sealed window, seal again
    db.append(&[Point {
        series: ids[0],
        ts: NOW - 2 * HOUR + 30_000,
        value: 1000.0,
    }])
    .unwrap();
    db.compact_now().unwrap();
    db.close().unwrap();
    drop(db);
    for e in std::fs::read_dir(saved.path()).unwrap() {
        let p = e.unwrap().path();
        let to = dir.path().join("blocks").join(p.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(p.join("data"), to.join("data")).unwrap();
    }
    let o = Options {
        retention: Retention {
            raw_ms: HOUR / 2,
            ..Retention::default()
        },
        ..opts()
    };
    let db = open_with(dir.path(), o, clock.clone());
    assert_eq!(
        block_dirs(dir.path(), ".1h").len(),
        1,
        "the superseded hour block was removed at open"
    );
    clock.advance(HOUR);
    db.compact_now().unwrap();
    assert_eq!(block_dirs(dir.path(), ".raw").len(), 0, "raw left retention");
    let got: Vec<_> = db
        .select_rollup(&[Matcher::equal("i", "0")], NOW - 2 * HOUR, NOW, Resolution::Hour)
        .unwrap()
        .map(|s| s.unwrap())
        .collect();
    let p = &got[0].points;
    // (bucket, count, sum, max)
    let want = [(0usize, 61u64, 1770.0 + 1000.0, 1000.0), (1, 60, 5370.0, 119.0)];
    for (i, count, sum, max) in want {
        assert_eq!((p[i].count, p[i].sum, p[i].max), (count, sum, max), "bucket {i}");
    }
}

#[test]
fn compaction_merges_adjacent_windows_and_a_crash_before_deleting_inputs_is_cleaned_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(NOW)));
    // (max compacted span, raw blocks after compact_now): 1 day holds all 12 windows of
    // the last 24 h; 0 disables compaction
    let o = |max| Options {
        max_compacted_block_ms: max,
        ..opts()
    };
    let db = open_with(dir.path(), o(0), clock.clone());
    let ids = fill(&db, 5, 24);
    db.compact_now().unwrap();
    let before = block_dirs(dir.path(), ".raw");
    let windows = before.len();
    assert!(windows >= 12, "{windows} windows");
    let saved = tempfile::tempdir().unwrap();
    for p in &before {
        let to = saved.path().join(p.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(p.join("data"), to.join("data")).unwrap();
    }
    let hour_before = db
        .select_rollup(
            &[Matcher::equal("i", "0")],
            NOW - 24 * HOUR,
            NOW,
            Resolution::Hour,
        )
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .points;
    db.close().unwrap();
    drop(db);

    let db = open_with(dir.path(), o(24 * HOUR), clock.clone());
    let r = db.compact_now().unwrap();
    let after = block_dirs(dir.path(), ".raw");
    assert!(after.len() <= 2, "NOW is not day-aligned: at most two day ranges");
    assert_eq!(
        windows - r.blocks_merged + r.blocks_compacted,
        after.len(),
        "{r:?}"
    );
    assert_eq!(total_points(&db), 5 * 24 * 60);
    // backfill into a compacted block: the whole block is rewritten, last write wins
    let ts = NOW - 20 * HOUR + 30_000; // between two minute samples
    db.append(&[Point {
        series: ids[0],
        ts,
        value: 1e6,
    }])
    .unwrap();
    db.compact_now().unwrap();
    assert_eq!(
        block_dirs(dir.path(), ".raw").len(),
        after.len(),
        "rewritten, not stacked"
    );
    let s = db
        .select(&[Matcher::equal("i", "0")], ts, ts)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(s.values, vec![1e6]);
    db.close().unwrap();
    drop(db);

    // a crash after the compacted block was in place but before its inputs were deleted
    for e in std::fs::read_dir(saved.path()).unwrap() {
        let p = e.unwrap().path();
        let to = dir.path().join("blocks").join(p.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(p.join("data"), to.join("data")).unwrap();
    }
    let db = open_with(dir.path(), o(24 * HOUR), clock.clone());
    assert_eq!(
        block_dirs(dir.path(), ".raw").len(),
        after.len(),
        "inputs removed at open"
    );
    assert_eq!(total_points(&db), 5 * 24 * 60 + 1);
    let hour_after = db
        .select_rollup(
            &[Matcher::equal("i", "0")],
            NOW - 24 * HOUR,
            NOW,
            Resolution::Hour,
        )
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .points;
    assert_eq!(hour_after.len(), hour_before.len());
    assert_eq!(hour_after[4].count, 61, "the backfilled sample counts once");
    assert_eq!(hour_after[4].max, 1e6);
    db.close().unwrap();
    drop(db);

    // raw leaves retention: rollups (per window, then compacted) still answer exactly
    let o2 = Options {
        retention: Retention {
            raw_ms: HOUR,
            ..Retention::default()
        },
        max_compacted_block_ms: 24 * HOUR,
        ..opts()
    };
    clock.advance(30 * 24 * HOUR);
    let db = open_with(dir.path(), o2, clock);
    db.compact_now().unwrap();
    assert_eq!(block_dirs(dir.path(), ".raw").len(), 0);
    let hours = db
        .select_rollup(
            &[Matcher::equal("i", "0")],
            NOW - 24 * HOUR,
            NOW,
            Resolution::Hour,
        )
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .points;
    assert_eq!(hours, hour_after);
    let minutes: usize = db
        .select_rollup(
            &[Matcher::equal("i", "0")],
            NOW - 24 * HOUR,
            NOW,
            Resolution::Minute,
        )
        .unwrap()
        .map(|s| s.unwrap().points.len())
        .sum();
    assert_eq!(minutes, 24 * 60, "the backfilled sample shares a minute bucket");
}

#[test]
fn rollups_stay_exact_when_hours_straddle_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(NOW)));
    // 90-minute blocks: hour buckets straddle blocks, so hour rollups wait for retention
    let o = || Options {
        block_duration_ms: 90 * 60_000,
        ..opts()
    };
    let db = open_with(dir.path(), o(), clock.clone());
    fill(&db, 2, 6);
    db.compact_now().unwrap();
    db.close().unwrap();
    drop(db);
    clock.advance(30 * 24 * HOUR); // raw (15 days) leaves retention, rollups stay
    for round in 0..2 {
        let db = open_with(dir.path(), o(), clock.clone());
        db.compact_now().unwrap();
        assert_eq!(block_dirs(dir.path(), ".raw").len(), 0);
        // (resolution, points per series, samples per point)
        for (res, points, count) in [(Resolution::Hour, 6, 60), (Resolution::Minute, 360, 1)] {
            let got: Vec<_> = db
                .select_rollup(&[Matcher::equal("__name__", "m")], NOW - 6 * HOUR, NOW, res)
                .unwrap()
                .map(|s| s.unwrap().points)
                .collect();
            assert_eq!(got.len(), 2, "{res:?} round {round}: both series");
            for p in got {
                assert_eq!(p.len(), points, "{res:?} round {round}");
                assert!(p.iter().all(|p| p.count == count), "{res:?} round {round}");
            }
        }
        db.close().unwrap();
    }
}
