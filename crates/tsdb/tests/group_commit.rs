//! Group commit: a caller of `wait_durable` is covered by the next fsync, which starts as soon
//! as someone waits (and right after the fsync in flight), never at the end of the fsync
//! interval. The interval only bounds how long data nobody waits for stays un-fsynced.
//!
//! `group_commit_throughput_with_four_waiting_writers` prints fsyncs/s and points/s; run it with
//! `cargo test -p tsdb --release --test group_commit -- --nocapture`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::{Label, ManualClock, Matcher, Point, SeriesId, SeriesKey, Timestamp};
use tsdb::{Db, FsyncPolicy, Options};

const NOW: i64 = 1_700_000_000_000;
/// An interval no test may wait out: every bound below is far under it.
const LONG: Duration = Duration::from_secs(10);

fn open(dir: &Path, fsync: FsyncPolicy) -> Arc<Db> {
    let opts = Options {
        fsync,
        maintenance_interval: None,
        ..Options::default()
    };
    Db::open(dir, opts, Arc::new(ManualClock::new(Timestamp(NOW)))).unwrap()
}

fn series(db: &Db, writer: usize) -> SeriesId {
    db.resolve(&SeriesKey::new("g", vec![Label::new("w", writer.to_string())]).unwrap())
        .unwrap()
}

/// `points` samples of `id` for round `round` (distinct timestamps per round).
fn batch(id: SeriesId, round: usize, points: usize) -> Vec<Point> {
    (0..points)
        .map(|i| Point {
            series: id,
            ts: NOW + (round * points + i) as i64,
            value: i as f64,
        })
        .collect()
}

fn count(db: &Db) -> usize {
    db.select(&[Matcher::equal("__name__", "g")], i64::MIN, i64::MAX)
        .unwrap()
        .map(|s| s.unwrap().timestamps.len())
        .sum()
}

/// Runs `writers` threads, each doing `rounds` of append + `wait_durable`; checks every
/// acknowledged seq is covered by `durable_seq`. Returns the wall time.
fn waiting_writers(db: &Arc<Db>, writers: usize, rounds: usize, points: usize) -> Duration {
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..writers {
            let db = Arc::clone(db);
            s.spawn(move || {
                let id = series(&db, w);
                for round in 0..rounds {
                    let r = db.append(&batch(id, round, points)).unwrap();
                    assert_eq!(r.accepted, points);
                    db.wait_durable(r.wal_seq).unwrap();
                    let durable = db.stats().durable_seq;
                    assert!(
                        durable >= r.wal_seq,
                        "seq {} acknowledged at durable seq {durable}",
                        r.wal_seq
                    );
                }
            });
        }
    });
    t.elapsed()
}

#[test]
fn waiting_writers_never_wait_out_the_interval() {
    // (policy, writers, rounds, points per batch)
    let cases = [
        (FsyncPolicy::Interval(LONG), 1, 50, 10),
        (FsyncPolicy::Interval(LONG), 4, 50, 100),
        (FsyncPolicy::Interval(LONG), 8, 50, 1),
        (FsyncPolicy::EveryBatch, 4, 50, 100),
    ];
    for (policy, writers, rounds, points) in cases {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), policy);
        let took = waiting_writers(&db, writers, rounds, points);
        assert!(
            took < Duration::from_secs(2),
            "{policy:?}, {writers} writers x {rounds} rounds took {took:?}"
        );
        let stats = db.stats();
        assert_eq!(stats.appended_points, (writers * rounds * points) as u64);
        assert!(stats.wal_fsyncs >= 1);
        assert!(
            stats.wal_fsyncs <= (writers * rounds) as u64,
            "{policy:?}: {} fsyncs for {} waits",
            stats.wal_fsyncs,
            writers * rounds
        );
    }
}

#[test]
fn one_waiter_costs_one_fsync_and_an_already_durable_seq_costs_none() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), FsyncPolicy::Interval(LONG));
    let id = series(&db, 0);
    let mut last = 0;
    for round in 0..20 {
        let before = db.stats().wal_fsyncs;
        let r = db.append(&batch(id, round, 5)).unwrap();
        db.wait_durable(r.wal_seq).unwrap();
        assert_eq!(db.stats().wal_fsyncs, before + 1, "round {round}");
        last = r.wal_seq;
    }
    let before = db.stats().wal_fsyncs;
    db.wait_durable(last).unwrap();
    db.wait_durable(0).unwrap();
    assert_eq!(db.stats().wal_fsyncs, before);
}

#[test]
fn acknowledged_batches_survive_a_crash() {
    // (policy, writers, rounds)
    let cases = [
        (FsyncPolicy::Interval(LONG), 4, 20),
        (FsyncPolicy::Interval(LONG), 1, 1),
        (FsyncPolicy::EveryBatch, 2, 10),
    ];
    for (policy, writers, rounds) in cases {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), policy);
        waiting_writers(&db, writers, rounds, 10);
        let acked = writers * rounds * 10;
        // appended after the last acknowledgement and never waited for: may be lost
        let id = series(&db, 0);
        db.append(&batch(id, rounds, 10)).unwrap();
        db.crash_for_test();
        drop(db);

        let db = open(dir.path(), policy);
        let got = count(&db);
        assert!(
            (acked..=acked + 10).contains(&got),
            "{policy:?}: {got} samples after the crash, {acked} acknowledged"
        );
    }
}

#[test]
fn backpressure_drains_without_waiters_under_a_long_interval() {
    const WRITERS: usize = 4;
    const ROUNDS: usize = 200;
    const POINTS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        fsync: FsyncPolicy::Interval(LONG),
        maintenance_interval: None,
        wal_flush_bytes: 1 << 10,
        max_wal_backlog_bytes: 4 << 10,
        ..Options::default()
    };
    let db = Db::open(
        dir.path(),
        opts.clone(),
        Arc::new(ManualClock::new(Timestamp(NOW))),
    )
    .unwrap();
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let db = Arc::clone(&db);
            s.spawn(move || {
                let id = series(&db, w);
                for round in 0..ROUNDS {
                    db.append(&batch(id, round, POINTS)).unwrap();
                    assert!(db.stats().wal_pending_bytes <= (4 << 10) + 2 * POINTS as u64 * 28);
                }
            });
        }
    });
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    assert!(db.stats().wal_fsyncs >= 1);
    db.close().unwrap();
    drop(db);
    let db = Db::open(dir.path(), opts, Arc::new(ManualClock::new(Timestamp(NOW)))).unwrap();
    assert_eq!(count(&db), WRITERS * ROUNDS * POINTS);
}

/// The figure behind the fix: 4 writers that wait for durability after every batch, under the
/// default `Interval(100 ms)`. Before group commit reacted to waiters, each wait lasted up to
/// one interval, so this did about 10 fsyncs/s.
#[test]
fn group_commit_throughput_with_four_waiting_writers() {
    const WRITERS: usize = 4;
    const POINTS: usize = 1000;
    const FOR: Duration = Duration::from_millis(1000);
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path(), Options::default().fsync);
    let t = Instant::now();
    let rounds: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let db = Arc::clone(&db);
                s.spawn(move || {
                    let id = series(&db, w);
                    let mut round = 0;
                    while t.elapsed() < FOR {
                        let r = db.append(&batch(id, round, POINTS)).unwrap();
                        db.wait_durable(r.wal_seq).unwrap();
                        round += 1;
                    }
                    round
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let secs = t.elapsed().as_secs_f64();
    let stats = db.stats();
    eprintln!(
        "group commit, {WRITERS} waiting writers, {POINTS} points per batch, {:?}: \
         {:.0} fsyncs/s, {:.0} points/s, {:.2} batches per fsync",
        Options::default().fsync,
        stats.wal_fsyncs as f64 / secs,
        (rounds * POINTS) as f64 / secs,
        rounds as f64 / stats.wal_fsyncs.max(1) as f64
    );
    assert_eq!(stats.appended_points, (rounds * POINTS) as u64);
    assert!(stats.wal_fsyncs >= 1);
}
