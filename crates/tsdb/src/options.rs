//! Engine settings. Every bound the engine enforces has a named, documented field here;
//! [`Options::default`] gives the documented defaults.

use std::time::Duration;

/// When the WAL is written and fsynced when nobody waits for durability.
///
/// Under both policies a single committer thread does group commit: as soon as a caller
/// waits in [`crate::Db::wait_durable`], it writes and fsyncs everything pending at that
/// moment; waiters that arrive during that fsync are covered together by the next one, which
/// starts right after. A wait therefore lasts one or two fsyncs, never the interval, and a
/// sample whose `wait_durable` returned survives both a process crash and a power loss.
/// Pending bytes past `wal_flush_bytes` also start a commit early. The policies differ only
/// in what happens to samples that nobody waits for:
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// A commit starts after every append, whether or not anyone waits. Risk on a process
    /// crash or a power loss: only the samples appended during the commit in flight (about
    /// one fsync latency). Cost: one fsync per commit even when nobody needs it.
    EveryBatch,
    /// Without waiters, a commit starts when this long has passed since the last one ended.
    /// Un-waited samples are held in process memory until then, so a process crash or a
    /// power loss can lose the samples appended since the last commit (up to one interval's
    /// worth, and about `wal_flush_bytes` at most, up to `max_wal_backlog_bytes` only while
    /// the committer is behind) plus the commit in flight. The write and the fsync happen
    /// together, so both kinds of crash lose the same samples, except that a process crash
    /// keeps what the commit in flight had already written. Waiters are not delayed by the
    /// interval.
    Interval(Duration),
}

/// How long data is kept, per resolution, and how much disk it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Raw samples older than this (relative to the clock) are dropped with their block.
    pub raw_ms: i64,
    /// Minute rollups older than this are dropped.
    pub minute_ms: i64,
    /// Hour rollups older than this are dropped.
    pub hour_ms: i64,
    /// When the blocks on disk exceed this many bytes, the oldest raw blocks are dropped first.
    pub max_disk_bytes: Option<u64>,
}

const DAY_MS: i64 = 24 * 3600 * 1000;

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            raw_ms: 15 * DAY_MS,
            minute_ms: 90 * DAY_MS,
            hour_ms: 2 * 365 * DAY_MS,
            max_disk_bytes: None,
        }
    }
}

/// Engine settings; see the field docs for units and defaults.
#[derive(Debug, Clone)]
pub struct Options {
    /// WAL fsync policy; default `Interval(100 ms)`.
    pub fsync: FsyncPolicy,
    /// Samples older than `max(now, newest sample seen) - ooo_window_ms` are rejected and
    /// counted as `too_old`; default 7 days.
    pub ooo_window_ms: i64,
    /// Time span of one raw block; default 2 h.
    pub block_duration_ms: i64,
    /// Retention per resolution and by disk size.
    pub retention: Retention,
    /// A WAL segment is closed and a new one started past this size; default 64 MiB.
    pub wal_segment_bytes: u64,
    /// Pending (written but not yet handed to the OS) WAL bytes past which `append` blocks
    /// until the committer catches up, and `readiness` reports a backlog; default 64 MiB.
    pub max_wal_backlog_bytes: u64,
    /// Pending WAL bytes past which `append` wakes the committer early; default 4 MiB.
    pub wal_flush_bytes: u64,
    /// In-order samples kept raw per series in the head before they are compressed into a
    /// sealed in-memory chunk; default 240.
    pub head_chunk_points: usize,
    /// Out-of-order samples buffered per series before they are merged into its chunks;
    /// default 512.
    pub max_ooo_points_per_series: usize,
    /// How often the background maintenance thread cuts blocks and applies retention;
    /// default 30 s. `None` disables it (tests call [`crate::Db::compact_now`] instead).
    pub maintenance_interval: Option<Duration>,
    /// Longest span of a compacted block: adjacent raw blocks are merged into blocks of up to
    /// `min(this, raw retention / 10)` (rounded down to a multiple of `block_duration_ms`;
    /// no compaction when that is under two block durations); default 24 h. Rollup blocks
    /// are merged into spans of up to a tenth of their own retention, at most
    /// [`MAX_ROLLUP_COMPACT_MS`], once no raw block overlaps the span (only when their
    /// bucket divides `block_duration_ms`).
    pub max_compacted_block_ms: i64,
}

/// Cap on the span of a compacted rollup block (30 days).
pub const MAX_ROLLUP_COMPACT_MS: i64 = 30 * DAY_MS;

impl Options {
    /// The span compacted blocks of `res` are aligned to, or `None` when blocks of `res` are
    /// not compacted (see [`Options::max_compacted_block_ms`]).
    pub fn compact_range_ms(&self, res: crate::rollup::Resolution) -> Option<i64> {
        use crate::rollup::Resolution;
        let bd = self.block_duration_ms.max(1);
        let raw = (self.max_compacted_block_ms.min(self.retention.raw_ms / 10) / bd) * bd;
        let range = match res {
            Resolution::Raw => raw,
            // buckets that straddle windows make spans inexact: no compaction
            Resolution::Minute | Resolution::Hour if bd % res.step_ms() != 0 => 0,
            Resolution::Minute | Resolution::Hour => {
                let own = if res == Resolution::Minute {
                    self.retention.minute_ms
                } else {
                    self.retention.hour_ms
                };
                let r = (own / 10).min(MAX_ROLLUP_COMPACT_MS);
                if raw >= 2 * bd {
                    (r / raw) * raw
                } else {
                    (r / bd) * bd
                }
            }
        };
        (range >= 2 * bd).then_some(range)
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            fsync: FsyncPolicy::Interval(Duration::from_millis(100)),
            ooo_window_ms: 7 * DAY_MS,
            block_duration_ms: 2 * 3600 * 1000,
            retention: Retention::default(),
            wal_segment_bytes: 64 << 20,
            max_wal_backlog_bytes: 64 << 20,
            wal_flush_bytes: 4 << 20,
            head_chunk_points: 240,
            max_ooo_points_per_series: 512,
            maintenance_interval: Some(Duration::from_secs(30)),
            max_compacted_block_ms: DAY_MS,
        }
    }
}
