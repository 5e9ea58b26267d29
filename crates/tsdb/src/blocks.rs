//! The set of on-disk blocks: opening (with quarantine), naming, retention.
//!
//! Layout: `<dir>/blocks/<seq:020>.<raw|1m|1h>/` (one block per directory, see
//! [`crate::block`]). Every block written by the engine covers ONE window of
//! `block_duration_ms` (aligned to the epoch) at one resolution; a window is rewritten (old
//! blocks merged with new head data into a block with a higher `seq`) when sealed data
//! arrives for it again, so normally each window has one block per resolution. Where a
//! crash left two (the new one renamed into place, the old not yet deleted), reads merge
//! them by `seq` (last write wins) and the next seal of that window folds them together.
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
    /// Start of the window this block covers.
    pub window: i64,
}

impl Block {
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
            Ok(reader) => {
                let window =
                    reader.meta().min_t.div_euclid(block_duration_ms.max(1)) * block_duration_ms.max(1);
                out.blocks.push(Arc::new(Block { reader, path, window }));
            }
            Err(err) => {
                quarantine(&path, quarantine_dir, &name, &err.to_string())?;
                out.quarantined += 1;
            }
        }
    }
    out.blocks.sort_by_key(|b| b.seq());
    drop_superseded_rollups(&mut out.blocks)?;
    Ok(out)
}

/// Removes rollup blocks that a crash left behind a seal: where a window still has two or
/// more raw blocks, the seal that wrote the newest was interrupted before deleting the older
/// blocks, and it deletes rollup blocks before raw ones; so rollup blocks of that window
/// older than its newest raw block were replaced (the seal wrote new ones after the raw
/// block) and would otherwise be counted twice once the raw data leaves retention.
fn drop_superseded_rollups(blocks: &mut Vec<Arc<Block>>) -> Result<(), DbError> {
    let mut raw: std::collections::BTreeMap<i64, (usize, u64)> = std::collections::BTreeMap::new();
    for b in blocks.iter().filter(|b| b.resolution() == Resolution::Raw) {
        let e = raw.entry(b.window).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.max(b.seq());
    }
    let superseded = |b: &Block| {
        b.resolution() != Resolution::Raw
            && raw
                .get(&b.window)
                .is_some_and(|&(n, newest)| n >= 2 && b.seq() < newest)
    };
    for b in blocks.iter().filter(|b| superseded(b)) {
        tracing::warn!(block = %b.path.display(), "Removing a rollup block replaced by an interrupted seal.");
        std::fs::remove_dir_all(&b.path).map_err(DbError::io(format!("remove {}", b.path.display())))?;
    }
    blocks.retain(|b| !superseded(b));
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
