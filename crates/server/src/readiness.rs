//! `/readyz`: whether the server should receive traffic, with the reasons when not.
//!
//! Reasons (a contract; documented in docs/operating):
//! - `shutting_down`: a graceful shutdown has begun;
//! - `storage_not_writable`: creating, fsyncing and removing a probe file in the data
//!   directory failed (the probe result is reused for `readiness_probe_cache_ms`);
//! - `wal_backlog`: storage reports it cannot keep up (from `tsdb::Db::readiness`);
//! - `ingest_queue_saturated`: ingest's queues into storage are full (from `Ingest::readiness`).
//!
//! The probe does file I/O, so callers run [`Readiness::storage_writable`] in `spawn_blocking`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Reason: a graceful shutdown has begun.
pub const SHUTTING_DOWN: &str = "shutting_down";
/// Reason: the data directory cannot be written.
pub const STORAGE_NOT_WRITABLE: &str = "storage_not_writable";
/// Reason: storage reports a write-ahead-log backlog.
pub const WAL_BACKLOG: &str = "wal_backlog";
/// Reason: ingest's queues are full.
pub const INGEST_QUEUE_SATURATED: &str = "ingest_queue_saturated";

/// Shared readiness state.
#[derive(Debug)]
pub struct Readiness {
    probe_path: PathBuf,
    cache_for: Duration,
    last_probe: Mutex<Option<(Instant, bool)>>,
    shutting_down: AtomicBool,
}

impl Readiness {
    /// Readiness of the server whose data directory is `data_dir`.
    pub fn new(data_dir: &Path, cache_for: Duration) -> Readiness {
        Readiness {
            probe_path: data_dir.join(".readyz-probe"),
            cache_for,
            last_probe: Mutex::new(None),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Marks the server as shutting down; `/readyz` answers 503 from now on.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether a shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Whether the data directory is writable (cached; blocking: file I/O on a cache miss).
    pub fn storage_writable(&self) -> bool {
        let now = Instant::now();
        if let Some((at, ok)) = *self.last_probe.lock()
            && now.duration_since(at) < self.cache_for
        {
            return ok;
        }
        let ok = probe(&self.probe_path).is_ok();
        *self.last_probe.lock() = Some((now, ok));
        ok
    }
}

fn probe(path: &Path) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(b"ok")?;
    f.sync_all()?;
    drop(f);
    std::fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_detects_a_missing_directory_and_caches() {
        let dir = tempfile::tempdir().unwrap();
        let r = Readiness::new(dir.path(), Duration::from_secs(3600));
        assert!(r.storage_writable());
        let gone = Readiness::new(&dir.path().join("nope"), Duration::ZERO);
        assert!(!gone.storage_writable());
        // Cached: removing the directory does not change the answer within the window.
        let cached = Readiness::new(&dir.path().join("sub"), Duration::from_secs(3600));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(cached.storage_writable());
        std::fs::remove_dir(dir.path().join("sub")).unwrap();
        assert!(cached.storage_writable());
        assert!(!r.is_shutting_down());
        r.set_shutting_down();
        assert!(r.is_shutting_down());
    }
}
