//! `series.log`: the series registry as of the last checkpoint. Series created since are in
//! the WAL; together they make series ids stable across restarts.
//!
//! Format: magic `RSER` + version `u32` LE (1), then WAL-framed records of type 1
//! (`id varint` + canonical key bytes), ids ascending from 0. The file is replaced
//! atomically (write `series.log.tmp`, fsync, rename, fsync the directory), so a torn file
//! is not expected: any bad record is [`DbError::SeriesLogCorrupt`].

use std::io::Write as _;
use std::path::Path;

use model::{SeriesId, SeriesKey};

use crate::error::DbError;
use crate::index::Index;
use crate::wal::{REC_SERIES, begin_record, end_record, get_uvarint, put_uvarint, sync_dir};

const MAGIC: &[u8; 4] = b"RSER";
const VERSION: u32 = 1;

/// Loads the registry into `index`; a missing file is an empty registry.
pub(crate) fn load(path: &Path, index: &mut Index) -> Result<(), DbError> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DbError::io(format!("read {}", path.display()))(e)),
    };
    let corrupt = |reason: String| DbError::SeriesLogCorrupt {
        path: path.to_owned(),
        reason,
    };
    if data.get(..4) != Some(MAGIC.as_slice()) {
        return Err(corrupt("bad magic".into()));
    }
    let version = data
        .get(4..8)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| corrupt("short header".into()))?;
    if version != VERSION {
        return Err(corrupt(format!("unsupported version {version}")));
    }
    let mut pos = 8;
    while pos < data.len() {
        let header = data
            .get(pos..pos + 9)
            .ok_or_else(|| corrupt("short record".into()))?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let body = data
            .get(pos + 8..pos + 9 + len)
            .ok_or_else(|| corrupt("short record".into()))?;
        if crc32fast::hash(body) != crc || body.first() != Some(&REC_SERIES) {
            return Err(corrupt(format!("bad record at byte {pos}")));
        }
        let payload = body.get(1..).unwrap_or_default();
        let mut p = 0;
        let id = get_uvarint(payload, &mut p).ok_or_else(|| corrupt("bad series id".into()))?;
        let key = payload
            .get(p..)
            .and_then(SeriesKey::decode)
            .ok_or_else(|| corrupt("bad series key".into()))?;
        index.insert_recovered(SeriesId(id), key).map_err(corrupt)?;
        pos += 9 + len;
    }
    Ok(())
}

/// Atomically replaces the registry file with `keys` (id = position).
pub(crate) fn write(dir: &Path, file_name: &str, keys: &[SeriesKey]) -> Result<(), DbError> {
    let mut buf = Vec::with_capacity(keys.len() * 64 + 8);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    for (id, key) in keys.iter().enumerate() {
        let start = begin_record(&mut buf, REC_SERIES);
        put_uvarint(&mut buf, id as u64);
        key.encode(&mut buf);
        end_record(&mut buf, start);
    }
    let tmp = dir.join(format!("{file_name}.tmp"));
    let path = dir.join(file_name);
    let mut f = std::fs::File::create(&tmp).map_err(DbError::io(format!("create {}", tmp.display())))?;
    f.write_all(&buf)
        .and_then(|()| f.sync_all())
        .map_err(DbError::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(DbError::io(format!("rename {}", tmp.display())))?;
    sync_dir(dir)
}
