//! Appends, seals, snapshots and reads running at the same time lose nothing: a writer
//! thread appends while another thread seals and reads, and every appended sample is
//! readable at the end and after a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use model::{Label, ManualClock, Matcher, Point, SeriesKey, Timestamp};
use tsdb::{Db, FsyncPolicy, Options};

const NOW: i64 = 1_700_000_000_000;
const SERIES: usize = 20;
const BATCHES: i64 = 400;

fn opts() -> Options {
    Options {
        fsync: FsyncPolicy::Interval(std::time::Duration::from_millis(1)),
        maintenance_interval: None,
        block_duration_ms: 50_000, // many windows
        head_chunk_points: 16,
        ..Options::default()
    }
}

fn count(db: &Db) -> usize {
    db.select(&[Matcher::equal("__name__", "c")], i64::MIN, i64::MAX)
        .unwrap()
        .map(|s| s.unwrap().values.len())
        .sum()
}

#[test]
fn seals_and_reads_during_appends_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(NOW)));
    let db = Db::open(dir.path(), opts(), clock.clone()).unwrap();
    let ids: Vec<_> = (0..SERIES)
        .map(|i| {
            db.resolve(&SeriesKey::new("c", vec![Label::new("i", i.to_string())]).unwrap())
                .unwrap()
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let db = Arc::clone(&db);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            for b in 0..BATCHES {
                // every 7th batch goes back in time (out of order, into sealed windows)
                let ts = if b % 7 == 6 {
                    NOW - 1_000 * b
                } else {
                    NOW + 1_000 * b
                };
                let batch: Vec<Point> = ids
                    .iter()
                    .map(|id| Point {
                        series: *id,
                        ts,
                        value: b as f64,
                    })
                    .collect();
                db.append(&batch).unwrap();
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut seals = 0;
    let mut snapshots = 0;
    let mut last = 0;
    while !done.load(Ordering::SeqCst) {
        db.compact_now().unwrap();
        seals += 1;
        let n = count(&db);
        assert!(
            n >= last,
            "a sample once visible stays visible through seals ({n} < {last})"
        );
        last = n;
        if seals % 5 == 0 {
            db.snapshot(&dir.path().join(format!("snap{snapshots}"))).unwrap();
            snapshots += 1;
        }
    }
    writer.join().unwrap();
    let distinct_ts = {
        let mut ts: Vec<i64> = (0..BATCHES)
            .map(|b| {
                if b % 7 == 6 {
                    NOW - 1_000 * b
                } else {
                    NOW + 1_000 * b
                }
            })
            .collect();
        ts.sort_unstable();
        ts.dedup();
        ts.len()
    };
    assert_eq!(count(&db), distinct_ts * SERIES, "after {seals} concurrent seals");
    db.compact_now().unwrap();
    assert_eq!(count(&db), distinct_ts * SERIES);
    db.close().unwrap();
    drop(db);
    let db = Db::open(dir.path(), opts(), clock).unwrap();
    assert_eq!(count(&db), distinct_ts * SERIES, "after restart");
    for i in 0..snapshots {
        let snap = Db::open(
            &dir.path().join(format!("snap{i}")),
            opts(),
            Arc::new(ManualClock::new(Timestamp(NOW))),
        )
        .unwrap();
        let n = count(&snap);
        assert!(
            n > 0 && n <= distinct_ts * SERIES && n.is_multiple_of(SERIES),
            "snapshot {i} holds whole batches: {n}"
        );
    }
}
