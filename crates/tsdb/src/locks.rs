//! Time spent waiting for the engine's storage locks, by lock and operation: the "work
//! about work" of issue 3, exported as `roaster_storage_lock_wait_seconds{lock,op}`.
//!
//! Every acquisition on a measured path is observed (an uncontended one as ~0 s), so a
//! histogram's count is the number of acquisitions and its buckets show how many waited.
//! The hot per-sample paths (the ingest-side series lookup) are not measured: their lock is
//! only ever taken for writing when a series is created.

use std::time::Instant;

use model::telemetry::{Exposition, Histogram};
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The metric family name.
pub(crate) const LOCK_WAIT_FAMILY: &str = "roaster_storage_lock_wait_seconds";

/// Lock-wait histograms, one per (lock, operation).
#[derive(Debug, Default)]
pub(crate) struct LockWaits {
    /// A head shard's write lock, taken by `append` once per shard a batch touches.
    pub head_append: Histogram,
    /// A head shard's read lock, taken by a read of one series.
    pub head_read: Histogram,
    /// A head shard's write lock, taken by a seal to split the shard's old data off.
    pub head_seal: Histogram,
    /// The index read lock, taken once per `select`.
    pub index_read: Histogram,
    /// The index write lock, taken when a series is created.
    pub index_create: Histogram,
    /// The block list's read lock, taken by a read of one series.
    pub blocks_read: Histogram,
    /// The block list's write lock, taken to publish or drop blocks.
    pub blocks_publish: Histogram,
    /// The WAL append guard, taken by a seal (once to cut, then once per shard to re-log).
    pub wal_seal: Histogram,
}

impl LockWaits {
    /// Renders the family (the WAL append guard taken by `append` is `wal_append`, measured
    /// by the WAL itself and passed in).
    pub fn render(&self, out: &mut Exposition, wal_append: &Histogram) {
        out.family(
            LOCK_WAIT_FAMILY,
            "histogram",
            "Time spent waiting to acquire the storage engine's locks, by lock and operation.",
        );
        let all: [(&str, &str, &Histogram); 9] = [
            ("wal", "append", wal_append),
            ("wal", "seal", &self.wal_seal),
            ("head", "append", &self.head_append),
            ("head", "read", &self.head_read),
            ("head", "seal", &self.head_seal),
            ("index", "read", &self.index_read),
            ("index", "create", &self.index_create),
            ("blocks", "read", &self.blocks_read),
            ("blocks", "publish", &self.blocks_publish),
        ];
        for (lock, op, h) in all {
            out.histogram_samples(LOCK_WAIT_FAMILY, &[("lock", lock), ("op", op)], h);
        }
    }
}

/// Takes `l` for reading, recording the wait in `h`.
#[inline]
pub(crate) fn read<'a, T>(l: &'a RwLock<T>, h: &Histogram) -> RwLockReadGuard<'a, T> {
    let t = Instant::now();
    let g = l.read();
    h.observe(t.elapsed());
    g
}

/// Takes `l` for writing, recording the wait in `h`.
#[inline]
pub(crate) fn write<'a, T>(l: &'a RwLock<T>, h: &Histogram) -> RwLockWriteGuard<'a, T> {
    let t = Instant::now();
    let g = l.write();
    h.observe(t.elapsed());
    g
}
