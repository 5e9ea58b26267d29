//! The server's configuration: one serde tree, documented field by field, loaded from TOML,
//! overlaid with `ROASTER_<SECTION>_<KEY>` environment variables, then validated into
//! [`Settings`] before anything starts.
//!
//! Invariants:
//! - every struct is `deny_unknown_fields` + `default`, so a typo is an error naming the key and
//!   an empty file means "all defaults";
//! - `config/roaster.example.toml` documents every key with its default; tests keep the two in
//!   sync (the example parses to `Config::default()`, and every key of the default appears in it);
//! - the environment overlay is generic: the config is serialized to a [`toml::Value`] tree, each
//!   `ROASTER_*` variable whose name starts with a section (`ROASTER_SERVER_`, `ROASTER_STORAGE_`,
//!   `ROASTER_INGEST_`, `ROASTER_QUERY_`, `ROASTER_EVENTS_`) must name a key of that section (nested tables are
//!   joined with `_`), and its value replaces that key before the tree is deserialized again.
//!   A string key takes the variable verbatim; any other key parses it as a TOML value
//!   (`8`, `true`, `["a", "b"]`), falling back to a string so the error names the key.
//!   `ROASTER_ADMIN_TOKEN` and `ROASTER_TOKEN` are reserved secrets, never config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The name of the environment variable holding the first admin token (not a config key).
pub const ADMIN_TOKEN_ENV: &str = "ROASTER_ADMIN_TOKEN";
/// The name of the environment variable `roaster ctl` reads its token from (not a config key).
pub const CLIENT_TOKEN_ENV: &str = "ROASTER_TOKEN";
/// The prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "ROASTER_";

/// The documented default configuration, exactly as `roaster config example` prints it.
pub const EXAMPLE_TOML: &str = include_str!("../../../config/roaster.example.toml");

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners, data directory, logging, shutdown and the human plane's budgets.
    pub server: ServerConfig,
    /// The embedded time-series engine.
    pub storage: StorageConfig,
    /// Robot-facing ingest: plaintext listeners, limits, queues (see the `ingest` crate).
    pub ingest: ingest::IngestConfig,
    /// Query limits for the Prometheus-compatible API (see the `query` crate).
    pub query: query::QueryLimits,
    /// The event store: limits, pages and retention (see [`crate::events`]).
    pub events: crate::events::EventsConfig,
    /// Limits of the heartbeat registry (see [`crate::heartbeat`]).
    pub heartbeat: crate::heartbeat::HeartbeatConfig,
    /// Heartbeats defined in the config file (`[[heartbeats]]`); absent from the TOML tree
    /// when there are none, so the example documents them as comments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub heartbeats: Vec<crate::heartbeat::HeartbeatDef>,
    /// The audit trail's queue and bounds (see [`crate::audit`]).
    pub audit: crate::audit::AuditConfig,
}

/// `[server]`: listeners, data directory and the human plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Human plane HTTP (query and management API) listen address; port 0 picks a free port.
    pub human_listen: String,
    /// Robot plane HTTP (remote-write, Influx line, JSON ingest) listen address; port 0 picks a
    /// free port; "off" disables it.
    pub robot_listen: String,
    /// Directory holding the time-series data, tokens and switch state. `--data-dir` overrides it.
    pub data_dir: String,
    /// Log filter in `RUST_LOG` syntax (for example "info" or "info,tsdb=debug"); logs are JSON on stderr.
    pub log_level: String,
    /// How long a graceful shutdown (SIGTERM/SIGINT) may take before the server gives up
    /// draining and closes storage anyway.
    pub shutdown_timeout_ms: u64,
    /// Worker threads of the human plane's runtime.
    pub human_worker_threads: usize,
    /// Worker threads of the robot plane's runtime (1 or 2 is plenty: parsing is batched).
    pub robot_worker_threads: usize,
    /// Most human-plane requests in flight at once; more wait in line.
    pub human_max_concurrent_requests: usize,
    /// Most storage-reading requests (queries, export, series, labels) running at once on the
    /// human plane's blocking pool; more wait in line. `[query] max_concurrent_queries` bounds
    /// the query API's line (running plus waiting); past it the API answers 503 at once.
    pub human_max_concurrent_queries: usize,
    /// Most threads of the human plane's blocking pool (storage calls run there).
    pub human_max_blocking_threads: usize,
    /// Largest request body the human plane accepts (form-encoded queries, JSON bodies).
    pub human_max_body_bytes: usize,
    /// Time limit for one human-plane query request (export streams are not cut); keep it above
    /// `[query] timeout_ms`, which stops the evaluation itself.
    pub human_request_timeout_ms: u64,
    /// Series an export stream may buffer ahead of the client before it waits.
    pub export_buffer_series: usize,
    /// Most points one export response may carry; the stream ends early (with a log line) past it.
    pub export_max_points: u64,
    /// How long the result of the "storage writable" probe of `/readyz` is reused.
    pub readiness_probe_cache_ms: u64,
    /// Longest, in microseconds, a small query API request (`/api/v1/query` or `query_range`
    /// of at most 512 bytes of selectors, numbers and operators: no function, range, regex or
    /// negative matcher) is evaluated on the worker that parsed it, saving two thread hand-offs
    /// (a third of a one-series query's time). Past it the attempt stops and the query runs
    /// again under `block_in_place`, so the worker is never held much longer. 0 turns this off;
    /// at most 10000.
    pub human_inline_query_budget_us: u64,
    /// Longest, in microseconds, a human-plane connection that has just answered spins on its
    /// socket for the next request before it waits in the event loop (see
    /// `crates/server/src/busy_poll.rs`). Learnt per connection: only a client that asked again
    /// within this time last round (twice it if that request woke the server) is waited for
    /// this way, so idle and remote clients cost nothing. The listener likewise spins for a new
    /// connection for this long after the last connection came or went, while connections keep
    /// coming within it (clients that open a connection per request). Saves the wake-up of a
    /// sleeping thread (on a virtual machine about a third of a one-series query's time). When
    /// half the recent spins were preempted (the CPU is shared with the client or other work),
    /// spinning stops for 1 to 128 ms, longer while that repeats. 0 turns both off; at most 1000.
    pub human_busy_poll_us: u64,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            human_listen: "127.0.0.1:8080".into(),
            robot_listen: "127.0.0.1:8081".into(),
            data_dir: "./data".into(),
            log_level: "info".into(),
            shutdown_timeout_ms: 30_000,
            human_worker_threads: 1,
            robot_worker_threads: 2,
            human_max_concurrent_requests: 64,
            human_max_concurrent_queries: 4,
            human_max_blocking_threads: 8,
            human_max_body_bytes: 1 << 20,
            human_request_timeout_ms: 150_000,
            export_buffer_series: 64,
            export_max_points: 2_000_000_000,
            readiness_probe_cache_ms: 1_000,
            human_inline_query_budget_us: 300,
            human_busy_poll_us: 100,
        }
    }
}

/// How the write-ahead log is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncMode {
    /// fsync after every batch; an acknowledged write is never lost, at the cost of throughput.
    EveryBatch,
    /// fsync every `fsync_interval_ms`; a crash loses at most that much unacknowledged data
    /// (writers that ask for durability still wait for the fsync covering them).
    Interval,
}

/// `[storage]`: the embedded time-series engine (maps onto `tsdb::Options`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// "every-batch" (fsync each batch) or "interval" (fsync every `fsync_interval_ms`).
    pub fsync_policy: FsyncMode,
    /// The fsync period when `fsync_policy = "interval"`.
    pub fsync_interval_ms: u64,
    /// How far behind the newest sample a late or backfilled sample may be and still be
    /// accepted; older samples are rejected and counted.
    pub ooo_window_ms: i64,
    /// Time span of one immutable on-disk block.
    pub block_duration_ms: i64,
    /// How long raw samples are kept.
    pub retention_raw_ms: i64,
    /// How long per-minute rollups are kept.
    pub retention_minute_ms: i64,
    /// How long per-hour rollups are kept.
    pub retention_hour_ms: i64,
    /// Most bytes the data directory's blocks may take; the oldest raw blocks go first. 0 means no limit.
    pub max_disk_bytes: u64,
    /// A write-ahead-log segment is closed and a new one started past this size.
    pub wal_segment_bytes: u64,
    /// Write-ahead-log bytes not yet handed to the OS past which appends wait for the
    /// committer and `/readyz` reports `wal_backlog`.
    pub max_wal_backlog_bytes: u64,
    /// Pending write-ahead-log bytes past which the committer is woken early.
    pub wal_flush_bytes: u64,
    /// In-order samples kept raw per series in memory before they are compressed.
    pub head_chunk_points: usize,
    /// Out-of-order samples buffered per series before they are merged into its chunks.
    pub max_ooo_points_per_series: usize,
    /// How often background maintenance cuts blocks and applies retention; 0 turns it off
    /// (then only `POST /api/v1/admin/compact` seals data).
    pub maintenance_interval_ms: u64,
}

impl Default for StorageConfig {
    /// The engine's own defaults, so the two cannot drift apart.
    fn default() -> StorageConfig {
        let o = tsdb::Options::default();
        let (fsync_policy, fsync_interval_ms) = match o.fsync {
            tsdb::FsyncPolicy::EveryBatch => (FsyncMode::EveryBatch, 100),
            tsdb::FsyncPolicy::Interval(d) => (FsyncMode::Interval, millis(d)),
        };
        StorageConfig {
            fsync_policy,
            fsync_interval_ms,
            ooo_window_ms: o.ooo_window_ms,
            block_duration_ms: o.block_duration_ms,
            retention_raw_ms: o.retention.raw_ms,
            retention_minute_ms: o.retention.minute_ms,
            retention_hour_ms: o.retention.hour_ms,
            max_disk_bytes: o.retention.max_disk_bytes.unwrap_or(0),
            wal_segment_bytes: o.wal_segment_bytes,
            max_wal_backlog_bytes: o.max_wal_backlog_bytes,
            wal_flush_bytes: o.wal_flush_bytes,
            head_chunk_points: o.head_chunk_points,
            max_ooo_points_per_series: o.max_ooo_points_per_series,
            maintenance_interval_ms: o.maintenance_interval.map_or(0, millis),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Why a configuration could not be loaded or validated. Each message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not fit the schema (unknown key, wrong type).
    #[error("invalid config{origin}: {message}")]
    Parse {
        /// Where the text came from (" in FILE", or empty).
        origin: String,
        /// The parser's message, which names the key.
        message: String,
    },
    /// A `ROASTER_*` environment variable looks like a config key but names none.
    #[error(
        "environment variable {var} names no config key (expected ROASTER_<SECTION>_<KEY>, e.g. ROASTER_SERVER_HUMAN_LISTEN)"
    )]
    UnknownEnvKey {
        /// The variable's name.
        var: String,
    },
    /// A value is well-typed but not acceptable.
    #[error("invalid value for {key}: {reason}")]
    Invalid {
        /// The dotted key, e.g. `server.human_listen`.
        key: String,
        /// Why it was refused.
        reason: String,
    },
}

impl Config {
    /// Parses a TOML document (no environment overlay).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: String::new(),
            message: e.to_string(),
        })
    }

    /// Loads the file at `path` (or the defaults when `None`), then overlays the given
    /// environment variables (pass `std::env::vars()`).
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let base = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                toml::from_str::<Config>(&text).map_err(|e| ConfigError::Parse {
                    origin: format!(" in {}", p.display()),
                    message: e.to_string(),
                })?
            }
            None => Config::default(),
        };
        base.with_env(env)
    }

    /// Returns this config with `ROASTER_<SECTION>_<KEY>` variables applied (see the module doc).
    pub fn with_env(self, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut tree = to_value(&self)?;
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != ADMIN_TOKEN_ENV && k != CLIENT_TOKEN_ENV)
            .collect();
        if vars.is_empty() {
            return Ok(self);
        }
        vars.sort();
        let sections: Vec<String> = match &tree {
            toml::Value::Table(t) => t.keys().cloned().collect(),
            _ => Vec::new(),
        };
        let mut applied = false;
        for (var, raw) in vars {
            let rest = var[ENV_PREFIX.len()..].to_ascii_lowercase();
            let Some(section) = sections
                .iter()
                .find(|s| rest.strip_prefix(s.as_str()).is_some_and(|r| r.starts_with('_')))
            else {
                // Not shaped like a config key (e.g. ROASTER_LOG_FORMAT of some wrapper script).
                continue;
            };
            let key = &rest[section.len() + 1..];
            let Some(toml::Value::Table(table)) = tree.get_mut(section.as_str()) else {
                return Err(ConfigError::UnknownEnvKey { var });
            };
            let Some(slot) = find_slot(table, key) else {
                return Err(ConfigError::UnknownEnvKey { var });
            };
            *slot = env_value(slot, &raw);
            applied = true;
        }
        if !applied {
            return Ok(self);
        }
        tree.try_into::<Config>().map_err(|e| ConfigError::Parse {
            origin: " from the environment".into(),
            message: e.to_string(),
        })
    }

    /// The configuration as a TOML value tree (what the env overlay and the sync tests walk).
    pub fn to_value(&self) -> Result<toml::Value, ConfigError> {
        to_value(self)
    }

    /// Checks every value and resolves it into [`Settings`]; fails with the offending key.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let s = &self.server;
        let human_listen = parse_addr("server.human_listen", &s.human_listen)?
            .ok_or_else(|| invalid("server.human_listen", "the human plane cannot be turned off"))?;
        let robot_listen = parse_addr("server.robot_listen", &s.robot_listen)?;
        if s.data_dir.trim().is_empty() {
            return Err(invalid("server.data_dir", "must not be empty"));
        }
        tracing_subscriber::EnvFilter::try_new(&s.log_level)
            .map_err(|e| invalid("server.log_level", &e.to_string()))?;
        for (key, v) in [
            ("server.human_worker_threads", s.human_worker_threads),
            ("server.robot_worker_threads", s.robot_worker_threads),
            (
                "server.human_max_concurrent_requests",
                s.human_max_concurrent_requests,
            ),
            (
                "server.human_max_concurrent_queries",
                s.human_max_concurrent_queries,
            ),
            ("server.human_max_blocking_threads", s.human_max_blocking_threads),
            ("server.human_max_body_bytes", s.human_max_body_bytes),
            ("server.export_buffer_series", s.export_buffer_series),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if s.human_busy_poll_us > 1_000 {
            return Err(invalid("server.human_busy_poll_us", "must be at most 1000"));
        }
        if s.human_inline_query_budget_us > 10_000 {
            return Err(invalid(
                "server.human_inline_query_budget_us",
                "must be at most 10000",
            ));
        }
        if s.robot_worker_threads > 64 || s.human_worker_threads > 64 {
            return Err(invalid("server.*_worker_threads", "must be at most 64"));
        }
        for (key, v) in [
            ("server.shutdown_timeout_ms", s.shutdown_timeout_ms),
            ("server.human_request_timeout_ms", s.human_request_timeout_ms),
            ("server.export_max_points", s.export_max_points),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        let st = &self.storage;
        if st.fsync_policy == FsyncMode::Interval && st.fsync_interval_ms == 0 {
            return Err(invalid(
                "storage.fsync_interval_ms",
                "must be greater than 0 with fsync_policy = \"interval\" (use \"every-batch\" instead)",
            ));
        }
        for (key, v) in [
            ("storage.ooo_window_ms", st.ooo_window_ms),
            ("storage.block_duration_ms", st.block_duration_ms),
            ("storage.retention_raw_ms", st.retention_raw_ms),
            ("storage.retention_minute_ms", st.retention_minute_ms),
            ("storage.retention_hour_ms", st.retention_hour_ms),
        ] {
            if v <= 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        for (key, v) in [
            ("storage.wal_segment_bytes", st.wal_segment_bytes),
            ("storage.max_wal_backlog_bytes", st.max_wal_backlog_bytes),
            ("storage.wal_flush_bytes", st.wal_flush_bytes),
            ("storage.head_chunk_points", st.head_chunk_points as u64),
            (
                "storage.max_ooo_points_per_series",
                st.max_ooo_points_per_series as u64,
            ),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if st.block_duration_ms < 60_000 {
            return Err(invalid(
                "storage.block_duration_ms",
                "must be at least 60000 (one minute)",
            ));
        }
        self.ingest
            .validate()
            .map_err(|e| invalid(&format!("ingest.{}", e.key), &e.problem))?;
        let q = &self.query;
        for (key, v) in [
            ("query.max_samples", q.max_samples),
            ("query.max_series", q.max_series),
            (
                "query.max_points_per_series_in_range",
                q.max_points_per_series_in_range,
            ),
            ("query.max_concurrent_queries", q.max_concurrent_queries),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if q.timeout.is_zero() {
            return Err(invalid("query.timeout_ms", "must be greater than 0"));
        }
        if q.lookback_delta_ms <= 0 {
            return Err(invalid("query.lookback_delta_ms", "must be greater than 0"));
        }
        if q.subquery_step_ms <= 0 {
            return Err(invalid("query.subquery_step_ms", "must be greater than 0"));
        }
        if q.parallelism > query::MAX_PARALLELISM {
            return Err(invalid(
                "query.parallelism",
                &format!("must be at most {}", query::MAX_PARALLELISM),
            ));
        }
        self.events
            .validate()
            .map_err(|(key, reason)| invalid(&format!("events.{key}"), &reason))?;
        if self.heartbeat.max_message_bytes > crate::heartbeat::MAX_MESSAGE_BYTES {
            return Err(invalid(
                "heartbeat.max_message_bytes",
                &format!(
                    "must be at most {} so a ping fits in an event payload",
                    crate::heartbeat::MAX_MESSAGE_BYTES
                ),
            ));
        }
        crate::heartbeat::validate_config(&self.heartbeats, &self.heartbeat)
            .map_err(|e| invalid("heartbeats", &e.to_string()))?;
        for (key, v) in [
            ("heartbeat.max_definitions", self.heartbeat.max_definitions),
            (
                "heartbeat.max_concurrent_pings",
                self.heartbeat.max_concurrent_pings,
            ),
            (
                "heartbeat.max_ping_body_bytes",
                self.heartbeat.max_ping_body_bytes,
            ),
            ("audit.queue_capacity", self.audit.queue_capacity),
            ("audit.batch_max", self.audit.batch_max),
            ("audit.max_field_bytes", self.audit.max_field_bytes),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        Ok(Settings {
            human_listen,
            robot_listen,
            data_dir: PathBuf::from(&s.data_dir),
            shutdown_timeout: Duration::from_millis(s.shutdown_timeout_ms),
            human_request_timeout: Duration::from_millis(s.human_request_timeout_ms),
            readiness_probe_cache: Duration::from_millis(s.readiness_probe_cache_ms),
        })
    }
}

/// What validation resolved: the typed forms of the keys that need parsing. Everything else is
/// read from [`Config`] directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The human plane's address.
    pub human_listen: SocketAddr,
    /// The robot plane's HTTP address; `None` when turned off.
    pub robot_listen: Option<SocketAddr>,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Graceful shutdown budget.
    pub shutdown_timeout: Duration,
    /// Time limit of one non-streaming human-plane request.
    pub human_request_timeout: Duration,
    /// Reuse window of the storage-writable probe.
    pub readiness_probe_cache: Duration,
}

fn to_value(config: &Config) -> Result<toml::Value, ConfigError> {
    toml::Value::try_from(config).map_err(|e| ConfigError::Parse {
        origin: " (serializing)".into(),
        message: e.to_string(),
    })
}

/// Finds the value whose path, joined with `_`, equals `key`, descending into nested tables.
fn find_slot<'a>(table: &'a mut toml::Table, key: &str) -> Option<&'a mut toml::Value> {
    if table.contains_key(key) {
        return table.get_mut(key);
    }
    let prefix = table
        .iter()
        .filter(|(k, v)| v.is_table() && key.strip_prefix(k.as_str()).is_some_and(|r| r.starts_with('_')))
        .map(|(k, _)| k.clone())
        .next()?;
    match table.get_mut(&prefix) {
        Some(toml::Value::Table(inner)) => find_slot(inner, &key[prefix.len() + 1..]),
        _ => None,
    }
}

/// Converts an environment string to a value of the slot's kind (see the module doc).
fn env_value(slot: &toml::Value, raw: &str) -> toml::Value {
    if slot.is_str() {
        return toml::Value::String(raw.to_owned());
    }
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn parse_addr(key: &str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let v = value.trim();
    if v.is_empty() || v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    v.parse::<SocketAddr>()
        .map(Some)
        .map_err(|e| invalid(key, &format!("{v:?} is not an ip:port socket address ({e})")))
}

fn invalid(key: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// Every dotted key path of a value tree (tables descend; arrays are leaves).
    fn keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, inner) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if inner.is_table() {
                    keys(inner, &path, out);
                } else {
                    out.push(path);
                }
            }
        }
    }

    #[test]
    fn example_file_is_the_default_config() {
        let example = Config::from_toml_str(EXAMPLE_TOML).unwrap();
        assert_eq!(example.to_value().unwrap(), Config::default().to_value().unwrap());
    }

    #[test]
    fn example_file_documents_every_key() {
        let mut want = Vec::new();
        keys(&Config::default().to_value().unwrap(), "", &mut want);
        let mut have = Vec::new();
        keys(
            &toml::from_str::<toml::Value>(EXAMPLE_TOML).unwrap(),
            "",
            &mut have,
        );
        want.sort();
        have.sort();
        assert_eq!(
            have, want,
            "config/roaster.example.toml is out of sync with server::config"
        );
        // Each key is preceded by a comment line explaining it.
        let lines: Vec<&str> = EXAMPLE_TOML.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.contains(" = ") && !line.starts_with('#') {
                assert!(i > 0 && lines[i - 1].starts_with('#'), "undocumented key: {line}");
            }
        }
    }

    #[test]
    fn defaults_validate_and_bind_loopback() {
        let s = Config::default().validate().unwrap();
        assert_eq!(s.human_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            s.robot_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:8081")
        );
        assert_eq!(s.data_dir, PathBuf::from("./data"));
    }

    #[test]
    fn env_overlay_table() {
        // (variables, check)
        type Check = fn(&Config) -> bool;
        let cases: &[(&[(&str, &str)], Check)] = &[
            (&[("ROASTER_SERVER_HUMAN_LISTEN", "0.0.0.0:9090")], |c| {
                c.server.human_listen == "0.0.0.0:9090"
            }),
            (&[("ROASTER_STORAGE_FSYNC_INTERVAL_MS", "50")], |c| {
                c.storage.fsync_interval_ms == 50
            }),
            (&[("ROASTER_STORAGE_FSYNC_POLICY", "every-batch")], |c| {
                c.storage.fsync_policy == FsyncMode::EveryBatch
            }),
            (&[("ROASTER_INGEST_MAX_SERIES_TOTAL", "1234")], |c| {
                c.ingest.max_series_total == 1234
            }),
            (
                &[("ROASTER_INGEST_PLAINTEXT_ALLOW_CIDRS", r#"["10.0.0.0/8"]"#)],
                |c| c.ingest.plaintext_allow_cidrs == ["10.0.0.0/8"],
            ),
            (&[("ROASTER_INGEST_HTTP_DURABLE_ACK", "false")], |c| {
                !c.ingest.http_durable_ack
            }),
            (&[("ROASTER_QUERY_MAX_SERIES", "7")], |c| c.query.max_series == 7),
            (&[("ROASTER_EVENTS_RETENTION_DAYS", "30")], |c| {
                c.events.retention_days == 30
            }),
            (&[("ROASTER_EVENTS_SQLITE_SYNCHRONOUS", "full")], |c| {
                c.events.sqlite_synchronous == crate::events::EventsSync::Full
            }),
            // A string key takes the value verbatim, even when it looks like a number.
            (&[("ROASTER_SERVER_LOG_LEVEL", "123")], |c| {
                c.server.log_level == "123"
            }),
            // Reserved secrets and variables outside the config sections are ignored.
            (
                &[
                    ("ROASTER_ADMIN_TOKEN", "x"),
                    ("ROASTER_TOKEN", "y"),
                    ("ROASTER_LOGFILE", "z"),
                ],
                |c| c.server == ServerConfig::default(),
            ),
        ];
        for (vars, check) in cases {
            let c = Config::default().with_env(env(vars)).unwrap();
            assert!(check(&c), "{vars:?}");
        }
    }

    #[test]
    fn env_errors_name_the_variable_or_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("ROASTER_SERVER_HUMAN_LISTN", "x")],
                "ROASTER_SERVER_HUMAN_LISTN",
            ),
            (&[("ROASTER_INGEST_NOPE", "1")], "ROASTER_INGEST_NOPE"),
            (
                &[("ROASTER_STORAGE_FSYNC_INTERVAL_MS", "soon")],
                "fsync_interval_ms",
            ),
            (&[("ROASTER_STORAGE_FSYNC_POLICY", "sometimes")], "fsync_policy"),
        ];
        for (vars, needle) in cases {
            let e = Config::default().with_env(env(vars)).unwrap_err().to_string();
            assert!(e.contains(needle), "{vars:?}: {e}");
        }
    }

    #[test]
    fn file_errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("[server]\nhuman_listn = \"x\"\n", "human_listn"),
            ("[storage]\nfsync_interval_ms = \"x\"\n", "fsync_interval_ms"),
            ("[nope]\n", "nope"),
            ("[ingest]\nmax_lines = 1\n", "max_lines"),
        ];
        for (text, needle) in cases {
            let e = Config::from_toml_str(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn validation_names_the_key() {
        type Edit = fn(&mut Config);
        let cases: &[(Edit, &str)] = &[
            (
                |c| c.server.human_listen = "localhost".into(),
                "server.human_listen",
            ),
            (|c| c.server.human_listen = "off".into(), "server.human_listen"),
            (|c| c.server.robot_listen = "8081".into(), "server.robot_listen"),
            (|c| c.server.data_dir = " ".into(), "server.data_dir"),
            (|c| c.server.log_level = "info,[".into(), "server.log_level"),
            (
                |c| c.server.human_max_concurrent_queries = 0,
                "server.human_max_concurrent_queries",
            ),
            (|c| c.storage.fsync_interval_ms = 0, "storage.fsync_interval_ms"),
            (|c| c.storage.block_duration_ms = 10, "storage.block_duration_ms"),
            (|c| c.storage.retention_raw_ms = -1, "storage.retention_raw_ms"),
            (
                |c| c.ingest.queue_capacity_points = 0,
                "ingest.queue_capacity_points",
            ),
            (|c| c.query.max_series = 0, "query.max_series"),
            (|c| c.events.max_page = 0, "events.max_page"),
            (|c| c.events.default_page = 5000, "events.default_page"),
        ];
        for (edit, key) in cases {
            let mut c = Config::default();
            edit(&mut c);
            match c.validate() {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(&got, key),
                other => panic!("{key}: {other:?}"),
            }
        }
        // every-batch makes the interval irrelevant.
        let mut c = Config::default();
        c.storage.fsync_policy = FsyncMode::EveryBatch;
        c.storage.fsync_interval_ms = 0;
        c.validate().unwrap();
        // robot HTTP can be turned off.
        c.server.robot_listen = "off".into();
        assert_eq!(c.validate().unwrap().robot_listen, None);
    }

    #[test]
    fn loads_a_file_with_env_on_top() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(
            &path,
            "[server]\nhuman_listen = \"127.0.0.1:0\"\nlog_level = \"debug\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), env(&[("ROASTER_SERVER_LOG_LEVEL", "warn")])).unwrap();
        assert_eq!(c.server.human_listen, "127.0.0.1:0");
        assert_eq!(c.server.log_level, "warn");
        assert!(matches!(
            Config::load(Some(&dir.path().join("missing.toml")), env(&[])),
            Err(ConfigError::Read { .. })
        ));
    }
}
