//! Heartbeats: cron jobs and background tasks say "I started", "I succeeded", "I failed",
//! and Roaster says when one is late.
//!
//! - **Definitions** (name, expected period, grace) come from `[[heartbeats]]` in the config
//!   file or from the human-plane API (`PUT /api/v1/heartbeats/NAME`, admin). A name is
//!   1..=128 of `[A-Za-z0-9_.-]`. Config definitions win over API ones of the same name and
//!   cannot be changed or deleted through the API.
//! - **Pings** (`POST /api/v1/heartbeats/NAME/start|success|fail`) arrive on the ROBOT plane
//!   with an `ingest`-scope token (jobs are robots; healthchecks.io and GoAlert work the same
//!   way). An unknown name is a 404: pings never create heartbeats.
//! - **The state machine** is pure: [`State::apply`] folds a ping into the state and returns
//!   the duration of the run it finished; [`lateness`] says whether a heartbeat is on time,
//!   late (and by how much), never seen or failing. Time is always passed in.
//! - **Effects of a ping**, in order, under one lock so pings of all heartbeats are serialised:
//!   the `heartbeat.start|success|fail` event is stored (when that fails the ping fails and
//!   the state is unchanged), the state is committed and persisted, then the series are
//!   written through the ingest sink (a failed series write is logged and counted, not
//!   returned: the event is the record).
//! - **Persistence**: `heartbeats.json` in the data directory holds the API definitions and
//!   the state of every heartbeat; it is rewritten atomically (temp file, fsync, rename) on
//!   every change, so state survives restarts. Unknown or removed names are dropped on load.
//!
//! Series (label `heartbeat` = the name):
//! `roaster_heartbeat_duration_seconds` (one point per finished run whose duration is known:
//! from the ping's `duration`, else from the run's start ping),
//! `roaster_heartbeat_runs_total{result="success|fail"}` (a counter that survives restarts),
//! `roaster_heartbeat_last_success_timestamp_seconds`, and every `series_interval_ms` plus on
//! every ping `roaster_heartbeat_late_seconds` and `roaster_heartbeat_up`, so alert rules can
//! query lateness like any metric. `/metrics` shows the same two gauges live. The periodic
//! write runs on the human runtime's blocking pool without a query permit (two points per
//! heartbeat); ping handling runs on the robot runtime's blocking pool.
//!
//! Bounds: `[heartbeat] max_definitions`, `max_message_bytes`, `max_ping_body_bytes`,
//! `max_period_ms`; list pages are at most 1,000 (default 100).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use ingest::SampleSink;
use model::event::{Event, EventId, Severity, format_rfc3339};
use model::telemetry::Exposition;
use model::{Clock, Label, Point, SeriesKey, Timestamp};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::tokens::TokenStore;

/// The file, in the data directory, holding API definitions and every heartbeat's state.
pub const HEARTBEATS_FILE: &str = "heartbeats.json";
/// Longest heartbeat name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// The largest `[heartbeat] max_message_bytes` allowed: a ping's event payload must stay
/// well inside the event envelope's 64 KiB.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// Default page size of `GET /api/v1/heartbeats`.
pub const DEFAULT_PAGE: usize = 100;
/// Largest page of `GET /api/v1/heartbeats`.
pub const MAX_PAGE: usize = 1000;

/// `[heartbeat]`: limits of the heartbeat registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// Most heartbeats (config and API together); a PUT past it is refused (409).
    pub max_definitions: usize,
    /// Longest `message` a ping may carry, in bytes (a longer one is refused, 400); at most
    /// 32768.
    pub max_message_bytes: usize,
    /// Largest JSON body of a ping, in bytes.
    pub max_ping_body_bytes: usize,
    /// Most pings handled at once on the robot plane; more wait in line (pings of all
    /// heartbeats are serialised anyway, this bounds the threads waiting for their turn).
    pub max_concurrent_pings: usize,
    /// Longest period or grace a heartbeat may have.
    pub max_period_ms: u64,
    /// How often `roaster_heartbeat_late_seconds` and `roaster_heartbeat_up` are written as
    /// series for every heartbeat (0 turns the periodic write off; pings still write them).
    pub series_interval_ms: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> HeartbeatConfig {
        HeartbeatConfig {
            max_definitions: 1000,
            max_message_bytes: 1024,
            max_ping_body_bytes: 16 * 1024,
            max_concurrent_pings: 16,
            max_period_ms: 366 * 86_400_000,
            series_interval_ms: 60_000,
        }
    }
}

/// One `[[heartbeats]]` entry of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatDef {
    /// 1..=128 of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// How often the job runs: a PromQL duration (`1h`, `1d`, `90m`) or seconds.
    pub period: String,
    /// How late a run may be before the heartbeat counts as late (`10m`; default 0).
    #[serde(default = "zero")]
    pub grace: String,
}

fn zero() -> String {
    "0s".into()
}

/// Why a heartbeat operation failed. Each variant maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// The name breaks the naming rule (400).
    #[error("invalid heartbeat name {0:?}: expected 1 to 128 of [A-Za-z0-9_.-]")]
    BadName(String),
    /// A field is missing or malformed (400).
    #[error("invalid {field}: {reason}")]
    BadField {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// No heartbeat has this name (404).
    #[error(
        "no heartbeat named {0:?}; define it first (PUT /api/v1/heartbeats/NAME on the human plane, or [[heartbeats]] in the config)"
    )]
    Unknown(String),
    /// The heartbeat comes from the config file (409).
    #[error("heartbeat {0:?} is defined in the config file; change it there")]
    ConfigDefined(String),
    /// `max_definitions` reached (409).
    #[error("too many heartbeats: the limit is {0} ([heartbeat] max_definitions)")]
    TooMany(usize),
    /// The event could not be stored (503 when retryable, else 500).
    #[error("storing the event failed: {0}")]
    Events(#[from] crate::events::EventsError),
    /// `heartbeats.json` could not be read or written (500).
    #[error("heartbeat file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl HeartbeatError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            HeartbeatError::BadName(_) | HeartbeatError::BadField { .. } => StatusCode::BAD_REQUEST,
            HeartbeatError::Unknown(_) => StatusCode::NOT_FOUND,
            HeartbeatError::ConfigDefined(_) | HeartbeatError::TooMany(_) => StatusCode::CONFLICT,
            HeartbeatError::Events(crate::events::EventsError::Store(e)) if e.is_retryable() => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            HeartbeatError::Events(_) | HeartbeatError::File { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "bad_data",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "conflict",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "internal",
        }
    }
}

impl IntoResponse for HeartbeatError {
    fn into_response(self) -> Response {
        api_error(self.status(), self.kind(), &self.to_string())
    }
}

fn api_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({"status": "error", "errorType": kind, "error": message});
    (status, Json(body)).into_response()
}

/// Checks a heartbeat name: 1..=128 of `[A-Za-z0-9_.-]`.
pub fn validate_name(name: &str) -> Result<(), HeartbeatError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(HeartbeatError::BadName(
            name.chars().take(MAX_NAME_BYTES + 8).collect(),
        ))
    }
}

fn parse_period(field: &'static str, s: &str, allow_zero: bool, max_ms: u64) -> Result<i64, HeartbeatError> {
    let ms = query::time::parse_duration(s.trim()).ok_or_else(|| HeartbeatError::BadField {
        field,
        reason: format!("{s:?} is not a duration (try \"1h\", \"10m\" or seconds)"),
    })?;
    if ms < 0 || (ms == 0 && !allow_zero) {
        return Err(HeartbeatError::BadField {
            field,
            reason: format!("{s:?} must be {}", if allow_zero { "≥ 0" } else { "> 0" }),
        });
    }
    if ms as u64 > max_ms {
        return Err(HeartbeatError::BadField {
            field,
            reason: format!("{s:?} exceeds [heartbeat] max_period_ms ({max_ms} ms)"),
        });
    }
    Ok(ms)
}

/// Where a definition came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `[[heartbeats]]` in the config file: read-only through the API.
    Config,
    /// `PUT /api/v1/heartbeats/NAME`: persisted in `heartbeats.json`, deletable.
    Api,
}

/// A heartbeat's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// The name.
    pub name: String,
    /// Expected time between runs, milliseconds (> 0).
    pub period_ms: i64,
    /// Extra time allowed before the heartbeat is late, milliseconds (≥ 0).
    pub grace_ms: i64,
    /// Where it came from.
    pub origin: Origin,
}

/// What a ping says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PingKind {
    /// A run began.
    Start,
    /// A run finished well.
    Success,
    /// A run finished badly.
    Fail,
}

impl PingKind {
    /// The path segment and event-kind suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            PingKind::Start => "start",
            PingKind::Success => "success",
            PingKind::Fail => "fail",
        }
    }

    /// Parses a path segment.
    pub fn parse(s: &str) -> Option<PingKind> {
        match s {
            "start" => Some(PingKind::Start),
            "success" => Some(PingKind::Success),
            "fail" => Some(PingKind::Fail),
            _ => None,
        }
    }
}

/// A ping's optional details, already bounded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PingDetails {
    /// How long the run took, seconds (finite, ≥ 0).
    pub duration_s: Option<f64>,
    /// The job's exit code.
    pub exit_code: Option<i64>,
    /// A short message (at most `max_message_bytes`).
    pub message: Option<String>,
    /// The host the job ran on.
    pub host: Option<String>,
}

/// A heartbeat's state, everything [`lateness`] needs. All times are UTC milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// The last start ping.
    pub last_start_ms: Option<i64>,
    /// The start of the run in progress (a start not yet followed by success or fail).
    pub running_since_ms: Option<i64>,
    /// The last success ping.
    pub last_success_ms: Option<i64>,
    /// The last fail ping.
    pub last_fail_ms: Option<i64>,
    /// The exit code of the last finished run, if it sent one.
    pub last_exit_code: Option<i64>,
    /// The duration of the last finished run, if known.
    pub last_duration_s: Option<f64>,
    /// The message of the last ping that had one.
    pub last_message: Option<String>,
    /// Successful runs ever.
    pub successes: u64,
    /// Failed runs ever.
    pub failures: u64,
}

impl State {
    /// Folds a ping at `now` into the state; returns the duration of the run it finished
    /// (the ping's own `duration`, else the time since the run's start ping), if known.
    pub fn apply(&mut self, kind: PingKind, details: &PingDetails, now: Timestamp) -> Option<f64> {
        let now = now.millis();
        if details.message.is_some() {
            self.last_message.clone_from(&details.message);
        }
        match kind {
            PingKind::Start => {
                self.last_start_ms = Some(now);
                self.running_since_ms = Some(now);
                None
            }
            PingKind::Success | PingKind::Fail => {
                let measured = self
                    .running_since_ms
                    .take()
                    .map(|s| now.saturating_sub(s).max(0) as f64 / 1000.0);
                let duration = details.duration_s.or(measured);
                if kind == PingKind::Success {
                    self.last_success_ms = Some(now);
                    self.successes = self.successes.saturating_add(1);
                } else {
                    self.last_fail_ms = Some(now);
                    self.failures = self.failures.saturating_add(1);
                }
                self.last_exit_code = details.exit_code;
                self.last_duration_s = duration;
                duration
            }
        }
    }
}

/// Whether a heartbeat is where it should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lateness {
    /// The last sign of life (success, or the start of the run in progress) is within
    /// period + grace.
    OnTime,
    /// Period + grace has passed since the last sign of life; `by_ms` past that deadline.
    Late {
        /// How far past the deadline, milliseconds (> 0).
        by_ms: i64,
    },
    /// No start or success ping since it was defined (and the last run did not fail).
    NeverSeen,
    /// The last finished run failed (a later success clears it).
    Failing,
}

impl Lateness {
    /// `on_time`, `late`, `never_seen` or `failing`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lateness::OnTime => "on_time",
            Lateness::Late { .. } => "late",
            Lateness::NeverSeen => "never_seen",
            Lateness::Failing => "failing",
        }
    }

    /// Seconds past the deadline (0 unless late).
    pub fn late_seconds(self) -> f64 {
        match self {
            Lateness::Late { by_ms } => by_ms as f64 / 1000.0,
            _ => 0.0,
        }
    }

    /// 1 when on time, 0 otherwise (late, failing or never seen).
    pub fn up(self) -> f64 {
        if self == Lateness::OnTime { 1.0 } else { 0.0 }
    }
}

/// Where `def` stands at `now` given `state`. Failing wins over late: a job whose last run
/// failed is failing until a success. A run that started but has not finished counts as a
/// sign of life, so it turns late only once period + grace has passed since its start.
pub fn lateness(def: &Definition, state: &State, now: Timestamp) -> Lateness {
    let failed_last = match (state.last_fail_ms, state.last_success_ms) {
        (Some(f), Some(s)) => f > s,
        (Some(_), None) => true,
        _ => false,
    };
    if failed_last
        && state
            .running_since_ms
            .is_none_or(|r| r <= state.last_fail_ms.unwrap_or(0))
    {
        return Lateness::Failing;
    }
    let reference = match (state.last_success_ms, state.running_since_ms) {
        (Some(s), Some(r)) => s.max(r),
        (Some(s), None) => s,
        (None, Some(r)) => r,
        (None, None) => {
            return if failed_last {
                Lateness::Failing
            } else {
                Lateness::NeverSeen
            };
        }
    };
    let deadline = reference
        .saturating_add(def.period_ms)
        .saturating_add(def.grace_ms);
    let now = now.millis();
    if now > deadline {
        Lateness::Late {
            by_ms: now - deadline,
        }
    } else {
        Lateness::OnTime
    }
}

/// A heartbeat as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct View {
    /// The name.
    pub name: String,
    /// Expected period, seconds.
    pub period_seconds: f64,
    /// Grace, seconds.
    pub grace_seconds: f64,
    /// `config` or `api`.
    pub origin: Origin,
    /// `on_time`, `late`, `never_seen` or `failing`.
    pub status: &'static str,
    /// Seconds past the deadline (0 unless late).
    pub late_seconds: f64,
    /// 1 when on time, else 0.
    pub up: u8,
    /// RFC 3339 times of the last pings.
    pub last_start: Option<String>,
    /// The start of the run in progress.
    pub running_since: Option<String>,
    /// The last success.
    pub last_success: Option<String>,
    /// The last failure.
    pub last_fail: Option<String>,
    /// The exit code of the last finished run.
    pub last_exit_code: Option<i64>,
    /// The duration of the last finished run, seconds.
    pub last_duration_seconds: Option<f64>,
    /// The last message.
    pub last_message: Option<String>,
    /// Successful runs ever.
    pub successes: u64,
    /// Failed runs ever.
    pub failures: u64,
}

fn view(def: &Definition, state: &State, now: Timestamp) -> View {
    let l = lateness(def, state, now);
    let t = |ms: Option<i64>| ms.map(|m| format_rfc3339(Timestamp(m)));
    View {
        name: def.name.clone(),
        period_seconds: def.period_ms as f64 / 1000.0,
        grace_seconds: def.grace_ms as f64 / 1000.0,
        origin: def.origin,
        status: l.as_str(),
        late_seconds: l.late_seconds(),
        up: l.up() as u8,
        last_start: t(state.last_start_ms),
        running_since: t(state.running_since_ms),
        last_success: t(state.last_success_ms),
        last_fail: t(state.last_fail_ms),
        last_exit_code: state.last_exit_code,
        last_duration_seconds: state.last_duration_s,
        last_message: state.last_message.clone(),
        successes: state.successes,
        failures: state.failures,
    }
}

#[derive(Debug, Clone)]
struct Entry {
    def: Definition,
    state: State,
}

/// The on-disk shape of `heartbeats.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct FileData {
    version: u32,
    /// API definitions by name.
    defined: BTreeMap<String, StoredDef>,
    /// State of every heartbeat by name.
    states: BTreeMap<String, State>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredDef {
    period_ms: i64,
    grace_ms: i64,
}

/// Self-telemetry of the registry.
#[derive(Debug, Default)]
struct Counters {
    pings: [AtomicU64; 3],
    series_write_failures: AtomicU64,
}

/// The heartbeat registry: definitions, state, and the effects of pings. Every method
/// blocks (file and database I/O); async callers use `spawn_blocking`.
pub struct Heartbeats {
    path: PathBuf,
    config: HeartbeatConfig,
    entries: Mutex<BTreeMap<String, Entry>>,
    clock: Arc<dyn Clock>,
    sink: Option<Arc<dyn SampleSink>>,
    events: Option<crate::events::Events>,
    counters: Counters,
}

impl std::fmt::Debug for Heartbeats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeats")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// What the registry writes to and records with.
pub struct HeartbeatSinks {
    /// Where series go (the server's `TsdbSink`); `None` writes no series.
    pub samples: Option<Arc<dyn SampleSink>>,
    /// Where ping events go (the server's event-store handle); `None` records none.
    pub events: Option<crate::events::Events>,
}

impl Heartbeats {
    /// Opens the registry of `data_dir`: config definitions from `defs`, API definitions and
    /// state from `heartbeats.json` (missing = empty).
    pub fn open(
        data_dir: &Path,
        config: &HeartbeatConfig,
        defs: &[HeartbeatDef],
        clock: Arc<dyn Clock>,
        sinks: HeartbeatSinks,
    ) -> Result<Heartbeats, HeartbeatError> {
        let path = data_dir.join(HEARTBEATS_FILE);
        let data: FileData = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| HeartbeatError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileData::default(),
            Err(e) => {
                return Err(HeartbeatError::File {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let mut entries = BTreeMap::new();
        for d in check_config_defs(defs, config)? {
            entries.insert(
                d.name.clone(),
                Entry {
                    def: d,
                    state: State::default(),
                },
            );
        }
        for (name, d) in data.defined {
            if entries.contains_key(&name) {
                tracing::warn!(heartbeat = %name, "an API definition is shadowed by [[heartbeats]] in the config");
                continue;
            }
            if validate_name(&name).is_err() || d.period_ms <= 0 || d.grace_ms < 0 {
                tracing::warn!(heartbeat = %name, "skipping an invalid stored heartbeat definition");
                continue;
            }
            let def = Definition {
                name: name.clone(),
                period_ms: d.period_ms,
                grace_ms: d.grace_ms,
                origin: Origin::Api,
            };
            entries.insert(
                name,
                Entry {
                    def,
                    state: State::default(),
                },
            );
        }
        for (name, state) in data.states {
            if let Some(e) = entries.get_mut(&name) {
                e.state = state;
            }
        }
        Ok(Heartbeats {
            path,
            config: config.clone(),
            entries: Mutex::new(entries),
            clock,
            sink: sinks.samples,
            events: sinks.events,
            counters: Counters::default(),
        })
    }

    /// The registry's limits.
    pub fn config(&self) -> &HeartbeatConfig {
        &self.config
    }

    fn persist(&self, entries: &BTreeMap<String, Entry>) -> Result<(), HeartbeatError> {
        let data = FileData {
            version: 1,
            defined: entries
                .values()
                .filter(|e| e.def.origin == Origin::Api)
                .map(|e| {
                    (
                        e.def.name.clone(),
                        StoredDef {
                            period_ms: e.def.period_ms,
                            grace_ms: e.def.grace_ms,
                        },
                    )
                })
                .collect(),
            states: entries
                .values()
                .filter(|e| e.state != State::default())
                .map(|e| (e.def.name.clone(), e.state.clone()))
                .collect(),
        };
        let file_err = |reason: String| HeartbeatError::File {
            path: self.path.clone(),
            reason,
        };
        let bytes = serde_json::to_vec(&data).map_err(|e| file_err(e.to_string()))?;
        crate::tokens::write_atomic(&self.path, &bytes).map_err(|e| file_err(e.to_string()))
    }

    /// Creates or changes an API definition; returns its view and whether it is new.
    pub fn define(&self, name: &str, period: &str, grace: &str) -> Result<(View, bool), HeartbeatError> {
        validate_name(name)?;
        let max = self.config.max_period_ms;
        let period_ms = parse_period("period", period, false, max)?;
        let grace_ms = parse_period("grace", grace, true, max)?;
        let mut entries = self.entries.lock();
        let created = match entries.get(name) {
            Some(e) if e.def.origin == Origin::Config => {
                return Err(HeartbeatError::ConfigDefined(name.to_owned()));
            }
            Some(_) => false,
            None if entries.len() >= self.config.max_definitions => {
                return Err(HeartbeatError::TooMany(self.config.max_definitions));
            }
            None => true,
        };
        let mut next = entries.clone();
        let entry = next.entry(name.to_owned()).or_insert_with(|| Entry {
            def: Definition {
                name: name.to_owned(),
                period_ms,
                grace_ms,
                origin: Origin::Api,
            },
            state: State::default(),
        });
        entry.def.period_ms = period_ms;
        entry.def.grace_ms = grace_ms;
        let v = view(&entry.def, &entry.state, self.clock.now());
        self.persist(&next)?;
        *entries = next;
        Ok((v, created))
    }

    /// Deletes an API definition and its state.
    pub fn remove(&self, name: &str) -> Result<(), HeartbeatError> {
        validate_name(name)?;
        let mut entries = self.entries.lock();
        match entries.get(name) {
            None => return Err(HeartbeatError::Unknown(name.to_owned())),
            Some(e) if e.def.origin == Origin::Config => {
                return Err(HeartbeatError::ConfigDefined(name.to_owned()));
            }
            Some(_) => {}
        }
        let mut next = entries.clone();
        next.remove(name);
        self.persist(&next)?;
        *entries = next;
        Ok(())
    }

    /// One heartbeat's view.
    pub fn get(&self, name: &str) -> Result<View, HeartbeatError> {
        validate_name(name)?;
        let entries = self.entries.lock();
        let e = entries
            .get(name)
            .ok_or_else(|| HeartbeatError::Unknown(name.to_owned()))?;
        Ok(view(&e.def, &e.state, self.clock.now()))
    }

    /// One page of heartbeats ordered by name, starting after `after`; the next cursor is
    /// the last name of a full page when more follow.
    pub fn list(&self, after: Option<&str>, limit: usize) -> (Vec<View>, Option<String>) {
        let now = self.clock.now();
        let entries = self.entries.lock();
        let range = match after {
            Some(a) => entries.range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => entries.range::<str, _>(..),
        };
        let mut out: Vec<View> = Vec::new();
        let mut more = false;
        for (_, e) in range {
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(view(&e.def, &e.state, now));
        }
        let next = if more {
            out.last().map(|v| v.name.clone())
        } else {
            None
        };
        (out, next)
    }

    /// Handles a ping from `source` (the token's name): records the event, updates and
    /// persists the state, writes the series. Unknown names are refused, never created.
    pub fn ping(
        &self,
        name: &str,
        kind: PingKind,
        details: PingDetails,
        source: &str,
    ) -> Result<View, HeartbeatError> {
        validate_name(name)?;
        if let Some(m) = &details.message
            && m.len() > self.config.max_message_bytes
        {
            return Err(HeartbeatError::BadField {
                field: "message",
                reason: format!(
                    "{} bytes exceed [heartbeat] max_message_bytes ({})",
                    m.len(),
                    self.config.max_message_bytes
                ),
            });
        }
        let now = self.clock.now();
        let mut entries = self.entries.lock();
        let entry = entries
            .get(name)
            .ok_or_else(|| HeartbeatError::Unknown(name.to_owned()))?;
        let mut state = entry.state.clone();
        let run_duration = state.apply(kind, &details, now);
        let def = entry.def.clone();
        if let Some(events) = &self.events {
            let event = ping_event(&def, kind, &details, run_duration, source, now)?;
            events.record_event(event)?;
        }
        let mut next = entries.clone();
        if let Some(e) = next.get_mut(name) {
            e.state = state.clone();
        }
        self.persist(&next)?;
        *entries = next;
        drop(entries);
        if let Some(c) = self.counters.pings.get(kind as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let l = lateness(&def, &state, now);
        let mut series: Vec<(SeriesKey, f64)> = Vec::new();
        let mut push = |metric: &str, extra: Option<(&str, &str)>, v: f64| {
            let mut labels = vec![Label::new("heartbeat", name)];
            if let Some((k, val)) = extra {
                labels.push(Label::new(k, val));
            }
            if let Ok(k) = SeriesKey::new(metric, labels) {
                series.push((k, v));
            }
        };
        match kind {
            PingKind::Start => {}
            PingKind::Success | PingKind::Fail => {
                if let Some(d) = run_duration {
                    push("roaster_heartbeat_duration_seconds", None, d);
                }
                push(
                    "roaster_heartbeat_runs_total",
                    Some(("result", "success")),
                    state.successes as f64,
                );
                push(
                    "roaster_heartbeat_runs_total",
                    Some(("result", "fail")),
                    state.failures as f64,
                );
                if kind == PingKind::Success {
                    push(
                        "roaster_heartbeat_last_success_timestamp_seconds",
                        None,
                        now.millis() as f64 / 1000.0,
                    );
                }
            }
        }
        push("roaster_heartbeat_late_seconds", None, l.late_seconds());
        push("roaster_heartbeat_up", None, l.up());
        self.write_series(&series, now);
        Ok(view(&def, &state, now))
    }

    /// Writes `roaster_heartbeat_late_seconds` and `roaster_heartbeat_up` for every heartbeat
    /// at the current time (the periodic job calls this every `series_interval_ms`).
    pub fn write_lateness_series(&self) {
        let now = self.clock.now();
        let mut series = Vec::new();
        for (name, l) in self.lateness_all(now) {
            for (metric, v) in [
                ("roaster_heartbeat_late_seconds", l.late_seconds()),
                ("roaster_heartbeat_up", l.up()),
            ] {
                if let Ok(k) = SeriesKey::new(metric, vec![Label::new("heartbeat", name.as_str())]) {
                    series.push((k, v));
                }
            }
        }
        self.write_series(&series, now);
    }

    fn lateness_all(&self, now: Timestamp) -> Vec<(String, Lateness)> {
        self.entries
            .lock()
            .values()
            .map(|e| (e.def.name.clone(), lateness(&e.def, &e.state, now)))
            .collect()
    }

    fn write_series(&self, series: &[(SeriesKey, f64)], now: Timestamp) {
        let Some(sink) = &self.sink else { return };
        if series.is_empty() {
            return;
        }
        let mut points = Vec::with_capacity(series.len());
        for (key, value) in series {
            match sink.resolve(key) {
                Ok(id) => points.push(Point {
                    series: id,
                    ts: now.millis(),
                    value: *value,
                }),
                Err(e) => {
                    self.counters
                        .series_write_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(series = %key, error = %e, "heartbeat series rejected");
                }
            }
        }
        if let Err(e) = sink.write(&points, false) {
            self.counters
                .series_write_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "writing heartbeat series failed");
        }
    }

    /// Renders the live lateness gauges and the registry's counters for `/metrics`.
    pub fn render_metrics(&self, out: &mut Exposition) {
        let all = self.lateness_all(self.clock.now());
        out.family(
            "roaster_heartbeat_late_seconds",
            "gauge",
            "Seconds a heartbeat is past its period plus grace (0 unless late).",
        );
        for (name, l) in &all {
            out.sample(
                "roaster_heartbeat_late_seconds",
                &[("heartbeat", name)],
                l.late_seconds(),
            );
        }
        out.family(
            "roaster_heartbeat_up",
            "gauge",
            "1 when a heartbeat is on time, 0 when late, failing or never seen.",
        );
        for (name, l) in &all {
            out.sample("roaster_heartbeat_up", &[("heartbeat", name)], l.up());
        }
        out.family(
            "roaster_heartbeat_pings_total",
            "counter",
            "Heartbeat pings accepted since start, by kind.",
        );
        for kind in [PingKind::Start, PingKind::Success, PingKind::Fail] {
            let v = self
                .counters
                .pings
                .get(kind as usize)
                .map_or(0, |c| c.load(Ordering::Relaxed));
            out.sample(
                "roaster_heartbeat_pings_total",
                &[("kind", kind.as_str())],
                v as f64,
            );
        }
        out.counter(
            "roaster_heartbeat_series_write_failures_total",
            "Heartbeat series writes that storage refused (the ping itself succeeded).",
            self.counters.series_write_failures.load(Ordering::Relaxed),
        );
    }
}

fn check_config_defs(
    defs: &[HeartbeatDef],
    config: &HeartbeatConfig,
) -> Result<Vec<Definition>, HeartbeatError> {
    let mut out: Vec<Definition> = Vec::with_capacity(defs.len());
    for d in defs {
        validate_name(&d.name)?;
        if out.iter().any(|o| o.name == d.name) {
            return Err(HeartbeatError::BadField {
                field: "heartbeats.name",
                reason: format!("{:?} is defined twice", d.name),
            });
        }
        out.push(Definition {
            name: d.name.clone(),
            period_ms: parse_period("heartbeats.period", &d.period, false, config.max_period_ms)?,
            grace_ms: parse_period("heartbeats.grace", &d.grace, true, config.max_period_ms)?,
            origin: Origin::Config,
        });
    }
    if out.len() > config.max_definitions {
        return Err(HeartbeatError::TooMany(config.max_definitions));
    }
    Ok(out)
}

/// Writes the lateness series every `interval_ms` until `cancel` fires (runs on the human
/// runtime; the write itself goes to the blocking pool).
pub async fn series_loop(hb: Arc<Heartbeats>, interval_ms: u64, cancel: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(interval_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                let hb = hb.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || hb.write_lateness_series()).await {
                    tracing::error!(error = %e, "heartbeat series job failed");
                }
            }
        }
    }
}

/// Checks the `[[heartbeats]]` entries of a config (used by config validation).
pub fn validate_config(defs: &[HeartbeatDef], config: &HeartbeatConfig) -> Result<(), HeartbeatError> {
    check_config_defs(defs, config).map(|_| ())
}

fn random_u128() -> u128 {
    let mut b = [0u8; 16];
    // A failing random source only weakens id uniqueness within one millisecond; the
    // time-ordered prefix still differs between pings of one heartbeat.
    let _ = getrandom::fill(&mut b);
    u128::from_le_bytes(b)
}

/// Builds the `heartbeat.<kind>` event of a ping.
fn ping_event(
    def: &Definition,
    kind: PingKind,
    details: &PingDetails,
    run_duration: Option<f64>,
    source: &str,
    now: Timestamp,
) -> Result<Event, HeartbeatError> {
    let summary = match (kind, run_duration) {
        (PingKind::Start, _) => format!("heartbeat {} started", def.name),
        (PingKind::Success, Some(d)) => format!("heartbeat {} succeeded after {d:.1} s", def.name),
        (PingKind::Success, None) => format!("heartbeat {} succeeded", def.name),
        (PingKind::Fail, Some(d)) => format!("heartbeat {} failed after {d:.1} s", def.name),
        (PingKind::Fail, None) => format!("heartbeat {} failed", def.name),
    };
    let payload = serde_json::json!({
        "duration_seconds": run_duration,
        "exit_code": details.exit_code,
        "message": details.message,
    });
    let payload = serde_json::value::to_raw_value(&payload).map_err(|e| HeartbeatError::BadField {
        field: "payload",
        reason: e.to_string(),
    })?;
    let mut labels = BTreeMap::new();
    labels.insert("heartbeat".to_owned(), def.name.clone());
    Ok(Event {
        id: EventId::generate(now, random_u128()),
        time: now,
        received_at: now,
        source: source.to_owned(),
        kind: format!("heartbeat.{}", kind.as_str()),
        subject: Some(def.name.clone()),
        actor: None,
        host: details.host.clone(),
        service: None,
        labels,
        severity: if kind == PingKind::Fail {
            Severity::Warning
        } else {
            Severity::Info
        },
        summary,
        payload: Some(payload),
    })
}

// ---------------------------------------------------------------------------------------
// HTTP: robot-plane pings.

/// What the ping routes need.
#[derive(Clone)]
pub struct PingState {
    /// The registry.
    pub heartbeats: Arc<Heartbeats>,
    /// Tokens (ingest scope required).
    pub tokens: Arc<TokenStore>,
}

/// The robot plane's heartbeat routes: `POST /api/v1/heartbeats/{name}/{start|success|fail}`,
/// bearer token with `ingest` scope (admin also allowed, as everywhere on the robot plane).
pub fn robot_router(state: PingState) -> Router {
    let config = &state.heartbeats.config;
    // The body limit lets a larger body fail in the handler with a clear message.
    let (max_body, max_pings) = (
        config.max_ping_body_bytes.saturating_add(1),
        config.max_concurrent_pings.max(1),
    );
    Router::new()
        .route("/api/v1/heartbeats/{name}/{kind}", post(ping_handler))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(max_pings))
        .with_state(state)
}

/// Ping parameters, from the query string or a JSON body (the body wins per field).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PingParams {
    #[serde(default)]
    duration: Option<serde_json::Value>,
    #[serde(default)]
    exit_code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    host: Option<String>,
}

fn number(field: &'static str, v: &serde_json::Value) -> Result<f64, HeartbeatError> {
    let n = match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    n.filter(|n| n.is_finite())
        .ok_or_else(|| HeartbeatError::BadField {
            field,
            reason: format!("{v} is not a number"),
        })
}

fn details(query: PingParams, body: Option<PingParams>) -> Result<PingDetails, HeartbeatError> {
    let body = body.unwrap_or_default();
    let duration = body.duration.or(query.duration);
    let exit_code = body.exit_code.or(query.exit_code);
    let duration_s = match duration {
        Some(v) => {
            let d = number("duration", &v)?;
            if !(0.0..=1e9).contains(&d) {
                return Err(HeartbeatError::BadField {
                    field: "duration",
                    reason: format!("{d} is outside 0..=1e9 seconds"),
                });
            }
            Some(d)
        }
        None => None,
    };
    let exit_code = match exit_code {
        Some(v) => {
            let c = number("exit_code", &v)?;
            if c.fract() != 0.0 || !(-2_147_483_648.0..=4_294_967_295.0).contains(&c) {
                return Err(HeartbeatError::BadField {
                    field: "exit_code",
                    reason: format!("{c} is not a 32-bit integer"),
                });
            }
            Some(c as i64)
        }
        None => None,
    };
    let host = body.host.or(query.host);
    if let Some(h) = &host
        && (h.is_empty() || h.len() > 255 || h.chars().any(char::is_control))
    {
        return Err(HeartbeatError::BadField {
            field: "host",
            reason: "must be 1 to 255 bytes without control characters".into(),
        });
    }
    Ok(PingDetails {
        duration_s,
        exit_code,
        message: body.message.or(query.message),
        host,
    })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn ping_handler(
    AxState(st): AxState<PingState>,
    UrlPath((name, kind)): UrlPath<(String, String)>,
    query: Result<Query<PingParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((token_name, scope)) = bearer(&headers).and_then(|t| st.tokens.identify(t)) else {
        let mut r = api_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a bearer token with ingest scope is required",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    };
    if !scope.can_ingest() {
        return api_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("a token with {} scope may not ping heartbeats", scope.as_str()),
        );
    }
    let Some(kind) = PingKind::parse(&kind) else {
        return api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "heartbeat pings are /api/v1/heartbeats/NAME/start, /success or /fail",
        );
    };
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, "bad_data", &e.body_text()),
    };
    let max_body = st.heartbeats.config.max_ping_body_bytes;
    if body.len() > max_body {
        return api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_data",
            &format!("ping body exceeds [heartbeat] max_ping_body_bytes ({max_body})"),
        );
    }
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<PingParams>(&body) {
            Ok(p) => Some(p),
            Err(e) => {
                return api_error(
                    StatusCode::BAD_REQUEST,
                    "bad_data",
                    &format!("ping body must be a JSON object with duration, exit_code, message, host: {e}"),
                );
            }
        }
    };
    let details = match details(query, body) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    let hb = st.heartbeats.clone();
    match tokio::task::spawn_blocking(move || hb.ping(&name, kind, details, &token_name)).await {
        Ok(Ok(v)) => Json(serde_json::json!({"status": "success", "data": v})).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP: human-plane definitions. The routes are mounted by `human::router` behind its
// read (GET) and admin (PUT, DELETE) checks; the handlers only need the registry.

/// `PUT /api/v1/heartbeats/{name}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefineBody {
    period: String,
    #[serde(default = "zero")]
    grace: String,
}

/// `GET /api/v1/heartbeats` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, Response> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()))
}

/// `GET /api/v1/heartbeats?limit=&cursor=`: a page of heartbeats with their status.
pub async fn list_handler(
    AxState(hb): AxState<Arc<Heartbeats>>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(p) = match params {
        Ok(p) => p,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, "bad_data", &e.body_text()),
    };
    let limit = p.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return api_error(
            StatusCode::BAD_REQUEST,
            "bad_data",
            &format!("limit must be 1 to {MAX_PAGE}"),
        );
    }
    match blocking(move || hb.list(p.cursor.as_deref(), limit)).await {
        Ok((list, next)) => Json(serde_json::json!({
            "status": "success",
            "data": {"heartbeats": list, "next_cursor": next},
        }))
        .into_response(),
        Err(r) => r,
    }
}

/// `GET /api/v1/heartbeats/{name}`.
pub async fn get_handler(AxState(hb): AxState<Arc<Heartbeats>>, UrlPath(name): UrlPath<String>) -> Response {
    match blocking(move || hb.get(&name)).await {
        Ok(Ok(v)) => Json(serde_json::json!({"status": "success", "data": v})).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(r) => r,
    }
}

/// `PUT /api/v1/heartbeats/{name}` with `{"period":"1h","grace":"10m"}`: 201 when new, 200
/// when changed.
pub async fn put_handler(
    AxState(hb): AxState<Arc<Heartbeats>>,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> Response {
    let parsed: DefineBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "bad_data",
                &format!("body must be {{\"period\": \"1h\", \"grace\": \"10m\"}}: {e}"),
            );
        }
    };
    match blocking(move || hb.define(&name, &parsed.period, &parsed.grace)).await {
        Ok(Ok((v, created))) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(serde_json::json!({"status": "success", "data": v}))).into_response()
        }
        Ok(Err(e)) => e.into_response(),
        Err(r) => r,
    }
}

/// `DELETE /api/v1/heartbeats/{name}`: API definitions only (config ones answer 409).
pub async fn delete_handler(
    AxState(hb): AxState<Arc<Heartbeats>>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    match blocking(move || hb.remove(&name)).await {
        Ok(Ok(())) => {
            Json(serde_json::json!({"status": "success", "data": {"deleted": true}})).into_response()
        }
        Ok(Err(e)) => e.into_response(),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(period_ms: i64, grace_ms: i64) -> Definition {
        Definition {
            name: "backup".into(),
            period_ms,
            grace_ms,
            origin: Origin::Config,
        }
    }

    const H: i64 = 3_600_000;
    const M: i64 = 60_000;

    /// What, a script of pings at times (ms), when to look, and the expected lateness.
    type Case<'a> = (&'a str, &'a [(PingKind, i64)], i64, Lateness);

    #[test]
    fn state_machine_table() {
        use PingKind::*;
        let d = def(H, 10 * M);
        let none = PingDetails::default();
        let cases: &[Case] = &[
            ("nothing yet", &[], 5 * H, Lateness::NeverSeen),
            ("success then on time", &[(Success, 0)], H, Lateness::OnTime),
            (
                "at the deadline is on time",
                &[(Success, 0)],
                H + 10 * M,
                Lateness::OnTime,
            ),
            (
                "past the deadline",
                &[(Success, 0)],
                H + 11 * M,
                Lateness::Late { by_ms: M },
            ),
            ("failure", &[(Success, 0), (Fail, H)], H + M, Lateness::Failing),
            ("failure before any success", &[(Fail, 0)], M, Lateness::Failing),
            (
                "success clears failure",
                &[(Fail, 0), (Success, M)],
                2 * M,
                Lateness::OnTime,
            ),
            (
                "start is a sign of life",
                &[(Success, 0), (Start, H)],
                H + 30 * M,
                Lateness::OnTime,
            ),
            (
                "a run that never finishes turns late",
                &[(Success, 0), (Start, H)],
                2 * H + 15 * M,
                Lateness::Late { by_ms: 5 * M },
            ),
            (
                "start only, unfinished, in time",
                &[(Start, 0)],
                M,
                Lateness::OnTime,
            ),
            (
                "start only, stuck",
                &[(Start, 0)],
                2 * H,
                Lateness::Late { by_ms: 50 * M },
            ),
            (
                "retry after a failure is running",
                &[(Fail, 0), (Start, M)],
                2 * M,
                Lateness::OnTime,
            ),
            (
                "failed and silent stays failing, not late",
                &[(Success, 0), (Fail, H)],
                10 * H,
                Lateness::Failing,
            ),
        ];
        for (what, pings, at, want) in cases {
            let mut s = State::default();
            for (k, t) in pings.iter() {
                s.apply(*k, &none, Timestamp(*t));
            }
            assert_eq!(lateness(&d, &s, Timestamp(*at)), *want, "{what}");
        }
    }

    #[test]
    fn durations_come_from_the_ping_or_the_start() {
        let mut s = State::default();
        s.apply(PingKind::Start, &PingDetails::default(), Timestamp(1_000));
        let d = s.apply(PingKind::Success, &PingDetails::default(), Timestamp(13_500));
        assert_eq!(d, Some(12.5));
        assert_eq!(s.running_since_ms, None);
        let given = PingDetails {
            duration_s: Some(3.0),
            exit_code: Some(2),
            ..PingDetails::default()
        };
        s.apply(PingKind::Start, &PingDetails::default(), Timestamp(20_000));
        assert_eq!(s.apply(PingKind::Fail, &given, Timestamp(30_000)), Some(3.0));
        assert_eq!(s.last_exit_code, Some(2));
        assert_eq!(
            s.apply(PingKind::Success, &PingDetails::default(), Timestamp(40_000)),
            None
        );
        assert_eq!((s.successes, s.failures), (2, 1));
    }

    #[test]
    fn names_are_checked() {
        for ok in ["backup", "db.backup-nightly_2", &"a".repeat(128)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", &"a".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    fn registry(dir: &Path, clock: Arc<model::ManualClock>, defs: &[HeartbeatDef]) -> Heartbeats {
        Heartbeats::open(
            dir,
            &HeartbeatConfig::default(),
            defs,
            clock,
            HeartbeatSinks {
                samples: None,
                events: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn definitions_and_state_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(model::ManualClock::new(Timestamp(1_000_000)));
        let cfg = [HeartbeatDef {
            name: "nightly".into(),
            period: "1d".into(),
            grace: "1h".into(),
        }];
        let hb = registry(dir.path(), clock.clone(), &cfg);
        assert!(hb.define("hourly", "1h", "5m").unwrap().1);
        assert!(!hb.define("hourly", "2h", "5m").unwrap().1);
        assert!(matches!(
            hb.define("nightly", "1h", "0"),
            Err(HeartbeatError::ConfigDefined(_))
        ));
        assert!(matches!(
            hb.remove("nightly"),
            Err(HeartbeatError::ConfigDefined(_))
        ));
        assert!(matches!(
            hb.ping("nope", PingKind::Start, PingDetails::default(), "t"),
            Err(HeartbeatError::Unknown(_))
        ));
        hb.ping("hourly", PingKind::Success, PingDetails::default(), "t")
            .unwrap();
        hb.ping("nightly", PingKind::Fail, PingDetails::default(), "t")
            .unwrap();
        drop(hb);
        let hb = registry(dir.path(), clock.clone(), &cfg);
        let h = hb.get("hourly").unwrap();
        assert_eq!((h.period_seconds, h.status, h.successes), (7200.0, "on_time", 1));
        assert_eq!(hb.get("nightly").unwrap().status, "failing");
        clock.advance(3 * H);
        assert_eq!(hb.get("hourly").unwrap().status, "late");
        let (page, next) = hb.list(None, 1);
        assert_eq!(page[0].name, "hourly");
        let (page, next2) = hb.list(next.as_deref(), 1);
        assert_eq!((page[0].name.as_str(), next2), ("nightly", None));
        hb.remove("hourly").unwrap();
        drop(hb);
        let hb = registry(dir.path(), clock, &cfg);
        assert!(matches!(hb.get("hourly"), Err(HeartbeatError::Unknown(_))));
    }

    #[test]
    fn bad_definitions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(model::ManualClock::new(Timestamp(0)));
        let hb = registry(dir.path(), clock, &[]);
        for (period, grace) in [("0s", "0"), ("soon", "0"), ("1h", "-5m"), ("400d", "0")] {
            assert!(
                matches!(
                    hb.define("x", period, grace),
                    Err(HeartbeatError::BadField { .. })
                ),
                "{period} {grace}"
            );
        }
        let long = PingDetails {
            message: Some("x".repeat(2000)),
            ..PingDetails::default()
        };
        hb.define("x", "1h", "0").unwrap();
        assert!(matches!(
            hb.ping("x", PingKind::Fail, long, "t"),
            Err(HeartbeatError::BadField { field: "message", .. })
        ));
    }

    #[test]
    fn config_entries_parse_and_validate() {
        let text = "[[heartbeats]]\nname = \"nightly-backup\"\nperiod = \"1d\"\ngrace = \"1h\"\n\n[[heartbeats]]\nname = \"hourly\"\nperiod = \"3600\"\n";
        let c = crate::config::Config::from_toml_str(text).unwrap();
        assert_eq!(c.heartbeats.len(), 2);
        assert_eq!(c.heartbeats[1].grace, "0s");
        c.validate().unwrap();
        let bad = crate::config::Config::from_toml_str("[[heartbeats]]\nname = \"a b\"\nperiod = \"1h\"\n")
            .unwrap();
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("heartbeats") && e.contains("a b"), "{e}");
    }
}
