//! Roaster's embedded time-series engine.
//!
//! **Invariant:** tsdb knows nothing about HTTP, wire protocols or rules. It is a sync
//! library with its own threads (no tokio); the server drives it through [`Db`].
//!
//! A sample travels: [`Db::append`] → WAL pending buffer ([`wal`], framed, checksummed,
//! versioned) + head ([`head`], per-series compressed chunks, raw tail, out-of-order
//! buffer) → the committer thread writes and fsyncs the WAL (group commit) →
//! [`Db::wait_durable`] returns. Reads ([`Db::select`]) stream one series at a time.
//!
//! Modules: [`db`] (the API, locking order), [`wal`] (segment and record format, replay
//! rules), [`head`] (in-memory data, last-write-wins rules), [`index`] (series registry and
//! inverted index), [`series_log`] (registry checkpoint format), [`options`] (every limit,
//! with defaults), [`error`]. Helper modules for sealed data: [`codec`], [`block`],
//! [`compact`], [`rollup`].

pub mod block;
mod blocks;
pub mod codec;
pub mod compact;
pub mod db;
pub mod error;
mod head;
mod index;
pub mod options;
pub mod rollup;
mod seal;
mod series_log;
mod wal;

pub use db::{AppendReceipt, Db, DbStats, Select, SeriesData};
pub use error::{DbError, NotReady};
pub use options::{FsyncPolicy, Options, Retention};
pub use seal::{CompactReport, RollupSeries, SelectRollup};
