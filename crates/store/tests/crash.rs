//! kill -9 durability of the SQLite event store: a child process (this test binary, re-run
//! on the `writer_child` test with `STORE_CRASH_CHILD` set) inserts batches and prints each
//! batch's number once `insert_batch` returned; the parent kills it with SIGKILL at a random
//! moment (inside inserts, commits and background checkpoints), reopens the file and checks
//! that every acknowledged event is stored and findable by full text. This is the contract
//! the server's answers rely on (WAL, `synchronous = NORMAL`, answer after commit). It runs
//! on one shard file and on three (a batch is then one transaction per shard, committed in
//! parallel: killed between them, a batch is partly stored, never acknowledged).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use model::Timestamp;
use model::event::{Event, EventId, Severity};
use store::{EventQuery, EventStore, SqliteConfig, SqliteStore};

const CHILD_ENV: &str = "STORE_CRASH_CHILD";
const BATCH: u64 = 200;

fn event(n: u64) -> Event {
    let time = 1_795_000_000_000 + (n as i64 * 7_919) % 100_000;
    Event {
        id: EventId::parse(&format!("ev-{n:08}"), 1024).unwrap(),
        time: Timestamp(time),
        received_at: Timestamp(time),
        source: "crash".into(),
        kind: "deploy.finished".into(),
        subject: None,
        actor: None,
        host: Some(format!("web{:02}", n % 60)),
        service: (!n.is_multiple_of(3)).then(|| "shop".to_owned()),
        labels: [("batch".to_owned(), format!("b{}", n / BATCH))].into(),
        severity: Severity::Info,
        summary: format!("deployed marker{n} to the fleet"),
        payload: None,
    }
}

/// The writer: batches from `STORE_CRASH_CHILD`'s first number on, forever.
#[test]
fn writer_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.split('|');
    let (path, first, shards) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let mut config = SqliteConfig::new(path);
    config.shards = shards.parse().unwrap();
    config.background_checkpoint = Some(Duration::from_millis(20));
    let store = SqliteStore::open(config).unwrap();
    let mut batch_no: u64 = first.parse().unwrap();
    loop {
        let events: Vec<Event> = (batch_no * BATCH..(batch_no + 1) * BATCH).map(event).collect();
        store.insert_batch(&events).unwrap();
        println!("ACK {batch_no}");
        batch_no += 1;
    }
}

#[test]
fn every_acknowledged_event_survives_sigkill_one_shard() {
    survives_sigkill(1);
}

#[test]
fn every_acknowledged_event_survives_sigkill_three_shards() {
    survives_sigkill(3);
}

fn survives_sigkill(shards: usize) {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let mut seed: u64 = (u64::from(std::process::id()) * 0x9e37_79b9) | 1;
    let mut next_batch = 0u64;
    let mut acked = 0u64;
    for cycle in 0..4 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "writer_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{}|{next_batch}|{shards}", path.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = Duration::from_millis(300 + seed % 500);
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.strip_prefix("ACK ").and_then(|n| n.parse::<u64>().ok()))
                .max()
        });
        std::thread::sleep(kill_after);
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let last = reader.join().unwrap();
        if let Some(last) = last {
            acked = (last + 1) * BATCH;
            next_batch = last + 1;
        }
        // everything acknowledged is there; at most the batch in flight beyond it
        let store = SqliteStore::open(SqliteConfig::new(&path)).unwrap();
        assert_eq!(store.shards(), shards, "the recorded layout is kept");
        let count = store.count().unwrap();
        assert!(
            count >= acked && count <= acked + BATCH,
            "cycle {cycle}: {count} stored, {acked} acknowledged"
        );
        // and each acknowledged event is there, not just as many (with shards, the batch in
        // flight may be partly stored): ids are zero-padded, so `< ev-<acked>` is exactly them
        let below: i64 = (0..shards)
            .map(|k| {
                rusqlite::Connection::open(store::shard_path(&path, k))
                    .unwrap()
                    .query_row(
                        "SELECT count(*) FROM events WHERE id < ?1",
                        [format!("ev-{acked:08}")],
                        |r| r.get::<_, i64>(0),
                    )
                    .unwrap()
            })
            .sum();
        assert_eq!(
            below as u64, acked,
            "cycle {cycle}: an acknowledged event is missing"
        );
        if acked > 0 {
            let n = acked - 1;
            let page = store
                .query(&EventQuery {
                    q: Some(format!("marker{n}")),
                    host: Some(format!("web{:02}", n % 60)),
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(
                page.events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
                vec![format!("ev-{n:08}")],
                "cycle {cycle}: the last acknowledged event is not searchable"
            );
        }
        // the next child resumes after whatever was committed (a committed but
        // unacknowledged batch is resent and reported as duplicates, which is fine)
        eprintln!(
            "shards {shards}, cycle {cycle}: killed after {kill_after:?}, {acked} acknowledged, {count} stored"
        );
        next_batch = next_batch.max(count / BATCH);
        store.close().unwrap();
    }
    assert!(acked > 0, "the writer never acknowledged a batch");
}
