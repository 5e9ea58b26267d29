//! kill -9 durability of the SQLite event store: a child process (this test binary, re-run
//! on the `writer_child` test with `STORE_CRASH_CHILD` set) inserts batches and prints each
//! batch's number once `insert_batch` returned; the parent kills it with SIGKILL at a random
//! moment (inside inserts, commits and background checkpoints), reopens the file and checks
//! that every acknowledged event is stored and findable by full text. This is the contract
//! the server's answers rely on (WAL, `synchronous = NORMAL`, answer after commit).

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
    let (path, first) = spec.split_once('|').unwrap();
    let mut config = SqliteConfig::new(path);
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
fn every_acknowledged_event_survives_sigkill() {
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
            .env(CHILD_ENV, format!("{}|{next_batch}", path.display()))
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
        let count = store.count().unwrap();
        assert!(
            count >= acked && count <= acked + BATCH,
            "cycle {cycle}: {count} stored, {acked} acknowledged"
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
        eprintln!("cycle {cycle}: killed after {kill_after:?}, {acked} acknowledged, {count} stored");
        next_batch = next_batch.max(count / BATCH);
        store.close().unwrap();
    }
    assert!(acked > 0, "the writer never acknowledged a batch");
}
