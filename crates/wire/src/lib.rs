//! Pure codecs for every ingest protocol: bytes in, (values, errors) out.
//!
//! | module | protocol | output |
//! |---|---|---|
//! | [`graphite`] | Graphite plaintext `path[;tags] value [timestamp]`, plus InfluxDB-style templates | borrowed [`graphite::GraphiteLine`]s |
//! | [`statsd`] | StatsD / DogStatsD lines | borrowed `statsd::StatsdMetric`s |
//! | [`influx`] | InfluxDB line protocol | [`Sample`]s, one per numeric field |
//! | [`remote_write`] | Prometheus remote-write 1.0 (protobuf + snappy block) | [`Sample`]s |
//! | [`json`] | Roaster's JSON ingest body for `POST /api/v1/ingest` | [`Sample`]s |
//!
//! Design constraints and invariants:
//! - **No I/O, no async, no clock.** A missing timestamp is returned as `None`; the caller
//!   supplies "now".
//! - **Never panics on any input.** Every decoder is fuzzed (`fuzz/`) and exercised on random
//!   bytes by `tests/fuzz_corpus.rs`.
//! - **A bad line costs a line, not the packet.** Line-oriented decoders return what they could
//!   read plus one [`LineError`] per rejected line (or item); only errors that make the whole
//!   body unreadable (bad snappy, bad protobuf, not JSON) are whole-request errors.
//! - **Everything is bounded by [`WireLimits`]**: line length, label count, name and label value
//!   sizes. Every [`Sample`] a decoder returns satisfies the limits it was given.
//! - Error reasons ([`Reason::as_str`]) are stable snake_case codes, used as metric label values:
//!   add new ones, never rename.
//! - The Graphite hot path ([`graphite::parse_line`]) does not allocate.
//!
//! Checking it: `cargo test -p wire` runs the table tests and `tests/fuzz_corpus.rs` (every
//! decoder over random bytes); `benches/parse.rs` measures throughput; `fuzz/` holds the
//! cargo-fuzz targets (`cd crates/wire && RUSTC_BOOTSTRAP=1 cargo fuzz run graphite`).

#![warn(missing_docs)]

pub mod graphite;
pub mod influx;
pub mod json;
pub mod remote_write;
pub mod statsd;

use model::{KeyError, Label, SeriesKey};

/// Longest excerpt of an offending line kept in a [`LineError`], in bytes.
pub const EXCERPT_MAX_BYTES: usize = 200;

/// Size limits every decoder enforces. Passed in by the caller (from config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Longest accepted line, in bytes, excluding the line terminator.
    pub max_line_bytes: usize,
    /// Most labels (tags) one series may carry, the metric name not counted.
    pub max_labels: usize,
    /// Longest metric name or label name, in bytes.
    pub max_name_bytes: usize,
    /// Longest label value, in bytes.
    pub max_label_value_bytes: usize,
}

impl Default for WireLimits {
    /// 64 KiB lines, 64 labels, 1024-byte names, 4096-byte label values.
    fn default() -> WireLimits {
        WireLimits {
            max_line_bytes: 64 * 1024,
            max_labels: 64,
            max_name_bytes: 1024,
            max_label_value_bytes: 4096,
        }
    }
}

/// Why a line (or item) was rejected or partly skipped. The codes are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The line does not have the protocol's shape (missing parts, bad escapes, stray bytes).
    Malformed,
    /// The value is not a number the protocol allows.
    BadValue,
    /// The timestamp is not a number, or out of range once converted to milliseconds.
    BadTimestamp,
    /// The line is not valid UTF-8.
    InvalidUtf8,
    /// The line is longer than [`WireLimits::max_line_bytes`].
    LineTooLong,
    /// The metric name is empty, too long, missing or otherwise invalid.
    BadName,
    /// A label (tag) name or value is empty, too long, duplicated or otherwise invalid.
    BadLabel,
    /// More labels than [`WireLimits::max_labels`].
    TooManyLabels,
    /// Valid in the protocol but not something Roaster ingests (e.g. a StatsD type it lacks).
    Unsupported,
    /// An InfluxDB string field, skipped: Roaster stores numbers only. The line's numeric
    /// fields are still ingested, so this is not a rejection (see [`Reason::is_rejection`]).
    StringField,
}

impl Reason {
    /// Every reason, for pre-registering counters.
    pub const ALL: [Reason; 10] = [
        Reason::Malformed,
        Reason::BadValue,
        Reason::BadTimestamp,
        Reason::InvalidUtf8,
        Reason::LineTooLong,
        Reason::BadName,
        Reason::BadLabel,
        Reason::TooManyLabels,
        Reason::Unsupported,
        Reason::StringField,
    ];

    /// The stable snake_case code, used as a metric label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::BadValue => "bad_value",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::LineTooLong => "line_too_long",
            Reason::BadName => "bad_name",
            Reason::BadLabel => "bad_label",
            Reason::TooManyLabels => "too_many_labels",
            Reason::Unsupported => "unsupported",
            Reason::StringField => "string_field",
        }
    }

    /// Whether the line was rejected (its data lost). `false` only for [`Reason::StringField`],
    /// where the rest of the line was ingested: an Influx endpoint still answers 204.
    pub fn is_rejection(&self) -> bool {
        !matches!(self, Reason::StringField)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rejected line (or item of a structured body) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}: {detail}")]
pub struct LineError {
    /// 1-based position: the line number for text protocols, the series' position in the
    /// request for remote-write and JSON.
    pub line: usize,
    /// The stable reason code.
    pub reason: Reason,
    /// The offending line (or a rendering of the item), lossy UTF-8, at most
    /// [`EXCERPT_MAX_BYTES`] bytes.
    pub excerpt: String,
    /// What exactly was wrong, for humans; lowercase, no trailing period.
    pub detail: String,
}

impl LineError {
    /// An error for `line` (1-based) whose raw bytes are `raw`; the excerpt is made here.
    pub fn new(line: usize, reason: Reason, raw: &[u8], detail: impl Into<String>) -> LineError {
        LineError {
            line,
            reason,
            excerpt: excerpt(raw),
            detail: detail.into(),
        }
    }
}

/// A reason and detail without a position yet: what per-item validators return before the
/// caller knows (or wants to spend) the line number and excerpt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The stable reason code.
    pub reason: Reason,
    /// What exactly was wrong; lowercase, no trailing period.
    pub detail: String,
}

impl Rejection {
    /// A rejection with a reason and a detail.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }

    /// Places the rejection at `line` (1-based) whose raw bytes are `raw`.
    pub fn at(self, line: usize, raw: &[u8]) -> LineError {
        LineError {
            line,
            reason: self.reason,
            excerpt: excerpt(raw),
            detail: self.detail,
        }
    }
}

/// A whole request body that could not be read at all (as opposed to a bad line or series,
/// which is a [`LineError`] and costs only itself). Not retryable: the same body fails again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body would decompress to more than the caller's limit.
    #[error("body decompresses to {len} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The decompressed size the body announces.
        len: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// The body is not valid snappy block format.
    #[error("body is not valid snappy: {0}")]
    Snappy(String),
    /// The decompressed body is not a valid protobuf message of the expected type.
    #[error("body is not a valid protobuf write request: {0}")]
    Protobuf(String),
    /// The body is not JSON, or not the documented top-level shape.
    #[error("body is not a valid json ingest request: {0}")]
    Json(String),
}

/// One decoded sample of a named series: the common output of the influx, remote-write and
/// JSON decoders.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series; satisfies the [`WireLimits`] the decoder was given.
    pub key: SeriesKey,
    /// UTC milliseconds, or `None` for "now" (the caller's clock decides).
    pub timestamp_ms: Option<i64>,
    /// The value; any f64, NaN and infinities included.
    pub value: f64,
}

/// Lossy UTF-8 of `raw`, cut to at most [`EXCERPT_MAX_BYTES`] bytes on a char boundary.
pub fn excerpt(raw: &[u8]) -> String {
    let cut = &raw[..raw.len().min(EXCERPT_MAX_BYTES + 4)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if s.len() > EXCERPT_MAX_BYTES {
        let mut end = EXCERPT_MAX_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Checks a metric name against the limits: non-empty, no NUL, at most
/// [`WireLimits::max_name_bytes`].
pub fn check_name(name: &str, limits: &WireLimits) -> Result<(), Rejection> {
    if name.is_empty() {
        return Err(Rejection::new(Reason::BadName, "metric name is empty"));
    }
    if name.len() > limits.max_name_bytes {
        return Err(Rejection::new(
            Reason::BadName,
            format!(
                "metric name is {} bytes, more than the limit of {}",
                name.len(),
                limits.max_name_bytes
            ),
        ));
    }
    if name.contains('\0') {
        return Err(Rejection::new(Reason::BadName, "metric name contains a nul byte"));
    }
    Ok(())
}

/// Checks one label against the limits: name non-empty and at most
/// [`WireLimits::max_name_bytes`], value at most [`WireLimits::max_label_value_bytes`], no NUL.
pub fn check_label(name: &str, value: &str, limits: &WireLimits) -> Result<(), Rejection> {
    if name.is_empty() {
        return Err(Rejection::new(Reason::BadLabel, "label name is empty"));
    }
    if name.len() > limits.max_name_bytes {
        return Err(Rejection::new(
            Reason::BadLabel,
            format!(
                "label name is {} bytes, more than the limit of {}",
                name.len(),
                limits.max_name_bytes
            ),
        ));
    }
    if value.len() > limits.max_label_value_bytes {
        return Err(Rejection::new(
            Reason::BadLabel,
            format!(
                "value of label {:?} is {} bytes, more than the limit of {}",
                truncated(name),
                value.len(),
                limits.max_label_value_bytes
            ),
        ));
    }
    if name.contains('\0') || value.contains('\0') {
        return Err(Rejection::new(Reason::BadLabel, "label contains a nul byte"));
    }
    Ok(())
}

/// Builds a canonical [`SeriesKey`] after checking the name, every label and the label count
/// against the limits. Labels with empty values are dropped (as [`SeriesKey::new`] does) before
/// counting.
pub fn series_key(name: String, labels: Vec<Label>, limits: &WireLimits) -> Result<SeriesKey, Rejection> {
    check_name(&name, limits)?;
    let mut count = 0usize;
    for l in &labels {
        check_label(&l.name, &l.value, limits)?;
        if !l.value.is_empty() && l.name != model::METRIC_NAME_LABEL {
            count += 1;
        }
    }
    if count > limits.max_labels {
        return Err(Rejection::new(
            Reason::TooManyLabels,
            format!("{count} labels, more than the limit of {}", limits.max_labels),
        ));
    }
    SeriesKey::new(name, labels).map_err(|e| {
        let reason = match e {
            KeyError::EmptyName => Reason::BadName,
            KeyError::EmptyLabelName | KeyError::DuplicateLabel(_) | KeyError::Nul => Reason::BadLabel,
        };
        Rejection::new(reason, e.to_string())
    })
}

/// A short prefix of `s` for error details, so a huge name does not make a huge message.
fn truncated(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether every sample's key satisfies `limits`; used by tests and fuzz targets to check the
/// "outputs satisfy limits" invariant.
pub fn key_within_limits(key: &SeriesKey, limits: &WireLimits) -> bool {
    key.name().len() <= limits.max_name_bytes
        && !key.name().is_empty()
        && key.labels().len() <= limits.max_labels
        && key.labels().iter().all(|l| {
            !l.name.is_empty()
                && l.name.len() <= limits.max_name_bytes
                && l.value.len() <= limits.max_label_value_bytes
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_stable_and_unique() {
        let codes: Vec<&str> = Reason::ALL.iter().map(Reason::as_str).collect();
        assert_eq!(
            codes,
            [
                "malformed",
                "bad_value",
                "bad_timestamp",
                "invalid_utf8",
                "line_too_long",
                "bad_name",
                "bad_label",
                "too_many_labels",
                "unsupported",
                "string_field",
            ]
        );
    }

    #[test]
    fn excerpts_are_truncated_on_char_boundaries() {
        let long = "é".repeat(300);
        let e = excerpt(long.as_bytes());
        assert!(e.len() <= EXCERPT_MAX_BYTES);
        assert_eq!(e.len(), 200);
        assert_eq!(excerpt(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(excerpt(b""), "");
    }

    #[test]
    fn series_key_enforces_limits() {
        let limits = WireLimits {
            max_line_bytes: 100,
            max_labels: 1,
            max_name_bytes: 4,
            max_label_value_bytes: 3,
        };
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<Reason>);
        let cases: &[Case] = &[
            ("m", &[("a", "1")], None),
            ("", &[], Some(Reason::BadName)),
            ("mmmmm", &[], Some(Reason::BadName)),
            ("m", &[("a", "1234")], Some(Reason::BadLabel)),
            ("m", &[("aaaaa", "1")], Some(Reason::BadLabel)),
            ("m", &[("", "1")], Some(Reason::BadLabel)),
            ("m", &[("a", "1"), ("b", "2")], Some(Reason::TooManyLabels)),
            ("m", &[("a", "1"), ("b", "")], None),
            ("m", &[("a", "1"), ("a", "2")], Some(Reason::TooManyLabels)),
            ("m\0", &[], Some(Reason::BadName)),
        ];
        for (name, labels, want) in cases {
            let labels = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
            let got = series_key((*name).to_owned(), labels, &limits)
                .err()
                .map(|r| r.reason);
            assert_eq!(got, *want, "{name:?}");
        }
    }
}
