//! What the server's storage benchmarks share: a `tsdb::Db` in a temporary directory whose
//! clock stands two days after an hour boundary, so a day of points written from `start` is
//! old enough to seal.

use std::sync::Arc;

use model::{ManualClock, Timestamp};
use tsdb::{Db, FsyncPolicy, Options};

pub const HOUR: i64 = 3_600_000;

/// An empty database (maintenance off, fsync every second) and the hour boundary two days
/// before its clock, where the benchmarks' data starts. Keep the directory while the database
/// is open.
pub fn empty_db() -> (tempfile::TempDir, Arc<Db>, i64) {
    let now = 1_700_000_000_000 / HOUR * HOUR + 48 * HOUR;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        fsync: FsyncPolicy::Interval(std::time::Duration::from_millis(1000)),
        maintenance_interval: None,
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts, Arc::new(ManualClock::new(Timestamp(now)))).unwrap();
    (dir, db, now - 48 * HOUR)
}

/// `name`'s value from the environment, if it parses, else `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
