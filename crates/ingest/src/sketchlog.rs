//! The StatsD sketch log: one mergeable DDSketch per timer per flush, kept on disk so that
//! percentiles over any time range and any set of timers (hosts, tags) are computed later
//! by merging sketches, never by averaging percentiles.
//!
//! # Files
//!
//! `<data>/sketches/` holds segment files. The segment being written is
//! `<seq>-<first_ms>.skl`; when it is closed (it reached `statsd_sketch_segment_bytes`, or the
//! process restarted) it is renamed `<seq>-<first_ms>-<last_ms>.skl`, so the time range of
//! every closed segment is known from its name without reading it. `seq` is a 10-digit
//! sequence number; `first_ms`/`last_ms` are the oldest and newest flush times in the file
//! (milliseconds since the Unix epoch).
//!
//! A segment starts with the 8-byte magic [`MAGIC`], then records:
//!
//! ```text
//! u32 LE payload length | u32 LE CRC-32 of the payload | payload
//! payload: i64 LE flush time (ms) | u16 LE key length | key (SeriesKey::encode) | sketch
//! ```
//!
//! The sketch is DDSketch's portable binary form (`to_java_bytes`: the DataDog sketch
//! encoding, bins as index deltas and counts), typically tens to a few hundred bytes.
//!
//! # Invariants
//!
//! - **Crash safety**: a record is visible to queries only once it is fully written; at
//!   startup the open segment is scanned and cut at the first incomplete or corrupt record
//!   (bad length, CRC mismatch, short read), which is logged and counted, never fatal. A
//!   reader stops at the first bad record of any file.
//! - **Durability**: with `statsd_sketch_fsync` the segment is fsynced once per flush (every
//!   `statsd_flush_interval_ms`), after the flush's sketches are written, as the WAL's
//!   interval policy does; a crash loses at most the flush being written.
//! - **Bounds**: segments are at most `statsd_sketch_segment_bytes` (a flush's records go to
//!   one segment, so a segment may exceed it by one flush); closed segments whose newest
//!   sketch is older than `statsd_sketch_retention_hours` are deleted, and so are the oldest
//!   closed segments while the directory holds more than `statsd_sketch_max_bytes`. A query
//!   merges at most `statsd_sketch_query_max_sketches` sketches into at most
//!   `statsd_sketch_query_max_groups` groups, else it fails asking to narrow it.
//! - **Accuracy**: every sketch has relative accuracy
//!   [`crate::statsd::aggregator::SKETCH_RELATIVE_ACCURACY`] (1%): a quantile answered from a
//!   merge of sketches is within 1% of a value of the union of the timers' raw values at
//!   that rank, whatever the number of flushes or hosts merged. Sample rates are not
//!   applied (a sketch counts the values received).
//! - Flush times are assumed non-decreasing (wall clock); a flush older than the open
//!   segment's first record starts a new segment, so every name's range stays true.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use model::telemetry::{Counter, Exposition, Gauge};
use model::{Matcher, SeriesKey};
use parking_lot::Mutex;
use sketches_ddsketch::DDSketch;

use crate::statsd::aggregator::SKETCH_RELATIVE_ACCURACY;

/// First bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"RSKLOG01";

/// Largest payload a record may declare; a longer length is corruption. A DDSketch of 2048
/// bins encodes to well under 32 KiB, and keys are bounded by the ingest limits.
const MAX_RECORD_BYTES: usize = 1 << 20;

/// Bytes before a record's payload: length and CRC.
const RECORD_HEADER: usize = 8;

/// Sketches written to the log.
pub const SKETCHES_WRITTEN_TOTAL: &str = "roaster_statsd_sketches_written_total";
/// Failed writes (each loses one flush's sketches).
pub const WRITE_ERRORS_TOTAL: &str = "roaster_statsd_sketch_write_errors_total";
/// Bytes cut from segment tails at startup, and records a reader skipped as corrupt.
pub const CORRUPT_TOTAL: &str = "roaster_statsd_sketch_corrupt_records_total";
/// Bytes held by the sketch log's segments.
pub const BYTES: &str = "roaster_statsd_sketch_log_bytes";

/// The sketch log's bounds and durability, from `[ingest]` (`statsd_sketch_*`).
#[derive(Debug, Clone, PartialEq)]
pub struct SketchLogConfig {
    /// Sketches older than this are deleted (whole segments); 0 disables the log.
    pub retention_ms: i64,
    /// Most bytes all segments may hold; the oldest are deleted beyond it.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// fsync the segment after each flush's sketches.
    pub fsync: bool,
    /// Most sketches one query may merge.
    pub query_max_sketches: usize,
    /// Most groups one query may produce.
    pub query_max_groups: usize,
}

/// Why the sketch log failed.
#[derive(Debug, thiserror::Error)]
pub enum SketchLogError {
    /// A file or directory operation failed.
    #[error("sketch log {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A query would merge more sketches than `statsd_sketch_query_max_sketches`.
    #[error("the query matches more than {0} sketches; narrow the time range or the timers")]
    TooManySketches(usize),
    /// A query would produce more groups than `statsd_sketch_query_max_groups`.
    #[error("the query produces more than {0} groups; narrow it or group by another tag")]
    TooManyGroups(usize),
    /// A quantile outside `[0, 1]`.
    #[error("quantile {0} is not between 0 and 1")]
    BadQuantile(f64),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SketchLogError + '_ {
    move |source| SketchLogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A segment's place and time range.
#[derive(Debug, Clone)]
struct Segment {
    seq: u64,
    path: PathBuf,
    first_ms: i64,
    last_ms: i64,
    /// Bytes of complete records (plus the magic): what readers may read.
    len: u64,
}

/// The segment being appended to.
struct Active {
    file: File,
    seg: Segment,
}

struct Inner {
    /// Closed segments, oldest first.
    closed: Vec<Segment>,
    active: Option<Active>,
    next_seq: u64,
}

/// The on-disk log of timer sketches (see the module doc).
pub struct SketchLog {
    dir: PathBuf,
    cfg: SketchLogConfig,
    inner: Mutex<Inner>,
    written: Counter,
    write_errors: Counter,
    corrupt: Counter,
    bytes: Gauge,
}

impl std::fmt::Debug for SketchLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SketchLog")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// What a quantile query selects and computes.
#[derive(Debug, Clone)]
pub struct SketchQuery {
    /// Every matcher must hold (`__name__` matches the timer name, other names its tags).
    pub matchers: Vec<Matcher>,
    /// Oldest flush time included (ms, inclusive).
    pub start_ms: i64,
    /// Newest flush time included (ms, inclusive).
    pub end_ms: i64,
    /// Quantiles to answer, each in `[0, 1]`.
    pub quantiles: Vec<f64>,
    /// Merge per value of this tag (`__name__`: per timer name); `None`: one group.
    /// Timers without the tag form the group with the empty value.
    pub group_by: Option<String>,
}

/// One group's merged sketch, summarised.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantileGroup {
    /// The group's tag value (`None` without `group_by`; `""` for timers lacking the tag).
    pub group: Option<String>,
    /// Sketches merged into this group.
    pub sketches: u64,
    /// Values the merged sketch holds.
    pub count: u64,
    /// Exact sum, minimum and maximum of those values.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// `(q, value)` for each requested quantile, within the relative accuracy.
    pub quantiles: Vec<(f64, f64)>,
}

/// The answer to a [`SketchQuery`].
#[derive(Debug, Clone, PartialEq)]
pub struct QuantileAnswer {
    /// Groups sorted by their value.
    pub groups: Vec<QuantileGroup>,
    /// Sketches merged in total.
    pub sketches_merged: u64,
    /// Relative accuracy of every quantile value.
    pub relative_accuracy: f64,
}

impl SketchLog {
    /// Opens (creating) the log in `dir`: lists its segments, cuts a corrupt tail off the
    /// segment left open by the last run and closes it, and applies retention at `now_ms`.
    pub fn open(
        dir: impl Into<PathBuf>,
        cfg: SketchLogConfig,
        now_ms: i64,
    ) -> Result<SketchLog, SketchLogError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let log = SketchLog {
            dir,
            cfg,
            inner: Mutex::new(Inner {
                closed: Vec::new(),
                active: None,
                next_seq: 1,
            }),
            written: Counter::default(),
            write_errors: Counter::default(),
            corrupt: Counter::default(),
            bytes: Gauge::default(),
        };
        let mut closed = Vec::new();
        let mut open = Vec::new();
        let mut max_seq = 0u64;
        for entry in std::fs::read_dir(&log.dir).map_err(io_err(&log.dir))? {
            let entry = entry.map_err(io_err(&log.dir))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let parsed = parse_name(name);
            if let Some((seq, _, _)) = parsed {
                max_seq = max_seq.max(seq);
            }
            match parsed {
                Some((seq, first, Some(last))) => {
                    let len = entry.metadata().map_err(io_err(&path))?.len();
                    closed.push(Segment {
                        seq,
                        path,
                        first_ms: first,
                        last_ms: last,
                        len,
                    });
                }
                Some((seq, first, None)) => open.push((seq, first, path)),
                None => {}
            }
        }
        // segments left open by an earlier run: cut the bad tail, then close them; an empty
        // one (no record survived) is removed
        for (seq, first, path) in open {
            if let Some(seg) = log.recover(seq, first, &path)? {
                closed.push(seg);
            }
        }
        closed.sort_by_key(|s| s.seq);
        {
            let mut inner = log.inner.lock();
            // after every file seen, even one removed as empty, so names never repeat
            inner.next_seq = max_seq.saturating_add(1);
            inner.closed = closed;
        }
        log.retain(now_ms);
        Ok(log)
    }

    /// Scans a segment left open: truncates it after its last good record and renames it
    /// closed; `None` when it holds no record.
    fn recover(&self, seq: u64, first_ms: i64, path: &Path) -> Result<Option<Segment>, SketchLogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let size = file.metadata().map_err(io_err(path))?.len();
        let mut reader = BufReader::new(&file);
        let mut magic = [0u8; 8];
        let whole_magic = reader.read_exact(&mut magic).is_ok();
        if whole_magic && &magic != MAGIC {
            // another format (a newer version?): not ours to cut or delete
            tracing::warn!(path = %path.display(), "sketch log: unknown segment format; file left alone and not read");
            return Ok(None);
        }
        let (good, last) = if whole_magic {
            let mut good = MAGIC.len() as u64;
            let mut last = None::<i64>;
            let mut buf = Vec::new();
            while let Some(Ok(n)) = read_record(&mut reader, &mut buf) {
                good += n as u64;
                if let Some(ts) = record_ts(&buf) {
                    last = Some(last.map_or(ts, |l| l.max(ts)));
                }
            }
            (good, last)
        } else {
            (0, None)
        };
        if good < size {
            tracing::warn!(path = %path.display(), kept = good, cut = size - good, "sketch log: cut a corrupt or incomplete tail");
            self.corrupt.inc();
            file.set_len(good).map_err(io_err(path))?;
            file.sync_all().map_err(io_err(path))?;
        }
        let Some(last) = last else {
            std::fs::remove_file(path).map_err(io_err(path))?;
            return Ok(None);
        };
        let closed = self.dir.join(format!("{seq:010}-{first_ms}-{last}.skl"));
        std::fs::rename(path, &closed).map_err(io_err(path))?;
        Ok(Some(Segment {
            seq,
            path: closed,
            first_ms,
            last_ms: last,
            len: good,
        }))
    }

    /// Appends one flush's sketches (stamped `flush_ms`), fsyncs when configured, then
    /// rotates and applies retention. A failure is logged and counted; the flush's samples
    /// are unaffected.
    pub fn append(&self, flush_ms: i64, sketches: &[(SeriesKey, DDSketch)]) {
        if sketches.is_empty() {
            return;
        }
        match self.try_append(flush_ms, sketches) {
            Ok(()) => self.written.add(sketches.len() as u64),
            Err(e) => {
                self.write_errors.inc();
                tracing::warn!(error = %e, sketches = sketches.len(), "sketch log: cannot write a flush's sketches");
            }
        }
        self.retain(flush_ms);
    }

    fn try_append(&self, flush_ms: i64, sketches: &[(SeriesKey, DDSketch)]) -> Result<(), SketchLogError> {
        let mut buf = Vec::with_capacity(sketches.len() * 128);
        let mut key = Vec::new();
        for (k, sketch) in sketches {
            key.clear();
            k.encode(&mut key);
            let Ok(key_len) = u16::try_from(key.len()) else {
                continue; // longer than any key the ingest limits allow
            };
            let body = sketch.to_java_bytes();
            let len = 8 + 2 + key.len() + body.len();
            let Ok(len32) = u32::try_from(len) else {
                continue;
            };
            if len > MAX_RECORD_BYTES {
                continue;
            }
            let start = buf.len();
            buf.extend_from_slice(&len32.to_le_bytes());
            buf.extend_from_slice(&[0; 4]);
            buf.extend_from_slice(&flush_ms.to_le_bytes());
            buf.extend_from_slice(&key_len.to_le_bytes());
            buf.extend_from_slice(&key);
            buf.extend_from_slice(&body);
            let crc = crc32fast::hash(buf.get(start + RECORD_HEADER..).unwrap_or_default());
            if let Some(slot) = buf.get_mut(start + 4..start + 8) {
                slot.copy_from_slice(&crc.to_le_bytes());
            }
        }
        let mut inner = self.inner.lock();
        let needs_new = match &inner.active {
            None => true,
            Some(a) => a.seg.len >= self.cfg.segment_bytes || flush_ms < a.seg.first_ms,
        };
        if needs_new {
            self.close_active(&mut inner)?;
            let seq = inner.next_seq;
            inner.next_seq += 1;
            let path = self.dir.join(format!("{seq:010}-{flush_ms}.skl"));
            let mut file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            file.write_all(MAGIC).map_err(io_err(&path))?;
            inner.active = Some(Active {
                file,
                seg: Segment {
                    seq,
                    path,
                    first_ms: flush_ms,
                    last_ms: flush_ms,
                    len: MAGIC.len() as u64,
                },
            });
        }
        let Some(active) = inner.active.as_mut() else {
            return Ok(());
        };
        let path = active.seg.path.clone();
        if let Err(e) = active.file.write_all(&buf) {
            // cut what may have been half written, so later records are not hidden behind it
            let _ = active.file.set_len(active.seg.len);
            return Err(io_err(&path)(e));
        }
        if self.cfg.fsync {
            active.file.sync_data().map_err(io_err(&path))?;
        }
        active.seg.len += buf.len() as u64;
        active.seg.last_ms = active.seg.last_ms.max(flush_ms);
        Ok(())
    }

    /// Renames the active segment closed (with its time range) and moves it to `closed`.
    fn close_active(&self, inner: &mut Inner) -> Result<(), SketchLogError> {
        let Some(active) = inner.active.take() else {
            return Ok(());
        };
        let seg = active.seg;
        if self.cfg.fsync {
            active.file.sync_all().map_err(io_err(&seg.path))?;
        }
        drop(active.file);
        let closed = self
            .dir
            .join(format!("{:010}-{}-{}.skl", seg.seq, seg.first_ms, seg.last_ms));
        std::fs::rename(&seg.path, &closed).map_err(io_err(&seg.path))?;
        inner.closed.push(Segment { path: closed, ..seg });
        Ok(())
    }

    /// Closes the active segment (at shutdown; the next run would otherwise recover it).
    pub fn close(&self) {
        let mut inner = self.inner.lock();
        if let Err(e) = self.close_active(&mut inner) {
            tracing::warn!(error = %e, "sketch log: cannot close the open segment");
        }
    }

    /// Deletes closed segments past retention or beyond the size bound.
    fn retain(&self, now_ms: i64) {
        let mut inner = self.inner.lock();
        let horizon = now_ms.saturating_sub(self.cfg.retention_ms);
        let active_len = inner.active.as_ref().map_or(0, |a| a.seg.len);
        let mut total: u64 = inner.closed.iter().map(|s| s.len).sum::<u64>() + active_len;
        let mut keep = Vec::with_capacity(inner.closed.len());
        for seg in std::mem::take(&mut inner.closed) {
            if seg.last_ms < horizon || total > self.cfg.max_bytes {
                match std::fs::remove_file(&seg.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %seg.path.display(), error = %e, "sketch log: cannot delete a segment");
                        keep.push(seg);
                        continue;
                    }
                }
                total = total.saturating_sub(seg.len);
            } else {
                keep.push(seg);
            }
        }
        inner.closed = keep;
        self.bytes.set(i64::try_from(total).unwrap_or(i64::MAX));
    }

    /// Merges the sketches `q` selects and answers its quantiles (reads files; call from a
    /// blocking context).
    pub fn query(&self, q: &SketchQuery) -> Result<QuantileAnswer, SketchLogError> {
        if let Some(bad) = q.quantiles.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(SketchLogError::BadQuantile(*bad));
        }
        // the segments overlapping the range, with the length readers may trust
        let segments: Vec<Segment> = {
            let inner = self.inner.lock();
            inner
                .closed
                .iter()
                .chain(inner.active.as_ref().map(|a| &a.seg))
                .filter(|s| s.first_ms <= q.end_ms && s.last_ms >= q.start_ms)
                .cloned()
                .collect()
        };
        let mut groups: BTreeMap<Option<String>, (u64, DDSketch)> = BTreeMap::new();
        let mut merged = 0u64;
        let mut buf = Vec::new();
        for seg in &segments {
            let file = match File::open(&seg.path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // closed (renamed) since the snapshot, or deleted by retention
                    match self.current_path(seg.seq).map(File::open) {
                        Some(Ok(f)) => f,
                        _ => continue,
                    }
                }
                Err(e) => return Err(io_err(&seg.path)(e)),
            };
            let mut reader = BufReader::with_capacity(1 << 16, file.take(seg.len));
            let mut magic = [0u8; 8];
            if reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
                self.corrupt.inc();
                continue;
            }
            loop {
                match read_record(&mut reader, &mut buf) {
                    None => break,
                    Some(Err(())) => {
                        self.corrupt.inc();
                        tracing::warn!(path = %seg.path.display(), "sketch log: corrupt record; rest of the segment skipped");
                        break;
                    }
                    Some(Ok(_)) => {}
                }
                let Some((ts, key, body)) = split_record(&buf) else {
                    self.corrupt.inc();
                    continue;
                };
                if ts < q.start_ms || ts > q.end_ms {
                    continue;
                }
                let Some(key) = SeriesKey::decode(key) else {
                    self.corrupt.inc();
                    continue;
                };
                if !q
                    .matchers
                    .iter()
                    .all(|m| m.matches(key.get(&m.name).unwrap_or("")))
                {
                    continue;
                }
                let Ok(sketch) = DDSketch::from_java_bytes(body) else {
                    self.corrupt.inc();
                    continue;
                };
                merged += 1;
                if merged > self.cfg.query_max_sketches as u64 {
                    return Err(SketchLogError::TooManySketches(self.cfg.query_max_sketches));
                }
                let group = q.group_by.as_ref().map(|g| key.get(g).unwrap_or("").to_owned());
                if let Some((n, acc)) = groups.get_mut(&group) {
                    // decoded sketches share one configuration, so merging cannot fail
                    if acc.merge(&sketch).is_ok() {
                        *n += 1;
                    }
                } else {
                    if groups.len() >= self.cfg.query_max_groups {
                        return Err(SketchLogError::TooManyGroups(self.cfg.query_max_groups));
                    }
                    groups.insert(group, (1, sketch));
                }
            }
        }
        let groups = groups
            .into_iter()
            .map(|(group, (sketches, s))| QuantileGroup {
                group,
                sketches,
                count: s.count() as u64,
                sum: s.sum().unwrap_or(0.0),
                min: s.min().unwrap_or(0.0),
                max: s.max().unwrap_or(0.0),
                quantiles: q
                    .quantiles
                    .iter()
                    .filter_map(|&p| Some((p, s.quantile(p).ok()??)))
                    .collect(),
            })
            .collect();
        Ok(QuantileAnswer {
            groups,
            sketches_merged: merged,
            relative_accuracy: SKETCH_RELATIVE_ACCURACY,
        })
    }

    /// Where segment `seq` is now (it may have been renamed closed), if it still exists.
    fn current_path(&self, seq: u64) -> Option<PathBuf> {
        let inner = self.inner.lock();
        inner
            .closed
            .iter()
            .chain(inner.active.as_ref().map(|a| &a.seg))
            .find(|s| s.seq == seq)
            .map(|s| s.path.clone())
    }

    /// Writes the log's counters in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut Exposition) {
        out.counter(
            SKETCHES_WRITTEN_TOTAL,
            "StatsD timer sketches written to the sketch log.",
            self.written.get(),
        );
        out.counter(
            WRITE_ERRORS_TOTAL,
            "Failed sketch log writes (each loses one flush's sketches).",
            self.write_errors.get(),
        );
        out.counter(
            CORRUPT_TOTAL,
            "Corrupt sketch log records: tails cut at startup and records skipped by readers.",
            self.corrupt.get(),
        );
        out.gauge(
            BYTES,
            "Bytes held by the sketch log's segments.",
            self.bytes.get() as f64,
        );
    }

    /// The segment files, oldest first (for tests and diagnostics).
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        let inner = self.inner.lock();
        inner
            .closed
            .iter()
            .chain(inner.active.as_ref().map(|a| &a.seg))
            .map(|s| s.path.clone())
            .collect()
    }
}

/// `<seq>-<first>.skl` (open) or `<seq>-<first>-<last>.skl` (closed).
fn parse_name(name: &str) -> Option<(u64, i64, Option<i64>)> {
    let stem = name.strip_suffix(".skl")?;
    let mut parts = stem.splitn(3, '-');
    let seq = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let last = match parts.next() {
        Some(l) => Some(l.parse().ok()?),
        None => None,
    };
    Some((seq, first, last))
}

/// Reads one record's payload into `buf`: `None` at a clean end of file, `Err` for a short,
/// oversized or CRC-failing record, else the record's total size in bytes.
fn read_record(r: &mut impl Read, buf: &mut Vec<u8>) -> Option<Result<usize, ()>> {
    let mut head = [0u8; RECORD_HEADER];
    match read_full(r, &mut head) {
        0 => return None,
        n if n < RECORD_HEADER => return Some(Err(())),
        _ => {}
    }
    let [l0, l1, l2, l3, c0, c1, c2, c3] = head;
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    if !(10..=MAX_RECORD_BYTES).contains(&len) {
        return Some(Err(()));
    }
    buf.clear();
    buf.resize(len, 0);
    if read_full(r, buf) < len || crc32fast::hash(buf) != crc {
        return Some(Err(()));
    }
    Some(Ok(RECORD_HEADER + len))
}

/// Reads until `buf` is full or the input ends; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while let Some(rest) = buf.get_mut(n..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    n
}

/// A payload's flush time.
fn record_ts(payload: &[u8]) -> Option<i64> {
    Some(i64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// A payload's (flush time, encoded key, encoded sketch).
fn split_record(payload: &[u8]) -> Option<(i64, &[u8], &[u8])> {
    let ts = record_ts(payload)?;
    let klen = u16::from_le_bytes(payload.get(8..10)?.try_into().ok()?) as usize;
    let key = payload.get(10..10 + klen)?;
    let body = payload.get(10 + klen..)?;
    Some((ts, key, body))
}

/// Whether the file at `path` could be a segment (tests use it to find files to damage).
pub fn is_segment_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| parse_name(n).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statsd::aggregator::sketch_config;

    fn cfg() -> SketchLogConfig {
        SketchLogConfig {
            retention_ms: 3_600_000,
            max_bytes: 1 << 30,
            segment_bytes: 1 << 20,
            fsync: true,
            query_max_sketches: 1_000_000,
            query_max_groups: 100,
        }
    }

    /// Deterministic, spread-out positive values (log-uniform over about 4 decades).
    fn values(seed: u64, n: usize) -> Vec<f64> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                0.05 * 10f64.powf(4.0 * u)
            })
            .collect()
    }

    fn sketch_of(vals: &[f64]) -> DDSketch {
        let mut s = DDSketch::new(sketch_config());
        for &v in vals {
            s.add(v);
        }
        s
    }

    fn key(name: &str, host: &str) -> SeriesKey {
        SeriesKey::new(name, vec![model::Label::new("host", host)]).unwrap()
    }

    fn query(name: &str, group_by: Option<&str>, start_ms: i64, end_ms: i64) -> SketchQuery {
        SketchQuery {
            matchers: vec![Matcher::equal(model::METRIC_NAME_LABEL, name)],
            start_ms,
            end_ms,
            quantiles: vec![0.01, 0.25, 0.5, 0.9, 0.99, 0.999],
            group_by: group_by.map(str::to_owned),
        }
    }

    /// The value at rank floor(q·(n−1)) of the sorted values: what DDSketch approximates.
    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64) as usize]
    }

    fn assert_within(group: &QuantileGroup, all: &mut [f64]) {
        all.sort_by(f64::total_cmp);
        assert_eq!(group.count, all.len() as u64);
        for &(q, got) in &group.quantiles {
            let want = exact(all, q);
            let rel = (got - want).abs() / want;
            assert!(
                rel <= SKETCH_RELATIVE_ACCURACY + 1e-9,
                "q {q}: {got} vs {want} ({rel})"
            );
        }
        assert_eq!(group.min, all[0]);
        assert_eq!(group.max, all[all.len() - 1]);
    }

    /// 3 hosts × 6 flushes, each flush's per-host sketch written to the log.
    fn fill(log: &SketchLog) -> Vec<(String, Vec<f64>)> {
        let mut per_host: Vec<(String, Vec<f64>)> = Vec::new();
        for host in ["a", "b", "c"] {
            per_host.push((host.to_owned(), Vec::new()));
        }
        for flush in 0..6i64 {
            let mut batch = Vec::new();
            for (h, (host, all)) in per_host.iter_mut().enumerate() {
                // hosts differ in scale, so averaging per-host percentiles would be wrong
                let vals: Vec<f64> = values((flush * 10 + h as i64) as u64 + 1, 500 + 300 * h)
                    .into_iter()
                    .map(|v| v * (1 + 5 * h) as f64)
                    .collect();
                batch.push((key("api.latency", host), sketch_of(&vals)));
                all.extend(vals);
            }
            // another timer that must not be merged in
            batch.push((key("db.latency", "a"), sketch_of(&[1e6])));
            log.append(1_000_000 + flush * 10_000, &batch);
        }
        per_host
    }

    #[test]
    fn merging_flushes_and_hosts_matches_one_sketch_over_all_values() {
        let dir = tempfile::tempdir().unwrap();
        let log = SketchLog::open(dir.path(), cfg(), 1_000_000).unwrap();
        let per_host = fill(&log);
        let ans = log.query(&query("api.latency", None, 0, i64::MAX)).unwrap();
        assert_eq!(ans.groups.len(), 1);
        assert_eq!(ans.sketches_merged, 18);
        let mut all: Vec<f64> = per_host.iter().flat_map(|(_, v)| v.clone()).collect();
        let one = sketch_of(&all);
        let g = &ans.groups[0];
        assert_within(g, &mut all);
        // the merge answers what one sketch over every value answers
        for &(q, got) in &g.quantiles {
            let single = one.quantile(q).unwrap().unwrap();
            assert!((got - single).abs() <= single * 1e-9, "q {q}: {got} vs {single}");
        }
        assert!((g.sum - all.iter().sum::<f64>()).abs() < 1e-6 * g.sum);

        // per host
        let ans = log
            .query(&query("api.latency", Some("host"), 0, i64::MAX))
            .unwrap();
        assert_eq!(ans.groups.len(), 3);
        for (g, (host, vals)) in ans.groups.iter().zip(&per_host) {
            assert_eq!(g.group.as_deref(), Some(host.as_str()));
            assert_eq!(g.sketches, 6);
            assert_within(g, &mut vals.clone());
        }

        // a time range selects flushes (inclusive bounds)
        let ans = log
            .query(&query("api.latency", None, 1_010_000, 1_020_000))
            .unwrap();
        assert_eq!(ans.sketches_merged, 6);

        // a regex over hosts
        let mut q = query("api.latency", None, 0, i64::MAX);
        q.matchers
            .push(Matcher::new(model::MatchOp::Regex, "host", "a|c").unwrap());
        let ans = log.query(&q).unwrap();
        assert_eq!(ans.sketches_merged, 12);
        let mut ac: Vec<f64> = per_host
            .iter()
            .filter(|(h, _)| h != "b")
            .flat_map(|(_, v)| v.clone())
            .collect();
        assert_within(&ans.groups[0], &mut ac);

        // nothing selected: no groups
        let ans = log.query(&query("nope", None, 0, i64::MAX)).unwrap();
        assert!(ans.groups.is_empty());
    }

    #[test]
    fn restart_keeps_the_sketches() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let log = SketchLog::open(dir.path(), cfg(), 1_000_000).unwrap();
            fill(&log);
            let a = log
                .query(&query("api.latency", Some("host"), 0, i64::MAX))
                .unwrap();
            log.close();
            a
        };
        let log = SketchLog::open(dir.path(), cfg(), 1_060_000).unwrap();
        assert_eq!(
            log.query(&query("api.latency", Some("host"), 0, i64::MAX))
                .unwrap(),
            before
        );
        // and without a clean close (a crash): the open segment is recovered
        log.append(1_070_000, &[(key("api.latency", "a"), sketch_of(&[1.0]))]);
        drop(log);
        let log = SketchLog::open(dir.path(), cfg(), 1_080_000).unwrap();
        let after = log.query(&query("api.latency", None, 0, i64::MAX)).unwrap();
        assert_eq!(after.sketches_merged, 19);
        assert_eq!(log.corrupt.get(), 0);
    }

    #[test]
    fn a_corrupt_or_torn_tail_is_cut_not_fatal() {
        type Damage = fn(&Path);
        let cases: &[(&str, Damage)] = &[
            ("garbage appended", |p| {
                let mut f = OpenOptions::new().append(true).open(p).unwrap();
                f.write_all(b"\xde\xad\xbe\xef not a record at all").unwrap();
            }),
            ("last record torn", |p| {
                let len = std::fs::metadata(p).unwrap().len();
                OpenOptions::new()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(len - 7)
                    .unwrap();
            }),
            ("last record's bytes flipped", |p| {
                let mut bytes = std::fs::read(p).unwrap();
                let n = bytes.len();
                bytes[n - 3] ^= 0xff;
                std::fs::write(p, bytes).unwrap();
            }),
            ("huge length", |p| {
                let mut f = OpenOptions::new().append(true).open(p).unwrap();
                f.write_all(&u32::MAX.to_le_bytes()).unwrap();
                f.write_all(&[0; 12]).unwrap();
            }),
        ];
        for (what, damage) in cases {
            let dir = tempfile::tempdir().unwrap();
            let log = SketchLog::open(dir.path(), cfg(), 0).unwrap();
            for i in 0..5 {
                log.append(1000 * i, &[(key("t", "a"), sketch_of(&[i as f64 + 1.0]))]);
            }
            let paths = log.segment_paths();
            drop(log); // a crash: the segment stays open
            assert_eq!(paths.len(), 1);
            damage(&paths[0]);
            let log = SketchLog::open(dir.path(), cfg(), 5000).unwrap();
            let ans = log.query(&query("t", None, 0, i64::MAX)).unwrap();
            let torn = what.starts_with("last record");
            assert_eq!(ans.sketches_merged, if torn { 4 } else { 5 }, "{what}");
            assert_eq!(log.corrupt.get(), 1, "{what}");
            // the log goes on: new sketches are written and read after the cut
            log.append(9000, &[(key("t", "a"), sketch_of(&[7.0]))]);
            let ans = log.query(&query("t", None, 0, i64::MAX)).unwrap();
            assert_eq!(ans.sketches_merged, if torn { 5 } else { 6 }, "{what}");
        }
    }

    #[test]
    fn a_file_that_is_not_a_segment_is_emptied_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0000000003-5.skl"), b"junk").unwrap();
        std::fs::write(dir.path().join("unrelated.txt"), b"kept").unwrap();
        let log = SketchLog::open(dir.path(), cfg(), 0).unwrap();
        assert!(log.segment_paths().is_empty());
        assert!(dir.path().join("unrelated.txt").exists());
        log.append(10, &[(key("t", "a"), sketch_of(&[1.0]))]);
        // numbering goes on after the files seen
        assert!(
            log.segment_paths()[0]
                .to_string_lossy()
                .ends_with("0000000004-10.skl")
        );
    }

    #[test]
    fn a_segment_of_another_format_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("0000000001-5.skl");
        std::fs::write(&other, b"RSKLOG99 future records").unwrap();
        let log = SketchLog::open(dir.path(), cfg(), 0).unwrap();
        assert!(log.segment_paths().is_empty());
        assert_eq!(std::fs::read(&other).unwrap(), b"RSKLOG99 future records");
        log.append(10, &[(key("t", "a"), sketch_of(&[1.0]))]);
        assert_eq!(
            log.query(&query("t", None, 0, i64::MAX)).unwrap().sketches_merged,
            1
        );
    }

    #[test]
    fn retention_and_the_size_bound_delete_whole_old_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg();
        c.segment_bytes = 4096;
        c.retention_ms = 100_000;
        let log = SketchLog::open(dir.path(), c.clone(), 0).unwrap();
        let big: Vec<(SeriesKey, DDSketch)> = (0..20)
            .map(|i| (key("t", &format!("h{i}")), sketch_of(&values(i, 200))))
            .collect();
        for i in 0..20 {
            log.append(i * 10_000, &big);
        }
        // each flush's records exceed a segment: one segment per flush
        let segs = log.segment_paths();
        assert!(segs.len() <= 12, "{}", segs.len());
        let ans = log.query(&query("t", None, 0, i64::MAX)).unwrap();
        // only flushes newer than now - retention (or in a segment reaching it) remain
        assert!(
            ans.sketches_merged >= 10 * 20 && ans.sketches_merged <= 12 * 20,
            "{}",
            ans.sketches_merged
        );
        drop(log);

        let mut c2 = c;
        c2.retention_ms = i64::MAX;
        c2.max_bytes = 3 * 4096;
        let log = SketchLog::open(dir.path(), c2, 200_000).unwrap();
        log.append(300_000, &big);
        let total: u64 = log
            .segment_paths()
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        let one_flush = std::fs::metadata(log.segment_paths().last().unwrap())
            .unwrap()
            .len();
        assert!(total <= 3 * 4096 + one_flush, "{total}");
        assert_eq!(log.bytes.get() as u64, total);
    }

    #[test]
    fn queries_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg();
        c.query_max_sketches = 10;
        c.query_max_groups = 2;
        let log = SketchLog::open(dir.path(), c, 0).unwrap();
        fill(&log);
        assert!(matches!(
            log.query(&query("api.latency", None, 0, i64::MAX)),
            Err(SketchLogError::TooManySketches(10))
        ));
        assert!(matches!(
            log.query(&query("api.latency", Some("host"), 0, 1_000_000)),
            Err(SketchLogError::TooManyGroups(2))
        ));
        let mut q = query("api.latency", None, 0, 0);
        q.quantiles = vec![1.5];
        assert!(matches!(log.query(&q), Err(SketchLogError::BadQuantile(_))));
    }

    #[test]
    fn a_segment_closed_during_a_query_is_found_under_its_new_name() {
        let dir = tempfile::tempdir().unwrap();
        let log = SketchLog::open(dir.path(), cfg(), 0).unwrap();
        log.append(10, &[(key("t", "a"), sketch_of(&[1.0]))]);
        let open = log.segment_paths()[0].clone();
        log.close();
        assert!(!open.exists());
        let seq = parse_name(open.file_name().unwrap().to_str().unwrap()).unwrap().0;
        let now = log.current_path(seq).unwrap();
        assert!(now.to_string_lossy().ends_with("-10-10.skl"), "{}", now.display());
        assert_eq!(log.query(&query("t", None, 0, 100)).unwrap().sketches_merged, 1);
    }

    #[test]
    fn names_parse() {
        let cases = [
            ("0000000001-5.skl", Some((1, 5, None))),
            ("0000000002-5-9.skl", Some((2, 5, Some(9)))),
            ("0000000002-5-9.txt", None),
            ("x-5.skl", None),
            ("1-5-x.skl", None),
        ];
        for (name, want) in cases {
            assert_eq!(parse_name(name), want, "{name}");
        }
    }
}
