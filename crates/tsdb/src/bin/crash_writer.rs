//! `tsdb-crash-writer DIR FIRST_BATCH SERIES`: the child process of the crash test.
//!
//! Opens the database in DIR (recovering it), then appends batch after batch forever:
//! batch `b` holds one sample per series at `ts = b * 1000` with value `b`. After
//! `wait_durable` covers a batch it prints the batch number on its own line. Every
//! `SEAL_EVERY` batches it seals everything into blocks (`compact_now`), so kills also land
//! in the middle of seals, checkpoints and compactions. The test kills it with SIGKILL at a random moment
//! and checks that every printed batch survived.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use model::{Label, Point, SeriesKey, SystemClock};
use tsdb::{Db, FsyncPolicy, Options, Retention};

/// Batches between seals.
const SEAL_EVERY: u64 = 40;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(first), Some(series)) = (
        args.get(1),
        args.get(2).and_then(|s| s.parse::<u64>().ok()),
        args.get(3).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        eprintln!("usage: tsdb-crash-writer DIR FIRST_BATCH SERIES");
        return ExitCode::from(2);
    };
    let opts = Options {
        fsync: FsyncPolicy::Interval(std::time::Duration::from_millis(5)),
        // batches are numbered from 0 ms: keep them all inside the window
        ooo_window_ms: i64::MAX / 4,
        // batch timestamps start at 0 ms (1970): keep retention from dropping them
        retention: Retention {
            raw_ms: i64::MAX / 4,
            minute_ms: i64::MAX / 4,
            hour_ms: i64::MAX / 4,
            max_disk_bytes: None,
        },
        block_duration_ms: 20_000,
        // compaction ranges of 4 windows: every seal also compacts, so kills land inside
        // compactions (merged block in place, inputs not yet deleted) too
        max_compacted_block_ms: 80_000,
        maintenance_interval: None,
        ..Options::default()
    };
    let db = match Db::open(std::path::Path::new(dir), opts, Arc::new(SystemClock)) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("open failed: {e}");
            return ExitCode::from(1);
        }
    };
    let mut ids = Vec::new();
    for s in 0..series {
        let key = match SeriesKey::new("crash", vec![Label::new("s", s.to_string())]) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("bad key: {e}");
                return ExitCode::from(1);
            }
        };
        match db.resolve(&key) {
            Ok(id) => ids.push(id),
            Err(e) => {
                eprintln!("resolve failed: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let stdout = std::io::stdout();
    let mut batch = Vec::with_capacity(ids.len());
    for b in first.. {
        batch.clear();
        batch.extend(ids.iter().map(|id| Point {
            series: *id,
            ts: (b * 1000) as i64,
            value: b as f64,
        }));
        let receipt = match db.append(&batch) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("append failed: {e}");
                return ExitCode::from(1);
            }
        };
        if let Err(e) = db.wait_durable(receipt.wal_seq) {
            eprintln!("wait_durable failed: {e}");
            return ExitCode::from(1);
        }
        if b % SEAL_EVERY == SEAL_EVERY - 1
            && let Err(e) = db.compact_now()
        {
            eprintln!("compact_now failed: {e}");
            return ExitCode::from(1);
        }
        let mut out = stdout.lock();
        if writeln!(out, "{b}").and_then(|()| out.flush()).is_err() {
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
