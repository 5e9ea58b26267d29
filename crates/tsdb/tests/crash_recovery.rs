//! kill -9 recovery: a writer child process (`tsdb-crash-writer`) appends batches and
//! prints each batch once `wait_durable` acknowledged it; the test kills it with SIGKILL at
//! a random moment, reopens the database and checks that every acknowledged sample is
//! present. The writer seals into blocks every few batches, so kills also land inside seals,
//! WAL checkpoints and compactions. `TSDB_CRASH_CYCLES` sets the number of cycles (default 5; the benchmark
//! scenario runs 200+).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::{ManualClock, Matcher, Timestamp};
use tsdb::{Db, Options};

const SERIES: u64 = 50;

/// A small xorshift generator seeded from the clock: kill moments differ per run, and the
/// seed is printed so a failure can be replayed.
fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn every_acknowledged_batch_survives_sigkill() {
    let cycles: u64 = std::env::var("TSDB_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mut seed = std::env::var("TSDB_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            use model::Clock as _;
            (model::SystemClock.now().millis() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
        });
    eprintln!("TSDB_CRASH_SEED={seed}");
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<u64> = Vec::new();
    let mut next = 0u64;
    let mut total_recovery = Duration::ZERO;
    for cycle in 0..cycles {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tsdb-crash-writer"))
            .arg(dir.path())
            .arg(next.to_string())
            .arg(SERIES.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let kill_after = Duration::from_millis(50 + rng(&mut seed) % 400);
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.parse::<u64>().ok())
                .collect::<Vec<u64>>()
        });
        std::thread::sleep(kill_after); // the random kill moment is the point of this test
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let got = reader.join().unwrap();
        acked.extend(&got);
        if let Some(last) = got.last() {
            next = last + 1;
        }

        let t = Instant::now();
        let db = Db::open(
            dir.path(),
            Options {
                maintenance_interval: None,
                ooo_window_ms: i64::MAX / 4,
                retention: tsdb::Retention {
                    raw_ms: i64::MAX / 4,
                    minute_ms: i64::MAX / 4,
                    hour_ms: i64::MAX / 4,
                    max_disk_bytes: None,
                },
                block_duration_ms: 20_000,
                max_compacted_block_ms: 80_000,
                ..Options::default()
            },
            Arc::new(ManualClock::new(Timestamp(0))),
        )
        .unwrap();
        total_recovery += t.elapsed();
        let mut series_seen = 0;
        for s in db
            .select(&[Matcher::equal("__name__", "crash")], i64::MIN, i64::MAX)
            .unwrap()
        {
            let s = s.unwrap();
            series_seen += 1;
            let present: std::collections::HashMap<i64, f64> = s
                .timestamps
                .iter()
                .copied()
                .zip(s.values.iter().copied())
                .collect();
            for b in &acked {
                assert_eq!(
                    present.get(&((b * 1000) as i64)),
                    Some(&(*b as f64)),
                    "cycle {cycle}: acknowledged batch {b} of series {} lost",
                    s.key
                );
            }
        }
        if !acked.is_empty() {
            assert_eq!(series_seen, SERIES, "cycle {cycle}: every series survives");
        }
        db.close().unwrap();
    }
    eprintln!(
        "{cycles} cycles, {} acknowledged batches, mean recovery {:?}",
        acked.len(),
        total_recovery / cycles.max(1) as u32
    );
    assert!(
        !acked.is_empty(),
        "the writer acknowledged nothing: the test proved nothing"
    );
}
