//! The write-ahead log: every accepted sample and every series creation is appended here
//! before the call that made it returns, and a single committer thread writes and fsyncs the
//! pending bytes (group commit). [`Wal::wait_durable`] returns once an fsync covers a
//! sequence number, so a caller that needs durability is acknowledged only after the fsync
//! that covers its batch.
//!
//! Group commit: a waiter raises the `requested` watermark; the committer starts a commit as
//! soon as `requested` is above `taken` (the last sequence number it swapped out of the
//! pending buffer), taking everything pending at that moment. While that write + fsync runs,
//! appends go on into the other buffer (the append lock is released once the segment lock is
//! held) and new waiters raise `requested` again, so the next commit starts right after and
//! covers them all. A waiter whose sequence number is already in flight does not ask for
//! another fsync. Without waiters the committer commits on the [`FsyncPolicy`] interval, when
//! `flush_bytes` are pending, or (with `EveryBatch`) after every append.
//!
//! On-disk format (`<dir>/wal/<index:020>.seg`, indexes ascending, never reused):
//! - segment header: magic `RWAL` + format version `u32` LE (currently 1), 8 bytes
//! - records: `[len u32 LE][crc32 u32 LE][type u8][payload: len bytes]`; the CRC (IEEE,
//!   `crc32fast`) covers the type byte and the payload
//! - type 1, series creation: `id varint` + the canonical key bytes (`SeriesKey::encode`)
//! - type 2, sample batch: `count varint`, then per sample `id varint`,
//!   `ts - previous ts (zigzag varint, previous = 0 for the first)`, `value bits u64 LE`
//!
//! Invariants and recovery rules:
//! - bytes reach a segment only through the committer (or a checkpoint cut), in sequence
//!   order, under the `seg` lock taken while the append lock is held to swap the pending
//!   buffer out (lock order: `writer` → `seg` → `durable`; `ctl` is taken alone or last)
//! - `durable.seq` only grows, and only after the fsync that covers it returned
//! - a short or checksum-failing record in the LAST segment is a torn tail from a crash: the
//!   segment is truncated there and replay keeps everything before it (a bad record in the
//!   middle of the last segment also truncates the rest of it: nothing after a torn write can
//!   be trusted to be ordered)
//! - a bad record in any other segment is [`DbError::WalCorrupt`]: the engine does not guess
//! - once an fsync fails the WAL is failed for good (fsync errors are not retryable)
//! - a new segment is started on every open, so a replayed segment is never appended to

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use model::telemetry::{Counter, Histogram};
use parking_lot::{Condvar, Mutex};

use crate::error::DbError;
use crate::options::FsyncPolicy;

/// Segment file magic.
pub const SEGMENT_MAGIC: &[u8; 4] = b"RWAL";
/// Segment format version written by this build.
pub const SEGMENT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8;
const RECORD_HEADER_LEN: usize = 9;
/// The largest record payload replay accepts; a bigger length is treated as corruption.
pub const MAX_RECORD_BYTES: usize = 256 << 20;

/// Record type: series creation.
pub const REC_SERIES: u8 = 1;
/// Record type: sample batch.
pub const REC_SAMPLES: u8 = 2;

/// Appends an unsigned LEB128 varint.
#[inline]
pub(crate) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads an unsigned LEB128 varint at `*pos`; `None` when truncated or over-long.
#[inline]
pub(crate) fn get_uvarint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

#[inline]
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Starts a record in `out`; returns the offset to pass to [`end_record`].
#[inline]
pub(crate) fn begin_record(out: &mut Vec<u8>, typ: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.push(typ);
    start
}

/// Fills in the length and checksum of the record started at `start`.
#[inline]
pub(crate) fn end_record(out: &mut [u8], start: usize) {
    let payload_len = out.len() - start - RECORD_HEADER_LEN;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What [`replay`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Segments read.
    pub segments: usize,
    /// Records handed to the callback.
    pub records: u64,
    /// Bytes cut off the torn tail of the last segment.
    pub truncated_bytes: u64,
    /// Highest segment index seen.
    pub last_index: Option<u64>,
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:020}.seg"))
}

/// The WAL segments in `dir`, ascending by index.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, DbError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(DbError::io(format!("list {}", dir.display())))?;
    for e in entries {
        let e = e.map_err(DbError::io(format!("list {}", dir.display())))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if let Ok(i) = stem.parse::<u64>() {
            out.push((i, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every record of every segment in order, calling `on_record(type, payload)`.
/// Truncates a torn tail of the last segment (see the module doc).
pub(crate) fn replay(
    dir: &Path,
    mut on_record: impl FnMut(u8, &[u8]) -> Result<(), DbError>,
) -> Result<ReplayReport, DbError> {
    let segments = list_segments(dir)?;
    let mut report = ReplayReport::default();
    let n = segments.len();
    for (i, (index, path)) in segments.into_iter().enumerate() {
        let last = i + 1 == n;
        report.segments += 1;
        report.last_index = Some(index);
        let data = fs::read(&path).map_err(DbError::io(format!("read {}", path.display())))?;
        let corrupt = |offset: usize, reason: &str| DbError::WalCorrupt {
            path: path.clone(),
            offset: offset as u64,
            reason: reason.to_owned(),
        };
        if data.len() < HEADER_LEN {
            if last {
                // a crash right after the segment was created: it holds nothing, and it
                // must not stay, or it would sit before the next process's first segment
                fs::remove_file(&path).map_err(DbError::io(format!("remove {}", path.display())))?;
                sync_dir(dir)?;
                report.truncated_bytes += data.len() as u64;
                continue;
            }
            if data.is_empty() {
                // left by an older version that truncated such a segment instead of removing it
                tracing::warn!(segment = %path.display(), "Skipping an empty WAL segment left by a crash.");
                continue;
            }
            return Err(corrupt(0, "short segment header"));
        }
        if &data[..4] != SEGMENT_MAGIC {
            return Err(corrupt(0, "bad segment magic"));
        }
        let version = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
        if version != SEGMENT_VERSION {
            return Err(corrupt(4, &format!("unsupported segment version {version}")));
        }
        let mut pos = HEADER_LEN;
        while pos < data.len() {
            let bad = match read_record(&data, pos) {
                Ok((typ, payload, next)) => {
                    if typ != REC_SERIES && typ != REC_SAMPLES {
                        return Err(corrupt(pos, &format!("unknown record type {typ}")));
                    }
                    on_record(typ, payload)?;
                    report.records += 1;
                    pos = next;
                    continue;
                }
                Err(reason) => reason,
            };
            if !last {
                return Err(corrupt(pos, bad));
            }
            tracing::warn!(
                segment = %path.display(),
                offset = pos,
                reason = bad,
                "Truncating the torn tail of the last WAL segment."
            );
            report.truncated_bytes += (data.len() - pos) as u64;
            truncate(&path, pos as u64)?;
            break;
        }
    }
    Ok(report)
}

fn read_record(data: &[u8], pos: usize) -> Result<(u8, &[u8], usize), &'static str> {
    let header = data
        .get(pos..pos + RECORD_HEADER_LEN)
        .ok_or("short record header")?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_RECORD_BYTES {
        return Err("record length out of range");
    }
    let end = pos + RECORD_HEADER_LEN + len;
    let body = data.get(pos + 8..end).ok_or("short record")?;
    if crc32fast::hash(body) != crc {
        return Err("record checksum mismatch");
    }
    Ok((header[8], &body[1..], end))
}

fn truncate(path: &Path, len: u64) -> Result<(), DbError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(DbError::io(format!("open {}", path.display())))?;
    f.set_len(len)
        .and_then(|()| f.sync_all())
        .map_err(DbError::io(format!("truncate {}", path.display())))
}

/// fsyncs a directory so that created, renamed or removed entries are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), DbError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(DbError::io(format!("fsync directory {}", dir.display())))
}

/// Bytes appended but not yet handed to the committer, plus the sequence counter.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Framed records waiting for the committer.
    pub buf: Vec<u8>,
    /// The sequence number of the last record batch appended.
    pub seq: u64,
    /// Scratch of `Db::append`: the batch's accepted sample indexes grouped by head shard
    /// (kept here so that the append path does not allocate per batch).
    pub order: Vec<usize>,
}

#[derive(Debug)]
struct Segment {
    file: File,
    index: u64,
    size: u64,
}

/// The committer side, under the `seg` lock.
#[derive(Debug, Default)]
struct Committing {
    /// The open segment; `None` once stopped.
    seg: Option<Segment>,
    /// The buffer being written; swapped with [`Pending::buf`] (then cleared), so neither
    /// side allocates in the steady state.
    buf: Vec<u8>,
}

#[derive(Debug, Default)]
struct Durable {
    seq: u64,
    failed: Option<String>,
    closed: bool,
}

#[derive(Debug, Default)]
struct Ctl {
    /// Commit now (EveryBatch, `flush_bytes` reached, backpressure).
    kick: bool,
    stop: bool,
    /// The highest sequence number a waiter asked to be made durable.
    requested: u64,
    /// The highest sequence number swapped out of the pending buffer by a commit.
    taken: u64,
}

/// Self-telemetry of the WAL.
#[derive(Debug, Default)]
pub(crate) struct WalMetrics {
    pub fsync_seconds: Histogram,
    pub fsyncs: Counter,
    pub bytes_written: Counter,
    pub segments_created: Counter,
    pub append_lock_wait: Histogram,
    pub pending_bytes: AtomicU64,
}

/// Limits of the WAL.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalOptions {
    pub fsync: FsyncPolicy,
    pub segment_bytes: u64,
    pub flush_bytes: u64,
    pub max_backlog_bytes: u64,
}

/// The live WAL: pending buffer, current segment and the committer's state.
#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    opts: WalOptions,
    /// The append side; `Db::append` holds this for the whole batch so that WAL order equals
    /// head apply order.
    pub writer: Mutex<Pending>,
    /// [`Pending::seq`] as of the last [`Wal::after_append`], so that waiters need not take
    /// the append lock.
    appended_seq: AtomicU64,
    drained: Condvar,
    seg: Mutex<Committing>,
    durable: Mutex<Durable>,
    durable_cv: Condvar,
    ctl: Mutex<Ctl>,
    ctl_cv: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub metrics: WalMetrics,
}

impl Wal {
    /// Opens a new segment after `last_index` and starts the committer thread.
    pub fn start(dir: &Path, last_index: Option<u64>, opts: WalOptions) -> Result<Arc<Wal>, DbError> {
        let index = last_index.map_or(0, |i| i + 1);
        let wal = Arc::new(Wal {
            dir: dir.to_owned(),
            opts,
            writer: Mutex::new(Pending::default()),
            appended_seq: AtomicU64::new(0),
            drained: Condvar::new(),
            seg: Mutex::new(Committing::default()),
            durable: Mutex::new(Durable::default()),
            durable_cv: Condvar::new(),
            ctl: Mutex::new(Ctl::default()),
            ctl_cv: Condvar::new(),
            thread: Mutex::new(None),
            metrics: WalMetrics::default(),
        });
        let seg = wal.create_segment(index)?;
        wal.seg.lock().seg = Some(seg);
        let w = Arc::clone(&wal);
        let handle = std::thread::Builder::new()
            .name("tsdb-wal-commit".into())
            .spawn(move || w.run_committer())
            .map_err(DbError::io("spawn the wal committer"))?;
        *wal.thread.lock() = Some(handle);
        Ok(wal)
    }

    fn create_segment(&self, index: u64) -> Result<Segment, DbError> {
        let path = segment_path(&self.dir, index);
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(DbError::io(format!("create {}", path.display())))?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(SEGMENT_MAGIC);
        header.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
        file.write_all(&header)
            .and_then(|()| file.sync_all())
            .map_err(DbError::io(format!("write {}", path.display())))?;
        sync_dir(&self.dir)?;
        self.metrics.segments_created.inc();
        Ok(Segment {
            file,
            index,
            size: HEADER_LEN as u64,
        })
    }

    /// Blocks while the pending buffer is over the backlog limit (backpressure), then returns
    /// the append guard. Records the lock wait.
    pub fn lock_for_append(&self) -> parking_lot::MutexGuard<'_, Pending> {
        self.lock_observed(&self.metrics.append_lock_wait)
    }

    /// [`Wal::lock_for_append`], recording the wait in `h` instead (a seal's waits are
    /// told apart from appends').
    pub fn lock_observed(&self, h: &Histogram) -> parking_lot::MutexGuard<'_, Pending> {
        let t = Instant::now();
        let mut w = self.writer.lock();
        while w.buf.len() as u64 > self.opts.max_backlog_bytes
            && !self.is_stopped()
            && self.failure().is_none()
        {
            self.kick();
            self.drained.wait_for(&mut w, Duration::from_millis(50));
        }
        h.observe(t.elapsed());
        w
    }

    /// Called by the append path after adding records, still holding the guard.
    pub fn after_append(&self, w: &Pending) {
        self.metrics
            .pending_bytes
            .store(w.buf.len() as u64, Ordering::Relaxed);
        self.appended_seq.fetch_max(w.seq, Ordering::Release);
        if self.opts.fsync == FsyncPolicy::EveryBatch || w.buf.len() as u64 >= self.opts.flush_bytes {
            self.kick();
        }
    }

    fn is_stopped(&self) -> bool {
        self.ctl.lock().stop
    }

    fn kick(&self) {
        let mut c = self.ctl.lock();
        if !c.kick {
            c.kick = true;
            self.ctl_cv.notify_one();
        }
    }

    /// Asks the committer for a commit covering `seq`, unless one already in flight does.
    fn request(&self, seq: u64) {
        let mut c = self.ctl.lock();
        if seq > c.requested {
            c.requested = seq;
            if seq > c.taken {
                self.ctl_cv.notify_one();
            }
        }
    }

    fn run_committer(&self) {
        loop {
            {
                let mut c = self.ctl.lock();
                // the interval bounds how long data nobody waits for stays un-fsynced
                let deadline = match self.opts.fsync {
                    FsyncPolicy::Interval(d) => Instant::now().checked_add(d),
                    FsyncPolicy::EveryBatch => None,
                };
                while !c.kick && !c.stop && c.requested <= c.taken {
                    match deadline {
                        Some(at) => {
                            if self.ctl_cv.wait_until(&mut c, at).timed_out() {
                                break;
                            }
                        }
                        None => self.ctl_cv.wait(&mut c),
                    }
                }
                c.kick = false;
                if c.stop {
                    return;
                }
            }
            // errors are recorded in `durable.failed` and reported to every waiter
            let _ = self.commit_once(false);
        }
    }

    /// Writes and fsyncs everything pending, letting appends go on during the write and the
    /// fsync.
    fn commit_once(&self, rotate: bool) -> Result<u64, DbError> {
        let mut w = self.writer.lock();
        let (seg, seq) = self.take_pending(&mut w)?;
        drop(w);
        self.finish_commit(seg, seq, rotate)
    }

    /// Swaps the pending buffer out under the append guard `w` and returns the segment guard
    /// (taken before `w` can be released, so commits reach the segment in sequence order)
    /// with the sequence number the swapped bytes end at.
    fn take_pending(
        &self,
        w: &mut Pending,
    ) -> Result<(parking_lot::MutexGuard<'_, Committing>, u64), DbError> {
        if let Some(f) = &self.durable.lock().failed {
            return Err(DbError::WalFailed(f.clone()));
        }
        let mut seg = self.seg.lock();
        debug_assert!(seg.buf.is_empty());
        std::mem::swap(&mut w.buf, &mut seg.buf);
        let seq = w.seq;
        {
            let mut c = self.ctl.lock();
            c.taken = c.taken.max(seq);
        }
        self.metrics.pending_bytes.store(0, Ordering::Relaxed);
        self.drained.notify_all();
        Ok((seg, seq))
    }

    /// Writes and fsyncs the swapped-out bytes, then publishes the durable sequence number
    /// (or the failure) to the waiters.
    fn finish_commit(
        &self,
        mut seg: parking_lot::MutexGuard<'_, Committing>,
        seq: u64,
        rotate: bool,
    ) -> Result<u64, DbError> {
        let Committing { seg: segment, buf } = &mut *seg;
        let result = self.write_and_sync(segment, buf, seq, rotate);
        buf.clear();
        drop(seg);
        match result {
            Ok(index) => {
                let mut d = self.durable.lock();
                d.seq = d.seq.max(seq);
                self.durable_cv.notify_all();
                Ok(index)
            }
            Err(e) => {
                tracing::error!(error = %e, "The WAL failed; acknowledged durability is no longer possible.");
                let mut d = self.durable.lock();
                d.failed = Some(e.to_string());
                self.durable_cv.notify_all();
                Err(e)
            }
        }
    }

    fn write_and_sync(
        &self,
        seg: &mut Option<Segment>,
        data: &[u8],
        seq: u64,
        rotate: bool,
    ) -> Result<u64, DbError> {
        let Some(s) = seg.as_mut() else {
            return Err(DbError::Closed);
        };
        if !data.is_empty() {
            s.file
                .write_all(data)
                .map_err(DbError::io(format!("write wal segment {}", s.index)))?;
            s.size += data.len() as u64;
            self.metrics.bytes_written.add(data.len() as u64);
        }
        let need_sync = !data.is_empty() || self.durable.lock().seq < seq;
        if need_sync {
            let t = Instant::now();
            s.file
                .sync_data()
                .map_err(DbError::io(format!("fsync wal segment {}", s.index)))?;
            self.metrics.fsync_seconds.observe(t.elapsed());
            self.metrics.fsyncs.inc();
        }
        if rotate || s.size >= self.opts.segment_bytes {
            let next = self.create_segment(s.index + 1)?;
            *s = next;
        }
        Ok(s.index)
    }

    /// Makes everything appended so far durable and starts a new segment, with the append
    /// guard held by the caller (so nothing can slip in between). Returns the new segment's
    /// index: all older segments hold only data the caller is about to checkpoint.
    pub fn cut(&self, w: &mut Pending) -> Result<u64, DbError> {
        let (seg, seq) = self.take_pending(w)?;
        self.finish_commit(seg, seq, true)
    }

    /// Deletes segments older than `index` (their content is checkpointed elsewhere).
    pub fn remove_before(&self, index: u64) -> Result<usize, DbError> {
        let mut removed = 0;
        for (i, path) in list_segments(&self.dir)? {
            if i < index {
                fs::remove_file(&path).map_err(DbError::io(format!("remove {}", path.display())))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Blocks until an fsync covers `seq` (values above the last assigned sequence are
    /// clamped to it). Asks for that fsync at once: the wait lasts one or two fsyncs (the one
    /// in flight, if it started before `seq` was appended, then the next), never the interval.
    pub fn wait_durable(&self, seq: u64) -> Result<(), DbError> {
        let seq = if seq <= self.appended_seq.load(Ordering::Acquire) {
            seq
        } else {
            seq.min(self.writer.lock().seq)
        };
        if self.durable.lock().seq < seq {
            self.request(seq);
        }
        let mut d = self.durable.lock();
        loop {
            if let Some(f) = &d.failed {
                return Err(DbError::WalFailed(f.clone()));
            }
            if d.seq >= seq {
                return Ok(());
            }
            if d.closed {
                return Err(DbError::Closed);
            }
            self.durable_cv.wait(&mut d);
        }
    }

    /// The failure message, if the WAL has failed.
    pub fn failure(&self) -> Option<String> {
        self.durable.lock().failed.clone()
    }

    /// The sequence number covered by the last fsync.
    pub fn durable_seq(&self) -> u64 {
        self.durable.lock().seq
    }

    /// Stops the committer. With `flush`, first writes and fsyncs everything pending.
    pub fn stop(&self, flush: bool) -> Result<(), DbError> {
        let result = if flush {
            self.commit_once(false).map(|_| ())
        } else {
            Ok(())
        };
        {
            let mut c = self.ctl.lock();
            c.stop = true;
            self.ctl_cv.notify_all();
        }
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
        if !flush {
            // a crash: drop what was never handed to the OS
            self.writer.lock().buf.clear();
        }
        self.seg.lock().seg = None;
        let mut d = self.durable.lock();
        d.closed = true;
        self.durable_cv.notify_all();
        self.drained.notify_all();
        result
    }

    /// Pending bytes not yet handed to the committer.
    pub fn pending_bytes(&self) -> u64 {
        self.metrics.pending_bytes.load(Ordering::Relaxed)
    }
}
