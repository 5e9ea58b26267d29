//! Recovery edge cases: a torn or corrupt WAL tail is truncated and earlier records kept; a
//! bad record before the last segment is an error, not a guess.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use model::{Label, ManualClock, Matcher, Point, SeriesKey, Timestamp};
use tsdb::{Db, DbError, FsyncPolicy, Options};

const NOW: i64 = 1_700_000_000_000;

fn opts() -> Options {
    Options {
        fsync: FsyncPolicy::EveryBatch,
        maintenance_interval: None,
        ..Options::default()
    }
}

fn open(dir: &Path) -> Result<Arc<Db>, DbError> {
    Db::open(dir, opts(), Arc::new(ManualClock::new(Timestamp(NOW))))
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 8)
        .collect();
    v.sort();
    v
}

/// Writes `batches` durable one-sample batches at NOW + i and closes.
fn write(dir: &Path, batches: i64) {
    let db = open(dir).unwrap();
    let id = db
        .resolve(&SeriesKey::new("m", vec![Label::new("a", "b")]).unwrap())
        .unwrap();
    for i in 0..batches {
        let r = db
            .append(&[Point {
                series: id,
                ts: NOW + i,
                value: i as f64,
            }])
            .unwrap();
        db.wait_durable(r.wal_seq).unwrap();
    }
    db.close().unwrap();
}

fn count(db: &Db) -> usize {
    db.select(&[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX)
        .unwrap()
        .map(|s| s.unwrap().timestamps.len())
        .sum()
}

/// Each sample record is 9 header bytes + 1 id + up to 10 ts + 8 value bytes.
#[test]
fn torn_tail_is_truncated_and_earlier_records_kept() {
    // (damage to the last segment, samples expected to survive of 10)
    type Damage = fn(&mut Vec<u8>);
    let cases: Vec<(&str, Damage, usize)> = vec![
        ("cut mid-record", |b| b.truncate(b.len() - 3), 9),
        ("cut mid-header", |b| b.truncate(b.len() - 20), 9),
        ("flip last byte", |b| *b.last_mut().unwrap() ^= 0xff, 9),
        (
            "garbage appended",
            |b| b.extend_from_slice(&[0xde, 0xad, 0xbe]),
            10,
        ),
        ("zeros appended", |b| b.extend_from_slice(&[0u8; 64]), 10),
    ];
    for (name, damage, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 10);
        let seg = segments(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        damage(&mut bytes);
        std::fs::write(&seg, &bytes).unwrap();
        let db = open(dir.path()).unwrap();
        assert_eq!(count(&db), want, "{name}");
        assert!(db.stats().wal_truncated_bytes > 0, "{name}");
        // the truncated WAL replays cleanly again, and new writes land after it
        db.close().unwrap();
        drop(db);
        let db = open(dir.path()).unwrap();
        assert_eq!(count(&db), want, "{name}: second open");
        assert_eq!(
            db.stats().wal_truncated_bytes,
            0,
            "{name}: nothing left to truncate"
        );
    }
}

#[test]
fn a_segment_created_just_before_a_crash_is_removed_so_later_opens_replay_cleanly() {
    // (bytes of the new segment the crash left)
    let cases: [&[u8]; 3] = [b"", b"RW", b"RWAL\x01"];
    for left in cases {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 5);
        std::fs::write(dir.path().join("wal").join(format!("{:020}.seg", 1_000)), left).unwrap();
        // the first open removes it; the second and third find a clean WAL before new segments
        for round in 0..3 {
            let db = open(dir.path()).unwrap();
            assert_eq!(count(&db), 5, "{left:?} open {round}");
            db.close().unwrap();
        }
    }
}

#[test]
fn corruption_before_the_last_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 5);
    write(dir.path(), 5); // a second open starts a second segment
    let first = segments(dir.path()).remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&first, &bytes).unwrap();
    assert!(matches!(open(dir.path()), Err(DbError::WalCorrupt { .. })));
}

#[test]
fn series_ids_survive_restart_and_new_series_continue_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let k = |n: &str| SeriesKey::from_name(n).unwrap();
    let db = open(dir.path()).unwrap();
    let a = db.resolve(&k("a")).unwrap();
    let b = db.resolve(&k("b")).unwrap();
    db.close().unwrap();
    drop(db);
    let db = open(dir.path()).unwrap();
    assert_eq!(db.lookup(&k("a")), Some(a));
    assert_eq!(db.lookup(&k("b")), Some(b));
    let c = db.resolve(&k("c")).unwrap();
    assert!(c.0 > b.0);
    assert_eq!(db.series_count(), 3);
    assert_eq!(db.series_count_for_name("c"), 1);
}

#[test]
fn a_directory_is_opened_by_one_db_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).unwrap();
    assert!(matches!(open(dir.path()), Err(DbError::Locked(_))));
    db.close().unwrap();
    drop(db);
    open(dir.path()).unwrap();
}

#[test]
fn a_full_wal_backlog_applies_backpressure_instead_of_growing() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        // the committer never wakes by itself: only backpressure kicks it
        fsync: FsyncPolicy::Interval(std::time::Duration::from_secs(3600)),
        max_wal_backlog_bytes: 2048,
        wal_flush_bytes: u64::MAX,
        ..opts()
    };
    let db = Db::open(dir.path(), o, Arc::new(ManualClock::new(Timestamp(NOW)))).unwrap();
    let id = db.resolve(&SeriesKey::from_name("m").unwrap()).unwrap();
    for b in 0..200 {
        let batch: Vec<Point> = (0..50)
            .map(|i| Point {
                series: id,
                ts: NOW + b * 50 + i,
                value: 1.0,
            })
            .collect();
        db.append(&batch).unwrap();
        assert!(
            db.stats().wal_pending_bytes <= 2048 + 50 * 28 + 32,
            "pending stays bounded"
        );
    }
    assert!(
        db.stats().wal_bytes_written > 0,
        "backpressure made the committer write"
    );
    assert_eq!(count(&db), 200 * 50);
}
