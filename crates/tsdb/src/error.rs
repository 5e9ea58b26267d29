//! The engine's error boundary: one enum for everything `Db` returns, plus the readiness reason.

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// An I/O operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        /// What the engine was doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A WAL record failed its checksum or framing somewhere other than the tail of the last
    /// segment; the engine refuses to guess (restore from a snapshot or remove the segment).
    #[error("wal segment {path} is corrupt at byte {offset}: {reason}")]
    WalCorrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// The series registry file is unreadable.
    #[error("series log {path} is corrupt: {reason}")]
    SeriesLogCorrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A selector whose every matcher also matches the empty value would select everything.
    #[error("selector must contain at least one matcher that does not match the empty value")]
    EmptySelector,
    /// An fsync failed earlier; the WAL can no longer promise durability (fsync errors are
    /// not retryable: the page cache may have dropped the data). Restart the server.
    #[error("wal is failed after an earlier error: {0}")]
    WalFailed(String),
    /// The database was closed.
    #[error("database is closed")]
    Closed,
    /// Another process (or another `Db` in this one) has the directory open.
    #[error("data directory {0} is in use by another process")]
    Locked(PathBuf),
    /// A block failed to read during a query (it is quarantined on next open).
    #[error("block {block}: {reason}")]
    Block {
        /// The block directory name.
        block: String,
        /// What went wrong.
        reason: String,
    },
}

impl DbError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> DbError {
        let context = context.into();
        move |source| DbError::Io { context, source }
    }
}

/// Why the engine is not ready to take writes; `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// The WAL cannot be written or synced.
    #[error("storage not writable: {0}")]
    NotWritable(String),
    /// More WAL bytes are pending than `max_wal_backlog_bytes`.
    #[error("wal backlog of {pending_bytes} bytes exceeds {limit_bytes}")]
    WalBacklog {
        /// Pending bytes now.
        pending_bytes: u64,
        /// The configured limit.
        limit_bytes: u64,
    },
    /// The database was closed.
    #[error("database is closed")]
    Closed,
}
