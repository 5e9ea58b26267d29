//! [`EventStore`] over N SQLite files ("shards"), each one the single-file store described
//! below, so N writers commit in parallel (SQLite allows one writer per file).
//!
//! Layout (fixed at creation, [`SqliteConfig::shards`], 1..=[`MAX_SHARDS`], default 2):
//! shard 0 is [`SqliteConfig::path`] (`events.db`), shard k is `events.k.db` beside it
//! ([`shard_path`]). Every file records `(shards, shard)` in `store_layout` (schema 5); the
//! count recorded in shard 0 wins over the config on every later open. A file from before
//! sharding (schema 1..=4) opens as a 1-shard store, untouched but for the migration. A
//! missing shard file, or one recording another layout, is [`StoreError::Layout`], never
//! silently recreated. A new store creates shards 1.. first and writes shard 0's layout row
//! last, so a crash during creation leaves files the next open completes; a shard file that
//! holds events beside a new `events.db` is refused (its shard 0 went missing).
//!
//! Routing: an event lives in shard [`shard_of`]`(id, N)` = FNV-1a 64 of the id's UTF-8
//! bytes mod N (fixed; a test pins values), so idempotency stays each shard's `UNIQUE(id)`.
//! - **Inserts** split a batch by shard keeping each event's position, insert the sub-batches
//!   in parallel (the first on the caller's thread, the others on scoped threads), one
//!   transaction per shard, and merge the results back into batch order. A batch is
//!   therefore not atomic across shards (see [`EventStore::insert_batch`]).
//! - **Pages** are ordered by `(time, shard, seq)` descending; the cursor is
//!   `v3.<time>.<shard>.<seq>`. Each shard is asked, in parallel, for `limit + 1` rows below
//!   its local bound derived from the cursor (its own shard: `(time, seq) < (t, s)`; a lower
//!   shard: `time <= t`; a higher one: `time < t`), and the rows are merged and cut at
//!   `limit`. `v2.` cursors of the single-file store are [`StoreError::InvalidCursor`].
//! - **Annotations** are ordered `(time, shard, seq)` ascending (the reverse of pages): each
//!   shard gives `max + 1`, merged and cut; truncated when more than `max` matched in all.
//! - **count** sums, **retention** runs per shard and sums, **close** closes every shard.
//!
//! Per shard — connections: one writer behind a mutex (SQLite allows one writer at a time
//! anyway) and a fixed pool of [`SqliteConfig::readers`] read-only connections; the file is
//! in WAL mode, so readers never block the writer or each other. A caller that finds every
//! reader busy waits for one; nothing opens connections on demand. Each shard has its own
//! background checkpointer.
//!
//! On-disk format of each shard (schema version 5, which only added `store_layout`; kept
//! in `PRAGMA user_version` by `rusqlite_migration`;
//! migrations only ever append, never edit a shipped step):
//!
//! ```sql
//! events(seq INTEGER PRIMARY KEY,        -- insertion order; the full-text rowid
//!        id TEXT NOT NULL UNIQUE,        -- the idempotency key
//!        time INTEGER NOT NULL,          -- UTC ms
//!        received_at INTEGER NOT NULL,   -- UTC ms
//!        source TEXT NOT NULL, kind TEXT NOT NULL,
//!        subject TEXT, actor TEXT, host TEXT, service TEXT,   -- NULL when absent
//!        labels TEXT NOT NULL,           -- JSON object, names sorted
//!        severity INTEGER NOT NULL,      -- 0 info, 1 warning, 2 critical
//!        summary TEXT NOT NULL,
//!        payload TEXT)                   -- the payload's JSON exactly as sent, or NULL
//! indexes: (time), (host, time) WHERE host IS NOT NULL,
//!          (service, time) WHERE service IS NOT NULL
//!          (each entry also carries the rowid `seq`, so each is ordered by (…, time, seq))
//! events_fts: contentless FTS5 (contentless_delete=1) over
//!             kind, subject, summary, labels ("name=value ..."), payload (its string values),
//!             host, service (so a search with a host or service filter is narrowed inside
//!             the full-text index; the user's words match only the first five columns),
//!             rowid = events.seq
//! ```
//!
//! Version 2 dropped version 1's `(kind, time)` index: only the rare-kind plan used it (SQLite
//! itself preferred `(time, id)` for kind-filtered annotations), and that plan now finds its
//! rows through the full-text `kind` column. With event times spread over the last minutes,
//! every time-ordered index costs about one dirty page per event at each commit; dropping it
//! cut the bytes written per event by a fifth. Version 3 made the host and service indexes
//! partial: only `host = ?` / `service = ?` filters use them, so an event without a host or
//! service need not cost an index entry (and its dirty page). A binary refuses a file from a
//! later version than it knows (`rusqlite_migration`: database too far ahead).
//!
//! Version 4 dropped the id text from the three time-ordered indexes: pages are ordered by
//! `(time, seq)` instead of `(time, id)` (ties newest-stored first) and cursors carry the
//! `seq`, which every index entry holds anyway as its rowid. Ids are often 36-character
//! UUIDs, so this shrank each entry to about a third and cut the bytes written per event by
//! about a quarter (`bench/scenarios/events_ingest.py --ids uuid4`). `seq` is an
//! `INTEGER PRIMARY KEY` without `AUTOINCREMENT`: if retention deletes the newest-stored row,
//! its number may be handed out again. Cursors stay stable regardless: an event's `(time,
//! seq)` never changes while it is stored, so keyset pages still show every stored event at
//! most once and skip none; a reused number only ever belongs to an event stored after the
//! old one was deleted. (`AUTOINCREMENT` would cost a `sqlite_sequence` write per insert.)
//!
//! An event and its full-text row are written in the same transaction, so the index never
//! disagrees with the table. The full-text table is contentless: it stores no copy of the
//! text, only the index, and retention deletes from it by rowid.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode, OpenFlags, Row, params_from_iter};
use rusqlite_migration::{M, Migrations};
use serde_json::value::RawValue;

use model::event::{Event, EventId, Severity, is_label_name};
use model::{MatchOp, Matcher, Timestamp};

use crate::fts::{full_expression, labels_text, match_expression, payload_text};
use crate::{
    Annotation, AnnotationQuery, Annotations, EventQuery, EventStore, ItemResult, Page, QueryLimits,
    Retention, RetentionReport, StoreError,
};

const MIGRATIONS: &[M<'static>] = &[
    M::up(
        "CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        time INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        source TEXT NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT,
        actor TEXT,
        host TEXT,
        service TEXT,
        labels TEXT NOT NULL,
        severity INTEGER NOT NULL,
        summary TEXT NOT NULL,
        payload TEXT
    );
    CREATE INDEX events_time ON events(time, id);
    CREATE INDEX events_host_time ON events(host, time, id);
    CREATE INDEX events_service_time ON events(service, time, id);
    CREATE INDEX events_kind_time ON events(kind, time);
    CREATE VIRTUAL TABLE events_fts USING fts5(
        kind, subject, summary, labels, payload, host, service,
        content='', contentless_delete=1
    );",
    ),
    M::up("DROP INDEX events_kind_time;"),
    M::up(
        "DROP INDEX events_host_time;
        CREATE INDEX events_host_time ON events(host, time, id) WHERE host IS NOT NULL;
        DROP INDEX events_service_time;
        CREATE INDEX events_service_time ON events(service, time, id) WHERE service IS NOT NULL;",
    ),
    M::up(
        "DROP INDEX events_time;
        CREATE INDEX events_time ON events(time);
        DROP INDEX events_host_time;
        CREATE INDEX events_host_time ON events(host, time) WHERE host IS NOT NULL;
        DROP INDEX events_service_time;
        CREATE INDEX events_service_time ON events(service, time) WHERE service IS NOT NULL;",
    ),
    M::up(
        "CREATE TABLE store_layout (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        shards INTEGER NOT NULL,
        shard INTEGER NOT NULL
    );",
    ),
];

/// The last schema version before [`MIGRATIONS`] recorded a shard layout: a file at version
/// 1..=4 is a single-file store from before sharding and opens as a 1-shard store.
const LAST_UNSHARDED_VERSION: i64 = 4;

/// Most shard files one store may have ([`SqliteConfig::shards`]).
pub const MAX_SHARDS: usize = 16;

/// How hard SQLite syncs to disk on commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// `NORMAL`: in WAL mode a power loss may lose the last commits but never corrupts.
    #[default]
    Normal,
    /// `FULL`: every commit is durable before it returns.
    Full,
    /// `OFF`: for bulk loads and benchmarks only; a crash can corrupt the file.
    Off,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Off => "OFF",
        }
    }
}

/// How to open a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file; created (with its schema) when missing.
    pub path: PathBuf,
    /// Read-only connections in the pool (at least 1).
    pub readers: usize,
    /// How long a statement waits for a lock before failing with [`StoreError::Busy`].
    pub busy_timeout: Duration,
    /// Commit durability.
    pub synchronous: Synchronous,
    /// Page cache per connection, in KiB.
    pub cache_kib: u32,
    /// Most events one [`EventStore::insert_batch`] call takes.
    pub max_batch_items: usize,
    /// Most payload text (string values) indexed per event, in bytes.
    pub max_indexed_payload_bytes: usize,
    /// Events deleted per retention transaction, so the writer is never held for long.
    pub retention_chunk_rows: usize,
    /// A full-text search or kind prefix matching fewer rows than this is answered by
    /// fetching and sorting its matches; one matching more walks a time-ordered index.
    /// With N shards, each shard applies `drive_max_rows / N` to its own matches.
    pub drive_max_rows: usize,
    /// WAL pages after which a commit checkpoints them into the main file (SQLite's
    /// `wal_autocheckpoint`; its default is 1000). Larger values copy each hot page less
    /// often at the cost of a larger `-wal` file.
    pub wal_autocheckpoint_pages: u32,
    /// How often a background thread, on its own connection, checkpoints the WAL into the main
    /// file (`PRAGMA wal_checkpoint(PASSIVE)`, which never blocks the writer). `None` leaves
    /// checkpoints to the committing writer, as SQLite does by default. With it, the writer
    /// auto-checkpoints only as a safety net when the WAL passes
    /// [`WAL_SAFETY_FACTOR`] × `wal_autocheckpoint_pages` (the background thread fell behind),
    /// so the `-wal` file stays bounded. Measured: checkpoints were 18 % of the writer
    /// thread's CPU in `bench/scenarios/events_ingest.py`; this moves them to the other core.
    /// Default 1 s: a page many commits rewrite (an index leaf, the table's last page) is
    /// copied once per checkpoint, not once per commit; 1 s wrote about 20 % fewer bytes per
    /// event than 100 ms. Durability does not depend on it (a commit is durable in the WAL).
    pub background_checkpoint: Option<Duration>,
    /// FTS5 `automerge`: how many segments of one level are merged at a time (2..=16; SQLite's
    /// default is 4). Larger values merge less often while inserting, with more segments
    /// for a search to read.
    pub fts_automerge: u32,
    /// How many shard files a store created by this open has (1..=[`MAX_SHARDS`]). Used only
    /// when the store is created: the count recorded in its files wins on every later open
    /// ([`SqliteStore::shards`] says which count is in force). Shard 0 is [`Self::path`],
    /// shard k sits beside it as `<stem>.<k>.<ext>` (`events.1.db`).
    pub shards: usize,
    /// Query bounds.
    pub limits: QueryLimits,
}

impl SqliteConfig {
    /// Defaults for a file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> SqliteConfig {
        SqliteConfig {
            path: path.into(),
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            synchronous: Synchronous::Normal,
            cache_kib: 16 * 1024,
            max_batch_items: 1000,
            max_indexed_payload_bytes: 64 * 1024,
            retention_chunk_rows: 10_000,
            drive_max_rows: 10_000,
            wal_autocheckpoint_pages: 1000,
            fts_automerge: 4,
            background_checkpoint: Some(Duration::from_millis(1000)),
            shards: 2,
            limits: QueryLimits::default(),
        }
    }
}

/// With a background checkpointer, the writer's own auto-checkpoint threshold is this many
/// times `wal_autocheckpoint_pages` (a safety net only).
pub const WAL_SAFETY_FACTOR: u32 = 8;

/// The writer connection; `None` once [`EventStore::close`] ran.
type Writer = Arc<Mutex<Option<Connection>>>;

/// The background checkpointer: a thread with its own connection, stopped by [`Self::stop`].
///
/// Each round is two steps. First a `PASSIVE` checkpoint on its own connection copies what
/// the WAL holds without blocking anyone; that is nearly all the work. Writers commit
/// meanwhile, so it rarely copies everything, and a WAL that is never completely copied
/// cannot start over from its beginning: it would grow until the writer's safety-net
/// auto-checkpoint ran in the insert path. So, when frames remain, the second step takes the
/// writer (no commit can land meanwhile) and checkpoints the few frames committed during the
/// first; the next write transaction then reuses the WAL from its start, and the `-wal` file
/// stays at about one interval of commits.
struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: std::thread::JoinHandle<()>,
}

/// Runs `PRAGMA wal_checkpoint(PASSIVE)`; whether every WAL frame is now in the main file.
/// A busy or failed checkpoint counts as not done (the next round tries again).
fn checkpoint_passive(conn: &Connection) -> bool {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    })
    .is_ok_and(|(busy, log, done)| busy == 0 && log == done)
}

impl Checkpointer {
    fn start(config: &SqliteConfig, every: Duration, writer: Writer) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(&config.path).map_err(db_err("open checkpointer"))?;
        conn.busy_timeout(config.busy_timeout)
            .map_err(db_err("configure checkpointer"))?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("events-checkpoint".into())
            .spawn(move || {
                let (lock, cv) = &*flag;
                let mut stopped = lock.lock();
                while !*stopped {
                    cv.wait_for(&mut stopped, every);
                    if *stopped {
                        break;
                    }
                    drop(stopped);
                    // PASSIVE copies what no reader still needs and never waits for the
                    // writer; a busy answer just means "next time"
                    if !checkpoint_passive(&conn)
                        && let Some(w) = writer.lock().as_ref()
                    {
                        checkpoint_passive(w);
                    }
                    stopped = lock.lock();
                }
            })
            .map_err(|e| StoreError::Backend {
                op: "start checkpointer",
                source: Box::new(e),
            })?;
        Ok(Checkpointer { stop, thread })
    }

    fn stop(self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        let _ = self.thread.join();
    }
}

/// One shard: events in one SQLite file, with its own writer, reader pool and
/// checkpointer; exactly the single-file store of schema 4 (see the module doc).
struct Shard {
    /// `None` once [`Shard::close`] ran.
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
    reader_free: Condvar,
    checkpointer: Mutex<Option<Checkpointer>>,
    /// The store's config with `path` set to this shard's file.
    config: SqliteConfig,
    /// `PRAGMA user_version` before this open migrated the file (0: a new file).
    prior_version: i64,
}

/// Maps a driver error, telling busy/locked (retryable) apart from the rest.
fn db_err(op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy { op },
        _ => StoreError::Backend {
            op,
            source: Box::new(e),
        },
    }
}

impl Shard {
    /// Opens (or creates) one shard file, applies pending migrations and fills the reader pool.
    fn open(config: SqliteConfig) -> Result<Shard, StoreError> {
        let mut writer = Connection::open(&config.path).map_err(db_err("open"))?;
        configure(&writer, &config, false)?;
        let prior_version: i64 = writer
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db_err("open"))?;
        Migrations::from_slice(MIGRATIONS)
            .to_latest(&mut writer)
            .map_err(|e| StoreError::Backend {
                op: "migrate",
                source: Box::new(e),
            })?;
        // A setting kept inside the full-text table itself; re-applied at every open so the
        // config stays the one truth.
        writer
            .execute(
                "INSERT INTO events_fts(events_fts, rank) VALUES ('automerge', ?1)",
                [config.fts_automerge.clamp(2, 16)],
            )
            .map_err(db_err("configure"))?;
        let mut readers = Vec::with_capacity(config.readers.max(1));
        for _ in 0..config.readers.max(1) {
            let conn = Connection::open_with_flags(
                &config.path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(db_err("open reader"))?;
            configure(&conn, &config, true)?;
            readers.push(conn);
        }
        let writer: Writer = Arc::new(Mutex::new(Some(writer)));
        let checkpointer = match config.background_checkpoint {
            Some(every) if !every.is_zero() => {
                Some(Checkpointer::start(&config, every, Arc::clone(&writer))?)
            }
            _ => None,
        };
        Ok(Shard {
            writer,
            readers: Mutex::new(readers),
            reader_free: Condvar::new(),
            checkpointer: Mutex::new(checkpointer),
            config,
            prior_version,
        })
    }

    /// The layout recorded in this file, `(shards, shard)`, if any.
    fn layout(&self) -> Result<Option<(usize, usize)>, StoreError> {
        let op = "read layout";
        let mut guard = self.writer.lock();
        let conn = guard.as_mut().ok_or(StoreError::Closed)?;
        let row: Option<(i64, i64)> =
            match conn.query_row("SELECT shards, shard FROM store_layout WHERE one = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            }) {
                Ok(row) => Some(row),
                Err(rusqlite::Error::QueryReturnedNoRows) => None,
                Err(e) => return Err(db_err(op)(e)),
            };
        match row {
            None => Ok(None),
            Some((n, k)) => match (usize::try_from(n), usize::try_from(k)) {
                (Ok(n), Ok(k)) if (1..=MAX_SHARDS).contains(&n) && k < n => Ok(Some((n, k))),
                _ => Err(StoreError::Corrupt {
                    table: "store_layout",
                    detail: format!("shard {k} of {n}"),
                }),
            },
        }
    }

    /// Records this file as shard `shard` of `shards`.
    fn set_layout(&self, shards: usize, shard: usize) -> Result<(), StoreError> {
        let op = "record layout";
        let mut guard = self.writer.lock();
        let conn = guard.as_mut().ok_or(StoreError::Closed)?;
        conn.execute(
            "INSERT INTO store_layout (one, shards, shard) VALUES (1, ?1, ?2) \
             ON CONFLICT(one) DO UPDATE SET shards = excluded.shards, shard = excluded.shard",
            [shards as i64, shard as i64],
        )
        .map_err(db_err(op))?;
        Ok(())
    }

    /// Runs `f` on a pooled reader, waiting for one to be free. The connection goes back to
    /// the pool even if `f` panics, so the pool never shrinks.
    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        struct Lease<'a> {
            store: &'a Shard,
            conn: Option<Connection>,
        }
        impl Drop for Lease<'_> {
            fn drop(&mut self) {
                if let Some(conn) = self.conn.take() {
                    self.store.readers.lock().push(conn);
                    self.store.reader_free.notify_one();
                }
            }
        }
        let conn = {
            let mut pool = self.readers.lock();
            loop {
                if let Some(conn) = pool.pop() {
                    break conn;
                }
                self.reader_free.wait(&mut pool);
            }
        };
        let lease = Lease {
            store: self,
            conn: Some(conn),
        };
        match &lease.conn {
            Some(conn) => f(conn),
            None => Err(StoreError::Busy { op: "lease reader" }),
        }
    }
}

/// A page size the limits allow, or why not.
fn page_limit(limits: &QueryLimits, limit: Option<usize>) -> Result<usize, StoreError> {
    match limit {
        None => Ok(limits.default_page),
        Some(0) => Err(StoreError::InvalidQuery("limit must be at least 1".into())),
        Some(n) if n > limits.max_page => Err(StoreError::InvalidQuery(format!(
            "limit {n} exceeds the maximum of {}",
            limits.max_page
        ))),
        Some(n) => Ok(n),
    }
}

fn configure(conn: &Connection, config: &SqliteConfig, read_only: bool) -> Result<(), StoreError> {
    conn.busy_timeout(config.busy_timeout)
        .map_err(db_err("configure"))?;
    let mut pragmas = format!(
        "PRAGMA cache_size = -{}; PRAGMA temp_store = MEMORY;",
        config.cache_kib
    );
    if read_only {
        pragmas.push_str(" PRAGMA query_only = 1;");
        add_regexp(conn)?;
    } else {
        // journal_mode answers with a row, so it goes through pragma_update_and_check
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
            .map_err(db_err("configure"))?;
        let autocheckpoint = match config.background_checkpoint {
            Some(every) if !every.is_zero() => {
                config.wal_autocheckpoint_pages.saturating_mul(WAL_SAFETY_FACTOR)
            }
            _ => config.wal_autocheckpoint_pages,
        };
        pragmas.push_str(&format!(
            " PRAGMA synchronous = {}; PRAGMA wal_autocheckpoint = {};",
            config.synchronous.pragma(),
            autocheckpoint
        ));
    }
    conn.execute_batch(&pragmas).map_err(db_err("configure"))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Registers `regexp(pattern, text)`, which SQLite calls for `text REGEXP pattern`, backed
/// by the `regex` crate (linear time, size-limited compilation, so a hostile pattern cannot
/// hang a reader). Each statement compiles its pattern once.
fn add_regexp(conn: &Connection) -> Result<(), StoreError> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "regexp",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let re: std::sync::Arc<regex::Regex> = ctx.get_or_create_aux(
                0,
                |pattern| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                    Ok(regex::Regex::new(pattern.as_str()?)?)
                },
            )?;
            let text = ctx.get_raw(1).as_str().unwrap_or("");
            Ok(re.is_match(text))
        },
    )
    .map_err(db_err("configure"))
}

/// The columns every event query selects, in [`read_event`]'s order.
const EVENT_COLUMNS: &str = "e.id, e.time, e.received_at, e.source, e.kind, e.subject, e.actor, \
                             e.host, e.service, e.labels, e.severity, e.summary, e.payload, e.seq";

fn severity_code(s: Severity) -> i64 {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Critical => 2,
    }
}

fn severity_from_code(code: i64) -> Result<Severity, StoreError> {
    match code {
        0 => Ok(Severity::Info),
        1 => Ok(Severity::Warning),
        2 => Ok(Severity::Critical),
        other => Err(corrupt(format!("severity code {other}"))),
    }
}

fn corrupt(detail: String) -> StoreError {
    StoreError::Corrupt {
        table: "events",
        detail,
    }
}

/// Raw column values of one event row; decoded outside the row callback so decoding errors
/// keep their own variant.
struct RawRow {
    id: String,
    time: i64,
    received_at: i64,
    source: String,
    kind: String,
    subject: Option<String>,
    actor: Option<String>,
    host: Option<String>,
    service: Option<String>,
    labels: String,
    severity: i64,
    summary: String,
    payload: Option<String>,
    /// Insertion order, the tie-break of the page order and half of a cursor.
    seq: i64,
}

/// One annotation row as stored, with its shard-local `seq` (the tie-break when merging).
struct AnnotationRow {
    id: String,
    time: i64,
    kind: String,
    severity: i64,
    host: Option<String>,
    service: Option<String>,
    summary: String,
    seq: i64,
}

fn read_row(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: r.get(0)?,
        time: r.get(1)?,
        received_at: r.get(2)?,
        source: r.get(3)?,
        kind: r.get(4)?,
        subject: r.get(5)?,
        actor: r.get(6)?,
        host: r.get(7)?,
        service: r.get(8)?,
        labels: r.get(9)?,
        severity: r.get(10)?,
        summary: r.get(11)?,
        payload: r.get(12)?,
        seq: r.get(13)?,
    })
}

fn read_event(raw: RawRow) -> Result<Event, StoreError> {
    let labels =
        serde_json::from_str(&raw.labels).map_err(|e| corrupt(format!("labels of {}: {e}", raw.id)))?;
    let payload = match raw.payload {
        None => None,
        Some(text) => {
            Some(RawValue::from_string(text).map_err(|e| corrupt(format!("payload of {}: {e}", raw.id)))?)
        }
    };
    Ok(Event {
        id: EventId::from_stored(raw.id),
        time: Timestamp(raw.time),
        received_at: Timestamp(raw.received_at),
        source: raw.source,
        kind: raw.kind,
        subject: raw.subject,
        actor: raw.actor,
        host: raw.host,
        service: raw.service,
        labels,
        severity: severity_from_code(raw.severity)?,
        summary: raw.summary,
        payload,
    })
}

/// The condition for a kind prefix on dot boundaries, as one index range
/// `p <= kind < p/` ('/' follows '.') narrowed to `kind = p` or `kind` starting with `p.`
/// (the range alone would also admit `p-x`).
fn kind_prefix_clause(prefix: &Option<String>) -> Option<(&'static str, [Value; 5])> {
    let p = prefix.as_deref()?;
    let p = p.strip_suffix('.').unwrap_or(p);
    if p.is_empty() {
        return None;
    }
    let dotted = format!("{p}.");
    let dotted_chars = i64::try_from(dotted.chars().count()).unwrap_or(i64::MAX);
    Some((
        "(e.kind >= ? AND e.kind < ? AND (e.kind = ? OR substr(e.kind, 1, ?) = ?))",
        [
            Value::Text(p.to_owned()),
            Value::Text(format!("{p}/")),
            Value::Text(p.to_owned()),
            Value::Integer(dotted_chars),
            Value::Text(dotted),
        ],
    ))
}

/// How a query reaches its rows; chosen by [`Shard::plan`] rather than left to
/// SQLite, which has no statistics about how selective full-text words or kinds are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Fetch the few full-text matches by rowid, then sort them.
    FullText,
    /// Fetch the few rows of a rare kind prefix through the full-text `kind` column, then
    /// sort them.
    Kind,
    /// Walk `(host, time, seq)` newest first, filtering.
    Host,
    /// Walk `(service, time, seq)` newest first, filtering.
    Service,
    /// Walk `(time, seq)` newest first, filtering.
    Time,
}

impl Plan {
    fn table(self) -> &'static str {
        match self {
            Plan::FullText => "events e NOT INDEXED",
            Plan::Kind => "events e NOT INDEXED",
            Plan::Host => "events e INDEXED BY events_host_time",
            Plan::Service => "events e INDEXED BY events_service_time",
            Plan::Time => "events e INDEXED BY events_time",
        }
    }
}

/// The full-text condition that narrows a kind prefix: its text as a phrase at the start of
/// the `kind` column (`deploy.fin` → the tokens `deploy fin` first in `kind`). It admits a
/// superset (`deploy-fin.x` too); the exact prefix test stays in SQL. `None` when the prefix
/// has no letters or digits, so nothing in it would be a token.
fn kind_fts_expression(prefix: &Option<String>) -> Option<String> {
    let p = prefix.as_deref()?;
    let p = p.strip_suffix('.').unwrap_or(p);
    p.chars()
        .any(char::is_alphanumeric)
        .then(|| format!("kind : ^ \"{}\"", p.replace('"', "\"\"")))
}

/// A WHERE clause under construction, with its positional parameters.
#[derive(Default, Clone)]
struct Filter {
    clauses: Vec<String>,
    params: Vec<Value>,
}

impl Filter {
    fn push(&mut self, clause: &str, params: impl IntoIterator<Item = Value>) {
        self.clauses.push(clause.to_owned());
        self.params.extend(params);
    }

    fn time_range(&mut self, from: Option<Timestamp>, to: Option<Timestamp>) {
        if let Some(from) = from {
            self.push("e.time >= ?", [Value::Integer(from.0)]);
        }
        if let Some(to) = to {
            self.push("e.time < ?", [Value::Integer(to.0)]);
        }
    }

    fn exact(&mut self, column: &str, value: &Option<String>) {
        if let Some(v) = value {
            self.push(&format!("e.{column} = ?"), [Value::Text(v.clone())]);
        }
    }

    fn kind_prefix(&mut self, prefix: &Option<String>) {
        if let Some((clause, params)) = kind_prefix_clause(prefix) {
            self.push(clause, params);
        }
    }

    /// A label matcher; its name and (for regexes) pattern are checked here so a bad one is
    /// the caller's error, not a database failure.
    fn label(&mut self, m: &Matcher) -> Result<(), StoreError> {
        if !is_label_name(&m.name) {
            return Err(StoreError::InvalidQuery(format!(
                "label name {:?} must match [A-Za-z_][A-Za-z0-9_.-]*",
                m.name
            )));
        }
        // regexes are anchored at both ends, as model::Matcher and PromQL do
        let (clause, value) = match m.op {
            MatchOp::Equal => ("coalesce(json_extract(e.labels, ?), '') = ?", m.value.clone()),
            MatchOp::NotEqual => ("coalesce(json_extract(e.labels, ?), '') != ?", m.value.clone()),
            MatchOp::Regex => (
                "coalesce(json_extract(e.labels, ?), '') REGEXP ?",
                format!("^(?s:{})$", m.value),
            ),
            MatchOp::NotRegex => (
                "NOT (coalesce(json_extract(e.labels, ?), '') REGEXP ?)",
                format!("^(?s:{})$", m.value),
            ),
        };
        // a matcher's pattern was checked when it was built, but its fields are public
        if matches!(m.op, MatchOp::Regex | MatchOp::NotRegex) {
            regex::Regex::new(&value)
                .map_err(|e| StoreError::InvalidQuery(format!("label matcher {:?}: {e}", m.name)))?;
        }
        // the name is validated above, so quoting it into a JSON path is safe
        self.push(
            clause,
            [Value::Text(format!("$.\"{}\"", m.name)), Value::Text(value)],
        );
        Ok(())
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            "1".to_owned()
        } else {
            self.clauses.join(" AND ")
        }
    }
}

impl Shard {
    /// Stores `events` (all routed to this shard) in one transaction; one result per event.
    fn insert(&self, events: &[&Event]) -> Result<Vec<ItemResult>, StoreError> {
        let op = "insert events";
        let json_err = |err: serde_json::Error| StoreError::Backend {
            op,
            source: Box::new(err),
        };
        // Everything that needs only the event is prepared before taking the writer, which
        // every insert waits for: the labels' JSON and the full-text row without its rowid
        // (`,"kind",...]`, spliced after the rowid once it is known).
        let mut prepared: Vec<(String, String, String)> = Vec::with_capacity(events.len());
        for e in events {
            let labels = serde_json::to_string(&e.labels).map_err(json_err)?;
            let payload = e
                .payload
                .as_ref()
                .map(|p| payload_text(p.get(), self.config.max_indexed_payload_bytes))
                .unwrap_or_default();
            prepared.push((labels, labels_text(&e.labels), payload));
        }
        let mut guard = self.writer.lock();
        let conn = guard.as_mut().ok_or(StoreError::Closed)?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db_err(op))?;
        let mut results = Vec::with_capacity(events.len());
        {
            // No RETURNING: SQLite runs it as a trigger, which makes the insert a multi-write
            // statement and so opens a statement journal (a copy of every page it touches
            // twice in the transaction) for each row. A one-row insert checks its
            // constraints before it writes, so without it no journal is needed; whether the
            // row went in and its `seq` come from `changes()` and `last_insert_rowid()`.
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO events (id, time, received_at, source, kind, subject, actor, \
                     host, service, labels, severity, summary, payload) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
                     ON CONFLICT(id) DO NOTHING",
                )
                .map_err(db_err(op))?;
            // A one-row insert into the full-text table opens no statement savepoint, so
            // FTS5 keeps collecting the whole transaction's rows in memory and writes one
            // segment at commit (a savepoint would make it flush one per statement).
            let mut fts = tx
                .prepare_cached(
                    "INSERT INTO events_fts \
                     (rowid, kind, subject, summary, labels, payload, host, service) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(db_err(op))?;
            for (e, (labels, labels_text, payload_text)) in events.iter().zip(&prepared) {
                let changed = insert
                    .execute(rusqlite::params![
                        e.id.as_str(),
                        e.time.0,
                        e.received_at.0,
                        e.source,
                        e.kind,
                        e.subject,
                        e.actor,
                        e.host,
                        e.service,
                        labels,
                        severity_code(e.severity),
                        e.summary,
                        e.payload.as_ref().map(|p| p.get()),
                    ])
                    .map_err(db_err(op))?;
                if changed != 1 {
                    results.push(ItemResult::Duplicate);
                    continue;
                }
                fts.execute(rusqlite::params![
                    tx.last_insert_rowid(),
                    e.kind,
                    e.subject,
                    e.summary,
                    labels_text,
                    payload_text,
                    e.host,
                    e.service,
                ])
                .map_err(db_err(op))?;
                results.push(ItemResult::Stored);
            }
        }
        tx.commit().map_err(db_err(op))?;
        Ok(results)
    }

    /// Up to `fetch` rows of this shard matching `filter` (plus the full-text and kind
    /// conditions), newest first by `(time, seq)`, below the local keyset `bound`.
    fn query_rows(
        &self,
        query: &EventQuery,
        filter: &Filter,
        words: Option<&str>,
        kind_words: Option<&str>,
        bound: Option<(i64, i64)>,
        fetch: usize,
    ) -> Result<Vec<RawRow>, StoreError> {
        let op = "query events";
        self.with_reader(|conn| {
            let plan = self.plan(conn, query, words, kind_words)?;
            let mut filter = filter.clone();
            if let (Plan::Kind, Some(expr)) = (plan, kind_words) {
                filter.push(
                    "e.seq IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?)",
                    [Value::Text(expr.to_owned())],
                );
            }
            if let Some((time, seq)) = bound {
                filter.push(
                    "(e.time, e.seq) < (?, ?)",
                    [Value::Integer(time), Value::Integer(seq)],
                );
            }
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM {} WHERE {} ORDER BY e.time DESC, e.seq DESC LIMIT {}",
                plan.table(),
                filter.sql(),
                fetch
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err(op))?;
            let rows = stmt
                .query_map(params_from_iter(filter.params.iter()), read_row)
                .map_err(db_err(op))?;
            rows.collect::<rusqlite::Result<Vec<RawRow>>>()
                .map_err(db_err(op))
        })
    }

    /// Up to `max` + 1 annotation rows of this shard matching `filter`, oldest first by
    /// `(time, seq)`.
    fn annotation_rows(&self, filter: &Filter, max: usize) -> Result<Vec<AnnotationRow>, StoreError> {
        let sql = format!(
            "SELECT e.id, e.time, e.kind, e.severity, e.host, e.service, e.summary, e.seq \
             FROM events e WHERE {} ORDER BY e.time, e.seq LIMIT {}",
            filter.sql(),
            max + 1
        );
        let op = "query annotations";
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err(op))?;
            let rows = stmt
                .query_map(params_from_iter(filter.params.iter()), |r| {
                    Ok(AnnotationRow {
                        id: r.get(0)?,
                        time: r.get(1)?,
                        kind: r.get(2)?,
                        severity: r.get(3)?,
                        host: r.get(4)?,
                        service: r.get(5)?,
                        summary: r.get(6)?,
                        seq: r.get(7)?,
                    })
                })
                .map_err(db_err(op))?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err(op))
        })
    }

    /// Retention on this shard.
    fn delete_older_than(&self, retention: &Retention) -> Result<RetentionReport, StoreError> {
        let events_deleted = self.delete_chunked(
            "SELECT seq, time FROM events WHERE time >= ?3 AND time < ?1 AND kind NOT GLOB 'audit.*' ORDER BY time LIMIT ?2",
            retention.events_before,
        )?;
        let audit_deleted = match retention.audit_before {
            Some(audit_before) => self.delete_chunked(
                "SELECT seq, time FROM events WHERE time >= ?3 AND time < ?1 AND kind GLOB 'audit.*' ORDER BY time LIMIT ?2",
                audit_before,
            )?,
            None => 0,
        };
        Ok(RetentionReport {
            events_deleted,
            audit_deleted,
        })
    }

    /// Events stored in this shard.
    fn count(&self) -> Result<u64, StoreError> {
        let op = "count events";
        self.with_reader(|conn| {
            let n: i64 = conn
                .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
                .map_err(db_err(op))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    /// Stops the checkpointer, checkpoints and closes the writer; idempotent.
    fn close(&self) -> Result<(), StoreError> {
        if let Some(c) = self.checkpointer.lock().take() {
            c.stop();
        }
        let mut guard = self.writer.lock();
        let Some(conn) = guard.take() else {
            return Ok(());
        };
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(db_err("close"))?;
        conn.close().map_err(|(_, e)| db_err("close")(e))
    }
}

impl Shard {
    /// Chooses how to reach a query's rows.
    ///
    /// - A full-text search (narrowed by host and service inside the index) or a kind prefix
    ///   known to match fewer than [`SqliteConfig::drive_max_rows`] rows drives: its rows
    ///   are fetched by rowid and sorted, cheap because they are few.
    /// - Otherwise, with a host or service, walk that index newest first: it holds `seq`, so
    ///   the full-text condition (a set of rowids built once per query) is checked without
    ///   reading the table, and only matching rows are fetched.
    /// - Otherwise walk `(time, seq)` newest first and stop after one page, so every page of
    ///   a long result costs about the same.
    ///
    /// The counts are bounded (`LIMIT`), so choosing never costs more than the cap.
    ///
    /// Measured and rejected: checking full-text membership per walked row with
    /// `EXISTS (… MATCH ? AND rowid = e.seq)` instead of the rowid set; on 1 M events it was
    /// 2× slower for a common word with a host filter and 40× slower when paging.
    fn plan(
        &self,
        conn: &Connection,
        query: &EventQuery,
        words: Option<&str>,
        kind_words: Option<&str>,
    ) -> Result<Plan, StoreError> {
        let op = "plan query";
        let cap = i64::try_from(self.config.drive_max_rows).unwrap_or(i64::MAX);
        let few_matches = |expr: &str| -> Result<bool, StoreError> {
            let n: i64 = conn
                .prepare_cached(
                    "SELECT count(*) FROM \
                     (SELECT rowid FROM events_fts WHERE events_fts MATCH ?1 LIMIT ?2)",
                )
                .and_then(|mut st| st.query_row(rusqlite::params![expr, cap], |r| r.get(0)))
                .map_err(db_err(op))?;
            Ok(n < cap)
        };
        if let Some(words) = words
            && few_matches(words)?
        {
            return Ok(Plan::FullText);
        }
        if query.host.is_some() {
            return Ok(Plan::Host);
        }
        if query.service.is_some() {
            return Ok(Plan::Service);
        }
        if let Some(kind_words) = kind_words
            && few_matches(kind_words)?
        {
            return Ok(Plan::Kind);
        }
        Ok(Plan::Time)
    }

    /// Deletes the rows `select` finds (`?1` = cut-off, `?2` = chunk size, `?3` = where the
    /// previous chunk ended, so rows retention keeps are not rescanned for every chunk), one
    /// chunk per transaction so inserts can interleave, until a chunk comes back short.
    fn delete_chunked(&self, select: &str, before: Timestamp) -> Result<u64, StoreError> {
        let op = "retention";
        let chunk = i64::try_from(self.config.retention_chunk_rows.max(1)).unwrap_or(i64::MAX);
        let mut deleted = 0u64;
        let mut resume = i64::MIN;
        loop {
            let mut guard = self.writer.lock();
            let conn = guard.as_mut().ok_or(StoreError::Closed)?;
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db_err(op))?;
            let n = {
                let mut find = tx.prepare_cached(select).map_err(db_err(op))?;
                let rows = find
                    .query_map(rusqlite::params![before.0, chunk, resume], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })
                    .map_err(db_err(op))?
                    .collect::<rusqlite::Result<Vec<(i64, i64)>>>()
                    .map_err(db_err(op))?;
                let mut del_fts = tx
                    .prepare_cached("DELETE FROM events_fts WHERE rowid = ?1")
                    .map_err(db_err(op))?;
                let mut del_row = tx
                    .prepare_cached("DELETE FROM events WHERE seq = ?1")
                    .map_err(db_err(op))?;
                for (seq, time) in &rows {
                    del_fts.execute([seq]).map_err(db_err(op))?;
                    del_row.execute([seq]).map_err(db_err(op))?;
                    resume = resume.max(*time);
                }
                rows.len()
            };
            tx.commit().map_err(db_err(op))?;
            deleted += n as u64;
            if (n as i64) < chunk {
                return Ok(deleted);
            }
        }
    }
}

/// FNV-1a (64-bit) of the id's UTF-8 bytes, modulo `shards`: the shard an event id lives in.
/// Fixed forever for a stored layout (a test pins it): idempotency is a per-shard `UNIQUE`
/// check, so an id must always land on the same shard. Never `RandomState`.
pub fn shard_of(id: &str, shards: usize) -> usize {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    // `shards` is 1..=MAX_SHARDS, so both conversions are lossless
    (h % shards.max(1) as u64) as usize
}

/// Where shard `k` of a store whose shard 0 is `base` lives: `base` itself for 0, else
/// `<stem>.<k>.<ext>` beside it (`events.db` → `events.1.db`; no extension: `<name>.<k>`).
pub fn shard_path(base: &Path, k: usize) -> PathBuf {
    if k == 0 {
        return base.to_path_buf();
    }
    let name = match (base.file_stem(), base.extension()) {
        (Some(stem), Some(ext)) => {
            let mut n = stem.to_os_string();
            n.push(format!(".{k}."));
            n.push(ext);
            n
        }
        _ => {
            let mut n = base.file_name().map(|n| n.to_os_string()).unwrap_or_default();
            n.push(format!(".{k}"));
            n
        }
    };
    base.with_file_name(name)
}

/// Events in N SQLite shard files; see the module doc.
pub struct SqliteStore {
    /// Shard k at index k; never empty, at most [`MAX_SHARDS`].
    shards: Vec<Shard>,
    config: SqliteConfig,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("shards", &self.shards.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn layout_err(detail: String) -> StoreError {
    StoreError::Layout(detail)
}

impl SqliteStore {
    /// Opens (or creates) the store: shard 0 at [`SqliteConfig::path`], then the others its
    /// recorded layout names (each must exist; a missing one is an error, never recreated).
    ///
    /// A new store gets [`SqliteConfig::shards`] files: shards 1.. are created and recorded
    /// first and shard 0's layout row last, so a crash during creation leaves a store that
    /// the next open creates again. A file from before sharding (schema 1..=4, no layout row)
    /// is recorded as a 1-shard store. The recorded count wins over the config.
    pub fn open(config: SqliteConfig) -> Result<SqliteStore, StoreError> {
        if !(1..=MAX_SHARDS).contains(&config.shards) {
            return Err(layout_err(format!(
                "shards must be between 1 and {MAX_SHARDS}, not {}",
                config.shards
            )));
        }
        let mut first = Shard::open(config.clone())?;
        let recorded = first.layout()?;
        let (count, fresh) = match recorded {
            Some((n, 0)) => (n, false),
            Some((n, k)) => {
                return Err(layout_err(format!(
                    "{} is shard {k} of {n}, not shard 0",
                    config.path.display()
                )));
            }
            None if (1..=LAST_UNSHARDED_VERSION).contains(&first.prior_version) => {
                first.set_layout(1, 0)?;
                (1, false)
            }
            None => (config.shards, true),
        };
        // a shard holds about 1/N of the matches, so it drives a full-text or kind plan below
        // 1/N of the threshold: the work per query stays what one file's would be
        first.config.drive_max_rows = config.drive_max_rows.div_ceil(count).max(1);
        let mut shards = Vec::with_capacity(count);
        shards.push(first);
        for k in 1..count {
            let path = shard_path(&config.path, k);
            if !fresh && !path.exists() {
                return Err(layout_err(format!(
                    "shard file {} of this {count}-shard store is missing",
                    path.display()
                )));
            }
            let mut c = config.clone();
            c.path = path;
            c.drive_max_rows = config.drive_max_rows.div_ceil(count).max(1);
            let shard = Shard::open(c)?;
            if fresh && shard.count()? > 0 {
                // shard 0 is new but this one holds events: not a creation that crashed
                // (those leave empty shards) but a store whose events.db went missing
                return Err(layout_err(format!(
                    "{} holds events but {} is new: not creating a store over another's shard",
                    shard.config.path.display(),
                    config.path.display()
                )));
            }
            match shard.layout()? {
                Some((n, i)) if n == count && i == k => {}
                None if fresh || shard.prior_version == 0 => shard.set_layout(count, k)?,
                other => {
                    return Err(layout_err(format!(
                        "{} records layout {other:?}, expected shard {k} of {count}",
                        shard.config.path.display()
                    )));
                }
            }
            shards.push(shard);
        }
        if fresh && let Some(first) = shards.first() {
            first.set_layout(count, 0)?;
        }
        Ok(SqliteStore { shards, config })
    }

    /// The configuration this store was opened with (its `shards` is what was asked for;
    /// [`Self::shards`] is what is in force).
    pub fn config(&self) -> &SqliteConfig {
        &self.config
    }

    /// How many shard files this store has (the count recorded at creation).
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Runs `f` on every shard, in parallel when there are several (shard 0 on the caller's
    /// thread); results in shard order. The first error wins.
    fn each_shard<T: Send>(
        &self,
        f: impl Fn(usize, &Shard) -> Result<T, StoreError> + Sync,
    ) -> Result<Vec<T>, StoreError> {
        let jobs: Vec<(usize, &Shard)> = self.shards.iter().enumerate().collect();
        run_parallel(&jobs, |(k, s)| f(*k, s))
    }
}

/// Runs `f` on every job, the first on the caller's thread and each other on a scoped thread
/// of its own (run inline if the thread cannot be started); results in job order, the first
/// error (in job order) wins, after every job finished.
fn run_parallel<J: Sync, T: Send>(
    jobs: &[J],
    f: impl Fn(&J) -> Result<T, StoreError> + Sync,
) -> Result<Vec<T>, StoreError> {
    let Some((first, rest)) = jobs.split_first() else {
        return Ok(Vec::new());
    };
    if rest.is_empty() {
        return Ok(vec![f(first)?]);
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = rest
            .iter()
            .map(|job| {
                std::thread::Builder::new()
                    .name("events-shard".into())
                    .spawn_scoped(scope, move || f(job))
                    .map_err(|_| job)
            })
            .collect();
        let mut out = Vec::with_capacity(jobs.len());
        out.push(f(first));
        for h in handles {
            out.push(match h {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(StoreError::Backend {
                        op: "shard thread",
                        source: "a shard thread panicked".into(),
                    })
                }),
                Err(job) => f(job),
            });
        }
        out.into_iter().collect()
    })
}

/// A global page position: (time, shard, seq). Pages are ordered by it descending.
type PageKey = (i64, usize, i64);

/// Encodes a keyset position as an opaque cursor `v3.<time>.<shard>.<seq>`.
fn encode_cursor(key: PageKey) -> String {
    format!("v3.{}.{}.{}", key.0, key.1, key.2)
}

/// Decodes a cursor made by [`encode_cursor`] for a store of `shards` shards; anything else
/// (including the `v2.` cursors of the single-file store) is [`StoreError::InvalidCursor`].
fn decode_cursor(cursor: &str, shards: usize) -> Result<PageKey, StoreError> {
    let rest = cursor.strip_prefix("v3.").ok_or(StoreError::InvalidCursor)?;
    let mut parts = rest.split('.');
    let (Some(time), Some(shard), Some(seq), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(StoreError::InvalidCursor);
    };
    let time: i64 = time.parse().map_err(|_| StoreError::InvalidCursor)?;
    let shard: usize = shard.parse().map_err(|_| StoreError::InvalidCursor)?;
    let seq: i64 = seq.parse().map_err(|_| StoreError::InvalidCursor)?;
    if shard >= shards {
        return Err(StoreError::InvalidCursor);
    }
    Ok((time, shard, seq))
}

/// The shard-local keyset bound `(time, seq) < bound` that, for shard `shard`, selects
/// exactly the rows after the global position `cursor` in page order (time desc, shard desc,
/// seq desc):
/// - the cursor's own shard: `(t, seq)`;
/// - a shard after it in page order (lower number): every row at time `t` still follows, so
///   `time <= t`, i.e. `(t + 1, i64::MIN)`;
/// - a shard before it (higher number): no row at time `t` follows, `(t, i64::MIN)`.
fn local_bound(cursor: PageKey, shard: usize) -> (i64, i64) {
    let (t, cs, seq) = cursor;
    match shard.cmp(&cs) {
        std::cmp::Ordering::Equal => (t, seq),
        std::cmp::Ordering::Less => match t.checked_add(1) {
            Some(next) => (next, i64::MIN),
            None => (t, i64::MAX),
        },
        std::cmp::Ordering::Greater => (t, i64::MIN),
    }
}

/// How many rows round 1 of a page asks each of `shards` shards for, when `want` rows are
/// needed in all: the even share plus 3.5 standard deviations of a shard's binomial share
/// (ids hash evenly, so with p = 1/N: sd = sqrt(want·p·(1−p))) plus 2, capped at `want`
/// (one shard: exactly `want`). A shard holds more than that of a page about 2 times in
/// 10,000; then round 2 fetches again. 101 rows on 2 shards: 69 each.
fn round_one_fetch(want: usize, shards: usize) -> usize {
    if shards <= 1 {
        return want;
    }
    let p = 1.0 / shards as f64;
    let mean = want as f64 * p;
    let sd = (want as f64 * p * (1.0 - p)).sqrt();
    // a small positive float: the conversion saturates, never wraps
    ((mean + 3.5 * sd).ceil() as usize + 2).min(want)
}

impl EventStore for SqliteStore {
    fn insert_batch(&self, events: &[Event]) -> Result<Vec<ItemResult>, StoreError> {
        if events.len() > self.config.max_batch_items {
            return Err(StoreError::BatchTooLarge {
                count: events.len(),
                max: self.config.max_batch_items,
            });
        }
        let n = self.shards.len();
        if n == 1 {
            let all: Vec<&Event> = events.iter().collect();
            return match self.shards.first() {
                Some(shard) => shard.insert(&all),
                None => Err(layout_err("no shards".into())),
            };
        }
        // split by shard, remembering each event's batch position
        let mut parts: Vec<(usize, Vec<usize>, Vec<&Event>)> =
            (0..n).map(|k| (k, Vec::new(), Vec::new())).collect();
        for (pos, e) in events.iter().enumerate() {
            if let Some(part) = parts.get_mut(shard_of(e.id.as_str(), n)) {
                part.1.push(pos);
                part.2.push(e);
            }
        }
        parts.retain(|p| !p.2.is_empty());
        let results = run_parallel(&parts, |(k, _, evs)| match self.shards.get(*k) {
            Some(shard) => shard.insert(evs),
            None => Err(layout_err(format!("no shard {k}"))),
        })?;
        let mut merged = vec![ItemResult::Duplicate; events.len()];
        for ((_, positions, _), part) in parts.iter().zip(results) {
            for (pos, r) in positions.iter().zip(part) {
                if let Some(slot) = merged.get_mut(*pos) {
                    *slot = r;
                }
            }
        }
        Ok(merged)
    }

    fn query(&self, query: &EventQuery) -> Result<Page, StoreError> {
        let limits = &self.config.limits;
        let limit = page_limit(limits, query.limit)?;
        if query.labels.len() > limits.max_label_matchers {
            return Err(StoreError::InvalidQuery(format!(
                "more than {} label matchers",
                limits.max_label_matchers
            )));
        }
        let mut filter = Filter::default();
        filter.time_range(query.from, query.to);
        filter.exact("host", &query.host);
        filter.exact("service", &query.service);
        filter.kind_prefix(&query.kind_prefix);
        for m in &query.labels {
            filter.label(m)?;
        }
        let words = match &query.q {
            Some(q) => match_expression(q, limits)?
                .map(|w| full_expression(&w, query.host.as_deref(), query.service.as_deref())),
            None => None,
        };
        if let Some(expr) = &words {
            filter.push(
                "e.seq IN (SELECT rowid FROM events_fts WHERE events_fts MATCH ?)",
                [Value::Text(expr.clone())],
            );
        }
        let cursor = match &query.cursor {
            Some(c) => Some(decode_cursor(c, self.shards.len())?),
            None => None,
        };
        let kind_words = kind_fts_expression(&query.kind_prefix);
        let n = self.shards.len();
        let fetch_rows =
            |k: usize, bound: Option<(i64, i64)>, fetch: usize| -> Result<Vec<(usize, RawRow)>, StoreError> {
                let shard = self
                    .shards
                    .get(k)
                    .ok_or_else(|| layout_err(format!("no shard {k}")))?;
                let rows = shard.query_rows(
                    query,
                    &filter,
                    words.as_deref(),
                    kind_words.as_deref(),
                    bound,
                    fetch,
                )?;
                Ok(rows.into_iter().map(|r| (k, r)).collect())
            };
        // Round 1: each shard gives its expected share of the page plus slack (ids hash
        // evenly, so a shard's share of the next `limit + 1` rows is binomial), not `limit + 1`
        // each, which would make a walking plan scan N times the rows of one file.
        let want = limit + 1;
        let share = round_one_fetch(want, n);
        let jobs: Vec<usize> = (0..n).collect();
        let first = run_parallel(&jobs, |k| {
            fetch_rows(*k, cursor.map(|c| local_bound(c, *k)), share)
        })?;
        // A shard that filled its share may hold more rows; the merged list is exact only down
        // to the highest last key among those. If that exact prefix is shorter than `want`,
        // round 2 asks each such shard for `want` more rows below its last one.
        let mut full: Vec<(usize, (i64, i64))> = Vec::new();
        let mut raw: Vec<(usize, RawRow)> = Vec::new();
        for (k, rows) in jobs.iter().zip(first) {
            if rows.len() >= share
                && share < want
                && let Some((_, last)) = rows.last()
            {
                full.push((*k, (last.time, last.seq)));
            }
            raw.extend(rows);
        }
        let exact_to = full.iter().map(|(k, (t, s))| (*t, *k, *s)).max();
        let exact = match exact_to {
            None => raw.len(),
            Some(floor) => raw.iter().filter(|(k, r)| (r.time, *k, r.seq) >= floor).count(),
        };
        if exact < want && !full.is_empty() {
            let more = run_parallel(&full, |(k, last)| fetch_rows(*k, Some(*last), want))?;
            raw.extend(more.into_iter().flatten());
        }
        raw.sort_unstable_by_key(|(k, r)| std::cmp::Reverse((r.time, *k, r.seq)));
        let more = raw.len() > limit;
        let next_cursor = match limit.checked_sub(1).and_then(|i| raw.get(i)) {
            Some((k, last)) if more => Some(encode_cursor((last.time, *k, last.seq))),
            _ => None,
        };
        let mut events = raw
            .into_iter()
            .take(limit)
            .map(|(_, r)| read_event(r))
            .collect::<Result<Vec<_>, _>>()?;
        events.shrink_to_fit();
        Ok(Page { events, next_cursor })
    }

    fn annotations(&self, query: &AnnotationQuery) -> Result<Annotations, StoreError> {
        let max = self.config.limits.max_annotations;
        let mut filter = Filter::default();
        filter.time_range(Some(query.from), Some(query.to));
        filter.exact("host", &query.host);
        filter.exact("service", &query.service);
        filter.kind_prefix(&query.kind_prefix);
        let per_shard = self.each_shard(|k, shard| Ok((k, shard.annotation_rows(&filter, max)?)))?;
        let mut raw: Vec<(usize, AnnotationRow)> = per_shard
            .into_iter()
            .flat_map(|(k, rows)| rows.into_iter().map(move |r| (k, r)))
            .collect();
        // oldest first: exactly the reverse of the page order
        raw.sort_unstable_by_key(|(k, r)| (r.time, *k, r.seq));
        let truncated = raw.len() > max;
        let rows = raw
            .into_iter()
            .take(max)
            .map(|(_, r)| {
                Ok(Annotation {
                    id: EventId::from_stored(r.id),
                    time: Timestamp(r.time),
                    kind: r.kind,
                    severity: severity_from_code(r.severity)?,
                    host: r.host,
                    service: r.service,
                    summary: r.summary,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Annotations { rows, truncated })
    }

    fn delete_older_than(&self, retention: &Retention) -> Result<RetentionReport, StoreError> {
        let mut total = RetentionReport::default();
        for shard in &self.shards {
            let r = shard.delete_older_than(retention)?;
            total.events_deleted += r.events_deleted;
            total.audit_deleted += r.audit_deleted;
        }
        Ok(total)
    }

    fn count(&self) -> Result<u64, StoreError> {
        Ok(self.each_shard(|_, s| s.count())?.into_iter().sum())
    }

    fn close(&self) -> Result<(), StoreError> {
        // close every shard even if one fails; report the first failure
        let mut first_err = None;
        for shard in &self.shards {
            if let Err(e) = shard.close() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
