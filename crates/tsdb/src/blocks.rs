//! The set of on-disk blocks: opening (with quarantine), naming, retention.
//!
//! Layout: `<dir>/blocks/<seq:020>.<raw|1m|1h>/` (one block per directory, see
//! [`crate::block`]). A block's *span* is the run of `block_duration_ms` windows (aligned to
//! the epoch) its data falls in, derived from its time range: one window for a block written
//! by a seal, up to a compaction range ([`crate::Options::compact_range_ms`]) for a
//! compacted one. Invariant: a block with a higher `seq` whose span holds another block's
//! span (same resolution) holds all of that block's data (seals merge every raw block
//! within the unit they rewrite, compactions every block within the range), so where a
//! crash left both, reads merge them by `seq` (last write wins) and opening deletes the
//! older one ([`drop_superseded`]).
//!
//! A block that fails to open is moved to `<dir>/quarantine/` with a warning and a counter,
//! and never stops the engine. Leftover `*.tmp` directories are removed on open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::block::BlockReader;
use crate::error::DbError;
use crate::rollup::Resolution;

/// One live block.
#[derive(Debug)]
pub(crate) struct Block {
    pub reader: BlockReader,
    pub path: PathBuf,
    /// Start of the first window this block holds data of.
    pub window: i64,
    /// End (exclusive) of the last window this block holds data of; `window + bd` for a
    /// block of one window, more for a compacted one.
    pub end: i64,
}

impl Block {
    /// A block whose span is derived from its data's time range and the block duration.
    pub fn new(reader: BlockReader, path: PathBuf, block_duration_ms: i64) -> Block {
        let bd = block_duration_ms.max(1);
        let m = reader.meta();
        let window = m.min_t.div_euclid(bd).saturating_mul(bd);
        let end = m
            .max_t
            .max(m.min_t)
            .div_euclid(bd)
            .saturating_mul(bd)
            .saturating_add(bd);
        Block {
            reader,
            path,
            window,
            end,
        }
    }

    /// Whether this block's span lies within `[start, end)`.
    pub fn within(&self, start: i64, end: i64) -> bool {
        self.window >= start && self.end <= end
    }

    /// Whether this block's span overlaps `[start, end)`.
    pub fn overlaps(&self, start: i64, end: i64) -> bool {
        self.window < end && start < self.end
    }

    pub fn resolution(&self) -> Resolution {
        self.reader.meta().resolution
    }

    pub fn seq(&self) -> u64 {
        self.reader.meta().seq
    }
}

pub(crate) fn suffix(res: Resolution) -> &'static str {
    match res {
        Resolution::Raw => "raw",
        Resolution::Minute => "1m",
        Resolution::Hour => "1h",
    }
}

/// The directory a new block of `seq` and `res` goes to.
pub(crate) fn block_dir(blocks_dir: &Path, seq: u64, res: Resolution) -> PathBuf {
    blocks_dir.join(format!("{seq:020}.{}", suffix(res)))
}

/// What opening the block directory found.
#[derive(Debug, Default)]
pub(crate) struct Opened {
    pub blocks: Vec<Arc<Block>>,
    pub quarantined: u64,
}

/// Opens every block under `blocks_dir`, quarantining the ones that fail; sorted by seq.
pub(crate) fn open_all(
    blocks_dir: &Path,
    quarantine_dir: &Path,
    block_duration_ms: i64,
) -> Result<Opened, DbError> {
    let mut out = Opened::default();
    let entries =
        std::fs::read_dir(blocks_dir).map_err(DbError::io(format!("list {}", blocks_dir.display())))?;
    for e in entries {
        let e = e.map_err(DbError::io(format!("list {}", blocks_dir.display())))?;
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            tracing::warn!(block = %path.display(), "Removing an unfinished block left by a crash.");
            std::fs::remove_dir_all(&path).map_err(DbError::io(format!("remove {}", path.display())))?;
            continue;
        }
        match BlockReader::open(&path) {
            Ok(reader) => out
                .blocks
                .push(Arc::new(Block::new(reader, path, block_duration_ms))),
            Err(err) => {
                quarantine(&path, quarantine_dir, &name, &err.to_string())?;
                out.quarantined += 1;
            }
        }
    }
    out.blocks.sort_by_key(|b| b.seq());
    drop_superseded(&mut out.blocks, block_duration_ms)?;
    Ok(out)
}

/// Removes blocks that a crash left behind a seal or a compaction: a block whose span lies
/// within the span of a block of the same resolution with a higher `seq` is superseded
/// (seals and compactions write a block holding everything of the blocks within its span
/// before deleting them; where a seal cannot, for a window whose raw data already left
/// retention, it writes no rollup block, see `seal.rs`).
///
/// Only for resolutions whose bucket divides the block duration: otherwise a bucket spans
/// several windows, spans derived from bucket starts are not exact, and such rollup blocks
/// are neither written at seal nor compacted, so nothing supersedes them.
pub(crate) fn drop_superseded(blocks: &mut Vec<Arc<Block>>, block_duration_ms: i64) -> Result<(), DbError> {
    let bd = block_duration_ms.max(1);
    let superseded = |b: &Block| {
        bd % b.resolution().step_ms() == 0
            && blocks
                .iter()
                .any(|o| o.resolution() == b.resolution() && o.seq() > b.seq() && b.within(o.window, o.end))
    };
    let gone: Vec<Arc<Block>> = blocks.iter().filter(|b| superseded(b)).cloned().collect();
    for b in &gone {
        tracing::warn!(block = %b.path.display(), "Removing a block replaced by an interrupted seal or compaction.");
        std::fs::remove_dir_all(&b.path).map_err(DbError::io(format!("remove {}", b.path.display())))?;
    }
    blocks.retain(|b| !gone.iter().any(|g| Arc::ptr_eq(g, b)));
    Ok(())
}

/// Moves a bad block out of the way, logging why.
pub(crate) fn quarantine(
    path: &Path,
    quarantine_dir: &Path,
    name: &str,
    reason: &str,
) -> Result<(), DbError> {
    tracing::warn!(
        block = %path.display(),
        reason,
        "Quarantining a block that failed verification; the rest of the data stays available."
    );
    std::fs::create_dir_all(quarantine_dir)
        .map_err(DbError::io(format!("create {}", quarantine_dir.display())))?;
    let mut dest = quarantine_dir.join(name);
    let mut n = 0;
    while dest.exists() {
        n += 1;
        dest = quarantine_dir.join(format!("{name}.{n}"));
    }
    std::fs::rename(path, &dest).map_err(DbError::io(format!("quarantine {}", path.display())))
}
