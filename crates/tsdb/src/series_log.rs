//! `series.log`: the series registry as of the last checkpoint. Series created since are in
//! the WAL; together they make series ids stable across restarts.
//!
//! Format: magic `RSER` + version `u32` LE (1), then WAL-framed records
//! (`[len u32][crc32 u32][type u8 = 3][payload]`), each holding up to
//! [`KEYS_PER_RECORD`] consecutive ids: `first_id varint, count varint`, then per key
//! `shared varint, suffix_len varint, suffix bytes`, front-coded against the previous key's
//! canonical bytes (`SeriesKey::encode`) in the same record (Graphite-style names such as
//! `host1.cpu0.user` share long prefixes, so names cost a few bytes each). The file is replaced
//! atomically (write `series.log.tmp`, fsync, rename, fsync the directory), so a torn file
//! is not expected: any bad record is [`DbError::SeriesLogCorrupt`].

use std::io::Write as _;
use std::path::Path;

use model::{SeriesId, SeriesKey};

use crate::error::DbError;
use crate::index::Index;
use crate::wal::{begin_record, end_record, get_uvarint, put_uvarint, sync_dir};

const MAGIC: &[u8; 4] = b"RSER";
const VERSION: u32 = 1;
/// Record type of a front-coded batch of series keys.
const REC_KEYS: u8 = 3;
/// Keys per record: bounds a record's size and the damage of one bad checksum.
pub const KEYS_PER_RECORD: usize = 4096;

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
        if crc32fast::hash(body) != crc || body.first() != Some(&REC_KEYS) {
            return Err(corrupt(format!("bad record at byte {pos}")));
        }
        let payload = body.get(1..).unwrap_or_default();
        let mut p = 0;
        let bad = |what: &str| corrupt(format!("bad {what} in record at byte {pos}"));
        let first = get_uvarint(payload, &mut p).ok_or_else(|| bad("first id"))?;
        let count = get_uvarint(payload, &mut p).ok_or_else(|| bad("count"))?;
        let mut prev: Vec<u8> = Vec::new();
        for i in 0..count {
            let shared = get_uvarint(payload, &mut p).ok_or_else(|| bad("prefix"))? as usize;
            let n = get_uvarint(payload, &mut p).ok_or_else(|| bad("suffix length"))? as usize;
            let suffix = payload.get(p..p.saturating_add(n)).ok_or_else(|| bad("suffix"))?;
            p += n;
            if shared > prev.len() {
                return Err(bad("prefix"));
            }
            prev.truncate(shared);
            prev.extend_from_slice(suffix);
            let key = SeriesKey::decode(&prev).ok_or_else(|| bad("series key"))?;
            index
                .insert_recovered(SeriesId(first.saturating_add(i)), key)
                .map_err(corrupt)?;
        }
        pos += 9 + len;
    }
    Ok(())
}

/// Atomically replaces the registry file with `keys` (id = position).
pub(crate) fn write(dir: &Path, file_name: &str, keys: &[SeriesKey]) -> Result<(), DbError> {
    let mut buf = Vec::with_capacity(keys.len() * 16 + 8);
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    let (mut prev, mut cur) = (Vec::new(), Vec::new());
    for (r, group) in keys.chunks(KEYS_PER_RECORD).enumerate() {
        let start = begin_record(&mut buf, REC_KEYS);
        put_uvarint(&mut buf, (r * KEYS_PER_RECORD) as u64);
        put_uvarint(&mut buf, group.len() as u64);
        prev.clear();
        for key in group {
            cur.clear();
            key.encode(&mut cur);
            let shared = prev.iter().zip(&cur).take_while(|(a, b)| a == b).count();
            put_uvarint(&mut buf, shared as u64);
            put_uvarint(&mut buf, (cur.len() - shared) as u64);
            buf.extend_from_slice(cur.get(shared..).unwrap_or_default());
            std::mem::swap(&mut prev, &mut cur);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use model::Label;

    #[test]
    fn round_trips_front_coded_keys_across_records() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<SeriesKey> = (0..KEYS_PER_RECORD + 10)
            .map(|i| match i % 3 {
                0 => SeriesKey::from_name(format!("host{}.cpu0.user", i / 3)).unwrap(),
                1 => SeriesKey::new("up", vec![Label::new("i", i.to_string())]).unwrap(),
                _ => SeriesKey::from_name(format!("x{i}")).unwrap(),
            })
            .collect();
        write(dir.path(), "s.log", &keys).unwrap();
        let mut ix = Index::default();
        load(&dir.path().join("s.log"), &mut ix).unwrap();
        assert_eq!(ix.keys(), keys.as_slice());
        // a flipped byte is caught
        let path = dir.path().join("s.log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(load(&path, &mut Index::default()).is_err());
    }
}
