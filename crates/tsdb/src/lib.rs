//! Roaster's embedded time-series engine.
//!
//! **Invariant:** tsdb knows nothing about HTTP, wire protocols or rules. It is a sync
//! library with its own threads (no tokio); the server drives it through [`Db`].
//!
//! A sample travels: [`Db::append`] → WAL pending buffer (`wal.rs`: framed, checksummed,
//! versioned segments) + head (`head.rs`: per-series head chunks and an out-of-order
//! buffer) → the committer thread writes and fsyncs the WAL (group commit) →
//! [`Db::wait_durable`] returns. The maintenance thread (or [`Db::compact_now`]) seals head
//! data into one immutable raw block per `block_duration_ms` window plus its hour (and,
//! when small, minute) rollup blocks (`seal.rs`), then checkpoints: `series.log` is
//! rewritten and older WAL segments deleted. It then applies retention and merges adjacent
//! blocks into larger ones (up to a day for raw data) with [`compact::compact`]. Reads
//! ([`Db::select`]) stream one series at a time, merging blocks (by seq), data being sealed
//! and the head; last write wins on equal timestamps everywhere.
//!
//! Directory layout: `wal/<index>.seg`, `series.log`, `blocks/<seq>.<raw|1m|1h>/data`,
//! `quarantine/`. Formats: WAL in `wal.rs`, registry in `series_log.rs`, blocks in
//! [`block`], sample encodings in [`codec`].
//!
//! Design constraints: appends hold one lock per batch and allocate nothing per point;
//! memory per head point is that of a [`codec::HeadChunk`] (about 2 bytes); reads hold one
//! series at a time; every bound is a named field of [`Options`]. A corrupt block is
//! quarantined, never fatal; a corrupt WAL record before the tail is fatal (no guessing).

pub mod block;
mod blocks;
pub mod codec;
pub mod compact;
pub mod db;
pub mod error;
mod head;
mod index;
mod locks;
pub mod options;
pub mod rollup;
mod seal;
mod series_log;
pub mod summary;
mod wal;

pub use db::{AppendReceipt, Db, DbStats, Select, SeriesData};
pub use error::{DbError, NotReady};
pub use options::{FsyncPolicy, Options, Retention};
pub use seal::{CompactReport, RollupSeries, SelectRollup};
pub use summary::{KeepBucket, SelectSummaries, SummarySeries};
