//! The event envelope: one thing that happened (a deploy, a Chef run, a package install,
//! a heartbeat ping, an audited API call), as clients send it and as Roaster keeps it.
//!
//! Two types, one per side of the edge:
//! - [`EventInput`] is what a client sends (`POST /api/v1/events`, `roaster event`): loose,
//!   mostly optional, deserialised with unknown fields rejected.
//! - [`Event`] is what [`EventInput::validate`] returns and what storage keeps and serves:
//!   every field checked against [`EventLimits`]. Its JSON (`Serialize`) is a public contract,
//!   pinned by golden tests; change it only with a version bump of the API.
//!
//! Invariants of a validated [`Event`]:
//! - `id` is 1..=[`EventLimits::max_id_bytes`] of `[A-Za-z0-9._:-]`; when the client sets
//!   none, the server assigns a UUIDv7 (lowercase, hyphenated) from the arrival time and
//!   caller-supplied randomness, so server ids sort by time as strings.
//! - `time` and `received_at` lie in years 1970..=9999 (they always format as RFC 3339);
//!   `time` is at most [`EventLimits::max_future_skew_ms`] after `received_at`.
//! - `kind` is a dotted verb: two or more segments of `[a-z0-9_-]`, each starting with a
//!   letter (`deploy.finished`, `audit.api`).
//! - `summary` is one non-empty line of UTF-8 without control characters; `source`,
//!   `subject`, `actor`, `host`, `service` and label values are likewise single lines, and
//!   the optional ones are `None` rather than empty.
//! - label names match `[A-Za-z_][A-Za-z0-9_.-]*`; labels with empty values are dropped.
//! - `payload` is any JSON value of at most [`EventLimits::max_payload_bytes`] bytes, kept
//!   byte for byte as sent (it may be opaque or encrypted; nothing routes on it).
//!
//! `source` and `received_at` are set by the server (who authenticated, when it arrived),
//! never by the client: an input carrying them is rejected as an unknown field.
//!
//! **Invariant:** no I/O here; the caller passes the arrival time and the randomness in.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::Timestamp;

/// The greatest timestamp an event may carry: 9999-12-31T23:59:59.999Z.
pub const MAX_EVENT_TIME: Timestamp = Timestamp(253_402_300_799_999);

/// Bounds applied to every event at the edge. All sizes are in bytes of UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLimits {
    /// Most events in one batch.
    pub max_batch_items: usize,
    /// Longest client-set id.
    pub max_id_bytes: usize,
    /// Longest kind.
    pub max_kind_bytes: usize,
    /// Longest summary.
    pub max_summary_bytes: usize,
    /// Longest subject.
    pub max_subject_bytes: usize,
    /// Longest source, actor, host or service.
    pub max_name_bytes: usize,
    /// Most labels on one event.
    pub max_labels: usize,
    /// Longest label name.
    pub max_label_name_bytes: usize,
    /// Longest label value.
    pub max_label_value_bytes: usize,
    /// Largest payload, measured as the JSON text sent.
    pub max_payload_bytes: usize,
    /// Deepest nesting of arrays and objects inside a payload (JSON parsers downstream
    /// recurse; a 64 KiB payload could otherwise nest 32,000 levels deep).
    pub max_payload_depth: usize,
    /// How far `time` may lie after the arrival time (clock skew), in milliseconds.
    pub max_future_skew_ms: i64,
}

impl Default for EventLimits {
    fn default() -> EventLimits {
        EventLimits {
            max_batch_items: 1000,
            max_id_bytes: 128,
            max_kind_bytes: 128,
            max_summary_bytes: 2048,
            max_subject_bytes: 1024,
            max_name_bytes: 256,
            max_labels: 64,
            max_label_name_bytes: 128,
            max_label_value_bytes: 1024,
            max_payload_bytes: 64 * 1024,
            max_payload_depth: 64,
            max_future_skew_ms: 24 * 3600 * 1000,
        }
    }
}

/// Why an event (or a batch of them) was rejected at the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The body was not UTF-8.
    #[error("body is not valid utf-8 (first bad byte at offset {offset})")]
    NotUtf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// The JSON did not parse or did not have the envelope's shape.
    #[error("invalid event json: {0}")]
    Json(String),
    /// A batch held more events than allowed.
    #[error("batch of {count} events exceeds the limit of {max}")]
    BatchTooLarge {
        /// Events in the batch.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A required field was missing or empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A field was longer than its limit.
    #[error("{field} is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field that must be one line held a line break or another control character.
    #[error("{0} must be one line without control characters")]
    NotOneLine(&'static str),
    /// The kind was not a dotted verb.
    #[error("kind {0:?} is not a dotted verb such as deploy.finished")]
    BadKind(String),
    /// The kind is reserved for events the server records itself (the audit trail), so a
    /// client may not send it.
    #[error("kind {0:?} is reserved for the server's own audit trail")]
    ReservedKind(String),
    /// A client-set id used characters outside `[A-Za-z0-9._:-]`.
    #[error("id {0:?} may only contain letters, digits and . _ : -")]
    BadId(String),
    /// The time was neither RFC 3339 nor whole unix milliseconds.
    #[error("time {0}: expected an RFC 3339 string or whole unix milliseconds")]
    BadTime(String),
    /// The time was outside 1970..=9999.
    #[error("time {0} ms is outside the years 1970 to 9999")]
    TimeOutOfRange(i64),
    /// The time was too far after the arrival time.
    #[error("time is {ahead_ms} ms in the future, more than the allowed {max_ms} ms")]
    TooFarInFuture {
        /// How far ahead of the arrival time.
        ahead_ms: i64,
        /// The limit.
        max_ms: i64,
    },
    /// Too many labels.
    #[error("{count} labels exceed the limit of {max}")]
    TooManyLabels {
        /// Labels given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A label name was not `[A-Za-z_][A-Za-z0-9_.-]*`.
    #[error("label name {0:?} must match [A-Za-z_][A-Za-z0-9_.-]*")]
    BadLabelName(String),
    /// The payload nested arrays and objects deeper than allowed.
    #[error("payload nests deeper than {max} levels")]
    PayloadTooDeep {
        /// The limit.
        max: usize,
    },
    /// The payload was larger than allowed.
    #[error("payload is {len} bytes, more than the limit of {max}")]
    PayloadTooLarge {
        /// The payload's JSON length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Kind prefixes only the server records (the append-only audit trail): `POST /api/v1/events`
/// refuses them, so nobody with an ingest token can forge an audit event.
pub const RESERVED_KIND_PREFIXES: [&str; 1] = ["audit."];

/// Whether `kind` is one only the server may record (see [`RESERVED_KIND_PREFIXES`]).
pub fn is_reserved_kind(kind: &str) -> bool {
    RESERVED_KIND_PREFIXES.iter().any(|p| kind.starts_with(p))
}

/// How much an event matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Routine (the default).
    #[default]
    Info,
    /// Worth a look.
    Warning,
    /// Something broke.
    Critical,
}

impl Severity {
    /// The JSON and query-string spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// Parses the JSON spelling.
    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event's id: client-set for idempotency, or a server-assigned UUIDv7.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    /// Checks a client-set id: 1..=`max_bytes` of `[A-Za-z0-9._:-]`.
    pub fn parse(s: &str, max_bytes: usize) -> Result<EventId, EventError> {
        if s.is_empty() {
            return Err(EventError::Missing("id"));
        }
        if s.len() > max_bytes {
            return Err(EventError::TooLong {
                field: "id",
                len: s.len(),
                max: max_bytes,
            });
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(EventError::BadId(s.to_owned()));
        }
        Ok(EventId(s.to_owned()))
    }

    /// A UUIDv7 for time `at` (clamped to the 48-bit millisecond range) with the given
    /// random bits; ids generated later sort after earlier ones, to the millisecond.
    pub fn generate(at: Timestamp, random: u128) -> EventId {
        let ms = at.0.clamp(0, (1 << 48) - 1) as u128;
        let rand_a = (random >> 64) & 0xfff;
        let rand_b = random & ((1u128 << 62) - 1);
        let v = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b;
        // 8-4-4-4-12 hex digits, written into one allocation of the final size: every
        // human-plane request gets an id, and `format!` grows its buffer several times.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = String::with_capacity(36);
        for i in 0..32u32 {
            if matches!(i, 8 | 12 | 16 | 20) {
                id.push('-');
            }
            let nibble = (v >> (124 - 4 * i)) & 0xf;
            id.push(char::from(HEX[nibble as usize]));
        }
        EventId(id)
    }

    /// Wraps an id read back from storage, which only ever holds validated ids.
    pub fn from_stored(s: String) -> EventId {
        EventId(s)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event as a client sends it. Build an [`Event`] from it with [`EventInput::validate`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// Client-set id for idempotent resends; the server assigns one when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// When it happened: an RFC 3339 string or unix milliseconds; the arrival time when absent.
    #[serde(default)]
    pub time: Option<serde_json::Value>,
    /// What happened, as a dotted verb.
    #[serde(default)]
    pub kind: Option<String>,
    /// What it is about (a package, a file, a user, a deploy target).
    #[serde(default)]
    pub subject: Option<String>,
    /// Who did it.
    #[serde(default)]
    pub actor: Option<String>,
    /// The host it happened on.
    #[serde(default)]
    pub host: Option<String>,
    /// The service it concerns.
    #[serde(default)]
    pub service: Option<String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// How much it matters; `info` when absent.
    #[serde(default)]
    pub severity: Severity,
    /// One line saying what happened.
    #[serde(default)]
    pub summary: Option<String>,
    /// Any JSON, kept as sent.
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
}

/// What the server knows about an event's arrival, passed to [`EventInput::validate`].
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// When it arrived (from the server's clock).
    pub received_at: Timestamp,
    /// Who sent it: the authenticated token or agent name.
    pub source: &'a str,
    /// Random bits for a server-assigned id (used only when the client set none).
    pub random: u128,
}

/// A validated event; see the module doc for its invariants. Its JSON is a public contract.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique id; resending an event with the same id stores nothing new.
    pub id: EventId,
    /// When it happened (UTC), serialised as RFC 3339 with milliseconds.
    #[serde(serialize_with = "ser_time")]
    pub time: Timestamp,
    /// When the server received it.
    #[serde(serialize_with = "ser_time")]
    pub received_at: Timestamp,
    /// Who sent it.
    pub source: String,
    /// What happened, as a dotted verb.
    pub kind: String,
    /// What it is about.
    pub subject: Option<String>,
    /// Who did it.
    pub actor: Option<String>,
    /// The host it happened on.
    pub host: Option<String>,
    /// The service it concerns.
    pub service: Option<String>,
    /// Free-form labels, sorted by name.
    pub labels: BTreeMap<String, String>,
    /// How much it matters.
    pub severity: Severity,
    /// One line saying what happened.
    pub summary: String,
    /// Any JSON, kept as sent; `null` when absent.
    pub payload: Option<Box<RawValue>>,
}

impl PartialEq for Event {
    fn eq(&self, other: &Event) -> bool {
        self.id == other.id
            && self.time == other.time
            && self.received_at == other.received_at
            && self.source == other.source
            && self.kind == other.kind
            && self.subject == other.subject
            && self.actor == other.actor
            && self.host == other.host
            && self.service == other.service
            && self.labels == other.labels
            && self.severity == other.severity
            && self.summary == other.summary
            && self.payload.as_ref().map(|p| p.get()) == other.payload.as_ref().map(|p| p.get())
    }
}

impl Event {
    /// Whether this is an audit event (`audit.*`), which only retention may delete.
    pub fn is_audit(&self) -> bool {
        self.kind.starts_with("audit.")
    }
}

fn ser_time<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339(*t))
}

/// Splits a request body holding one event object or an array of them into per-item
/// inputs. The outer error rejects the whole body (not UTF-8, not JSON, too many items);
/// an inner error rejects only its item, so one bad event costs one event.
pub fn decode_batch(
    body: &[u8],
    limits: &EventLimits,
) -> Result<Vec<Result<EventInput, EventError>>, EventError> {
    let text = std::str::from_utf8(body).map_err(|e| EventError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let items: Vec<&RawValue> =
            serde_json::from_str(text).map_err(|e| EventError::Json(e.to_string()))?;
        if items.len() > limits.max_batch_items {
            return Err(EventError::BatchTooLarge {
                count: items.len(),
                max: limits.max_batch_items,
            });
        }
        Ok(items
            .into_iter()
            .map(|raw| {
                serde_json::from_str::<EventInput>(raw.get()).map_err(|e| EventError::Json(e.to_string()))
            })
            .collect())
    } else {
        Ok(vec![
            serde_json::from_str::<EventInput>(text).map_err(|e| EventError::Json(e.to_string())),
        ])
    }
}

impl EventInput {
    /// Checks every field against `limits` and fills in what the server decides: the id
    /// (when absent), the time (when absent), `received_at` and `source`.
    pub fn validate(self, arrival: &Arrival<'_>, limits: &EventLimits) -> Result<Event, EventError> {
        let received_at = arrival.received_at;
        check_time_range(received_at)?;
        let id = match self.id.as_deref() {
            Some(s) => EventId::parse(s, limits.max_id_bytes)?,
            None => EventId::generate(received_at, arrival.random),
        };
        let time = match &self.time {
            None | Some(serde_json::Value::Null) => received_at,
            Some(v) => parse_time_value(v)?,
        };
        let ahead_ms = time.0.saturating_sub(received_at.0);
        if ahead_ms > limits.max_future_skew_ms {
            return Err(EventError::TooFarInFuture {
                ahead_ms,
                max_ms: limits.max_future_skew_ms,
            });
        }
        let source = required_line("source", Some(arrival.source.to_owned()), limits.max_name_bytes)?;
        let kind = required_line("kind", self.kind, limits.max_kind_bytes)?;
        if !is_dotted_verb(&kind) {
            return Err(EventError::BadKind(kind));
        }
        let summary = required_line("summary", self.summary, limits.max_summary_bytes)?;
        let subject = optional_line("subject", self.subject, limits.max_subject_bytes)?;
        let actor = optional_line("actor", self.actor, limits.max_name_bytes)?;
        let host = optional_line("host", self.host, limits.max_name_bytes)?;
        let service = optional_line("service", self.service, limits.max_name_bytes)?;
        if self.labels.len() > limits.max_labels {
            return Err(EventError::TooManyLabels {
                count: self.labels.len(),
                max: limits.max_labels,
            });
        }
        let mut labels = BTreeMap::new();
        for (name, value) in self.labels {
            if name.len() > limits.max_label_name_bytes {
                return Err(EventError::TooLong {
                    field: "label name",
                    len: name.len(),
                    max: limits.max_label_name_bytes,
                });
            }
            if !is_label_name(&name) {
                return Err(EventError::BadLabelName(name));
            }
            if let Some(value) = optional_line("label value", Some(value), limits.max_label_value_bytes)? {
                labels.insert(name, value);
            }
        }
        let payload = match self.payload {
            Some(p) if p.get().trim() == "null" => None,
            Some(p) if p.get().len() > limits.max_payload_bytes => {
                return Err(EventError::PayloadTooLarge {
                    len: p.get().len(),
                    max: limits.max_payload_bytes,
                });
            }
            Some(p) if json_depth_exceeds(p.get(), limits.max_payload_depth) => {
                return Err(EventError::PayloadTooDeep {
                    max: limits.max_payload_depth,
                });
            }
            other => other,
        };
        Ok(Event {
            id,
            time,
            received_at,
            source,
            kind,
            subject,
            actor,
            host,
            service,
            labels,
            severity: self.severity,
            summary,
            payload,
        })
    }
}

/// Whether valid JSON `text` nests arrays and objects more than `max` levels deep.
fn json_depth_exceeds(text: &str, max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn parse_time_value(v: &serde_json::Value) -> Result<Timestamp, EventError> {
    let t = match v {
        serde_json::Value::String(s) => {
            parse_rfc3339(s).ok_or_else(|| EventError::BadTime(format!("{s:?}")))?
        }
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(ms) => Timestamp(ms),
            None => return Err(EventError::BadTime(n.to_string())),
        },
        other => return Err(EventError::BadTime(other.to_string())),
    };
    check_time_range(t)?;
    Ok(t)
}

fn check_time_range(t: Timestamp) -> Result<(), EventError> {
    if t.0 < 0 || t > MAX_EVENT_TIME {
        return Err(EventError::TimeOutOfRange(t.0));
    }
    Ok(())
}

fn is_one_line(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

fn required_line(field: &'static str, v: Option<String>, max: usize) -> Result<String, EventError> {
    optional_line(field, v, max)?.ok_or(EventError::Missing(field))
}

fn optional_line(field: &'static str, v: Option<String>, max: usize) -> Result<Option<String>, EventError> {
    match v {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) if s.len() > max => Err(EventError::TooLong {
            field,
            len: s.len(),
            max,
        }),
        Some(s) if !is_one_line(&s) => Err(EventError::NotOneLine(field)),
        Some(s) => Ok(Some(s)),
    }
}

/// Whether `s` is a dotted verb: two or more `.`-separated segments of `[a-z0-9_-]`, each
/// starting with a lowercase letter.
pub fn is_dotted_verb(s: &str) -> bool {
    let mut segments = 0;
    for seg in s.split('.') {
        let mut bytes = seg.bytes();
        match bytes.next() {
            Some(b) if b.is_ascii_lowercase() => {}
            _ => return false,
        }
        if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-') {
            return false;
        }
        segments += 1;
    }
    segments >= 2
}

/// Whether `s` is a valid label name: `[A-Za-z_][A-Za-z0-9_.-]*`.
pub fn is_label_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses an RFC 3339 date-time (`2026-11-21T06:09:16.123Z`, `…+02:00`; `t`, `z` and a
/// space separator accepted; fractions beyond milliseconds truncated) to UTC milliseconds.
/// Leap seconds (`:60`) are rejected.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let year = num(0, 4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let month = num(5, 2)?;
    let day = num(8, 2)?;
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let hour = num(11, 2)?;
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return None;
    }
    let minute = num(14, 2)?;
    let second = num(17, 2)?;
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(&d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            if i - start < 3 {
                millis = millis * 10 + i64::from(d - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_min = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == b.len() && b.get(i + 3) == Some(&b':') => {
            let oh = num(i + 1, 2)?;
            let om = num(i + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            if sign == b'-' { -m } else { m }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(Timestamp(secs * 1000 + millis))
}

/// Formats a timestamp as RFC 3339 UTC with milliseconds: `2026-11-21T06:09:16.123Z`.
/// Times outside years 0..=9999 are clamped to that range (events never hold such times).
pub fn format_rfc3339(t: Timestamp) -> String {
    // 0000-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z
    let ms = t.0.clamp(-62_167_219_200_000, MAX_EVENT_TIME.0);
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days_from_civil / civil_from_days (proleptic Gregorian, day 0 = 1970-01-01).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_795_000_000_000);

    fn arrival() -> Arrival<'static> {
        Arrival {
            received_at: NOW,
            source: "agent-web1",
            random: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
        }
    }

    fn validate_json(json: &str) -> Result<Event, EventError> {
        let input: EventInput = serde_json::from_str(json).map_err(|e| EventError::Json(e.to_string()))?;
        input.validate(&arrival(), &EventLimits::default())
    }

    #[test]
    fn rfc3339_table() {
        let cases: &[(&str, Option<i64>)] = &[
            ("1970-01-01T00:00:00Z", Some(0)),
            ("1970-01-01T00:00:00.001Z", Some(1)),
            ("1970-01-01T00:00:00.1Z", Some(100)),
            ("1970-01-01T00:00:00.123456789Z", Some(123)),
            ("1970-01-01t00:00:00z", Some(0)),
            ("1970-01-01 00:00:00Z", Some(0)),
            ("1970-01-01T01:00:00+01:00", Some(0)),
            ("1969-12-31T23:00:00-01:00", Some(0)),
            ("2000-02-29T12:00:00Z", Some(951_825_600_000)),
            ("2026-11-21T06:09:16.123Z", Some(1_795_241_356_123)),
            ("9999-12-31T23:59:59.999Z", Some(MAX_EVENT_TIME.0)),
            ("2001-02-29T00:00:00Z", None),
            ("2026-13-01T00:00:00Z", None),
            ("2026-11-21T24:00:00Z", None),
            ("2026-11-21T23:59:60Z", None),
            ("2026-11-21T06:09:16", None),
            ("2026-11-21T06:09:16.Z", None),
            ("2026-11-21T06:09:16+0100", None),
            ("2026-11-21T06:09:16Zjunk", None),
            ("2026-11-21", None),
            ("", None),
            ("２026-11-21T06:09:16Z", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_rfc3339(text).map(|t| t.0), *want, "{text}");
        }
    }

    #[test]
    fn rfc3339_round_trips() {
        for ms in [
            0,
            1,
            999,
            86_399_999,
            951_825_600_000,
            1_795_241_356_123,
            MAX_EVENT_TIME.0,
        ] {
            let text = format_rfc3339(Timestamp(ms));
            assert_eq!(parse_rfc3339(&text), Some(Timestamp(ms)), "{text}");
        }
        assert_eq!(
            format_rfc3339(Timestamp(1_795_241_356_123)),
            "2026-11-21T06:09:16.123Z"
        );
    }

    #[test]
    fn generated_ids_are_uuid_v7_and_sort_by_time() {
        let a = EventId::generate(Timestamp(1_795_241_356_123), u128::MAX);
        let b = EventId::generate(Timestamp(1_795_241_356_124), 0);
        assert_eq!(a.as_str().len(), 36);
        assert_eq!(&a.as_str()[14..15], "7", "version nibble");
        assert!(
            matches!(&a.as_str()[19..20], "8" | "9" | "a" | "b"),
            "variant bits"
        );
        assert!(a < b);
        assert_eq!(
            EventId::generate(Timestamp(0), 0).as_str(),
            "00000000-0000-7000-8000-000000000000"
        );
        // every nibble in its place: time, version, rand_a, variant, rand_b
        assert_eq!(
            EventId::generate(
                Timestamp(0x0123_4567_89ab),
                0x0fed_cba9_8765_4321_0fed_cba9_8765_4321
            )
            .as_str(),
            "01234567-89ab-7321-8fed-cba987654321"
        );
    }

    #[test]
    fn kind_table() {
        let cases = [
            ("deploy.finished", true),
            ("chef.run", true),
            ("audit.api", true),
            ("heartbeat.fail", true),
            ("a.b.c", true),
            ("package.installed-2", true),
            ("deploy", false),
            ("Deploy.finished", false),
            ("deploy..finished", false),
            (".deploy", false),
            ("deploy.", false),
            ("deploy.9lives", false),
            ("deploy finished", false),
            ("", false),
        ];
        for (kind, ok) in cases {
            assert_eq!(is_dotted_verb(kind), ok, "{kind}");
        }
    }

    #[test]
    fn validation_table() {
        let long = "x".repeat(3000);
        let big_payload = format!(
            r#"{{"kind":"a.b","summary":"s","payload":"{}"}}"#,
            "p".repeat(64 * 1024)
        );
        let just_fits = format!(
            r#"{{"kind":"a.b","summary":"s","payload":"{}"}}"#,
            "p".repeat(64 * 1024 - 2)
        );
        let many_labels = format!(
            r#"{{"kind":"a.b","summary":"s","labels":{{{}}}}}"#,
            (0..65)
                .map(|i| format!(r#""l{i}":"v""#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let cases: Vec<(String, Result<(), EventError>)> = vec![
            (
                r#"{"kind":"deploy.finished","summary":"deployed api 1.2"}"#.into(),
                Ok(()),
            ),
            (
                r#"{"kind":"deploy.finished"}"#.into(),
                Err(EventError::Missing("summary")),
            ),
            (
                r#"{"kind":"deploy.finished","summary":""}"#.into(),
                Err(EventError::Missing("summary")),
            ),
            (r#"{"summary":"s"}"#.into(), Err(EventError::Missing("kind"))),
            (
                r#"{"kind":"deploy","summary":"s"}"#.into(),
                Err(EventError::BadKind("deploy".into())),
            ),
            (
                r#"{"kind":"a.b","summary":"two\nlines"}"#.into(),
                Err(EventError::NotOneLine("summary")),
            ),
            (
                r#"{"kind":"a.b","summary":"bell\u0007"}"#.into(),
                Err(EventError::NotOneLine("summary")),
            ),
            (
                format!(r#"{{"kind":"a.b","summary":"{long}"}}"#),
                Err(EventError::TooLong {
                    field: "summary",
                    len: 3000,
                    max: 2048,
                }),
            ),
            (
                r#"{"kind":"a.b","summary":"s","host":"web\r1"}"#.into(),
                Err(EventError::NotOneLine("host")),
            ),
            (
                r#"{"kind":"a.b","summary":"s","id":"has space"}"#.into(),
                Err(EventError::BadId("has space".into())),
            ),
            (
                r#"{"kind":"a.b","summary":"s","id":""}"#.into(),
                Err(EventError::Missing("id")),
            ),
            (
                r#"{"kind":"a.b","summary":"s","id":"ansible:run-42_x.1"}"#.into(),
                Ok(()),
            ),
            (
                r#"{"kind":"a.b","summary":"s","time":"yesterday"}"#.into(),
                Err(EventError::BadTime("\"yesterday\"".into())),
            ),
            (
                r#"{"kind":"a.b","summary":"s","time":1.5}"#.into(),
                Err(EventError::BadTime("1.5".into())),
            ),
            (
                r#"{"kind":"a.b","summary":"s","time":true}"#.into(),
                Err(EventError::BadTime("true".into())),
            ),
            (
                r#"{"kind":"a.b","summary":"s","time":-1}"#.into(),
                Err(EventError::TimeOutOfRange(-1)),
            ),
            (
                r#"{"kind":"a.b","summary":"s","time":1895000000000}"#.into(),
                Err(EventError::TooFarInFuture {
                    ahead_ms: 100_000_000_000,
                    max_ms: 86_400_000,
                }),
            ),
            (
                r#"{"kind":"a.b","summary":"s","time":1700000000000}"#.into(),
                Ok(()),
            ),
            (
                r#"{"kind":"a.b","summary":"s","time":"2023-11-14T22:13:20Z"}"#.into(),
                Ok(()),
            ),
            (
                r#"{"kind":"a.b","summary":"s","labels":{"9x":"v"}}"#.into(),
                Err(EventError::BadLabelName("9x".into())),
            ),
            (
                r#"{"kind":"a.b","summary":"s","labels":{"env":"a\tb"}}"#.into(),
                Err(EventError::NotOneLine("label value")),
            ),
            (many_labels, Err(EventError::TooManyLabels { count: 65, max: 64 })),
            (
                big_payload,
                Err(EventError::PayloadTooLarge {
                    len: 64 * 1024 + 2,
                    max: 64 * 1024,
                }),
            ),
            (just_fits, Ok(())),
            (
                format!(
                    r#"{{"kind":"a.b","summary":"s","payload":{}{}}}"#,
                    "[".repeat(65),
                    "]".repeat(65)
                ),
                Err(EventError::PayloadTooDeep { max: 64 }),
            ),
            (
                format!(
                    r#"{{"kind":"a.b","summary":"s","payload":{}{}}}"#,
                    "[".repeat(64),
                    "]".repeat(64)
                ),
                Ok(()),
            ),
            (
                format!(
                    r#"{{"kind":"a.b","summary":"s","payload":["{}\"{}"]}}"#,
                    "[".repeat(100),
                    "{".repeat(100)
                ),
                Ok(()),
            ),
            (
                r#"{"kind":"a.b","summary":"s","severity":"fatal"}"#.into(),
                Err(EventError::Json(String::new())),
            ),
            (
                r#"{"kind":"a.b","summary":"s","source":"me"}"#.into(),
                Err(EventError::Json(String::new())),
            ),
            (
                r#"{"kind":"a.b","summary":"s","received_at":0}"#.into(),
                Err(EventError::Json(String::new())),
            ),
        ];
        for (json, want) in cases {
            let got = validate_json(&json).map(|_| ());
            match (&got, &want) {
                // serde's wording is not ours to pin; the variant is
                (Err(EventError::Json(_)), Err(EventError::Json(_))) => {}
                _ => assert_eq!(got, want, "{}", &json[..json.len().min(120)]),
            }
        }
    }

    #[test]
    fn normalisation() {
        let e = validate_json(
            r#"{"kind":"a.b","summary":"s","host":"","labels":{"empty":"","env":"prod"},"payload":null}"#,
        )
        .unwrap();
        assert_eq!(e.host, None);
        assert_eq!(e.labels.len(), 1);
        assert!(e.payload.is_none());
        assert_eq!(e.time, NOW);
        assert_eq!(e.source, "agent-web1");
        assert_eq!(e.id, EventId::generate(NOW, arrival().random));
    }

    #[test]
    fn golden_full_envelope() {
        let e = validate_json(
            r#"{"id":"deploy-42","time":"2026-11-18T12:09:16.5+01:00","kind":"deploy.finished",
                "subject":"api","actor":"alice","host":"web1","service":"api",
                "labels":{"version":"1.2.3","env":"prod"},"severity":"warning",
                "summary":"deployed api 1.2.3 to web1","payload":{"b": [1, 2], "a": "x"}}"#,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            concat!(
                r#"{"id":"deploy-42","time":"2026-11-18T11:09:16.500Z","received_at":"2026-11-18T11:06:40.000Z","#,
                r#""source":"agent-web1","kind":"deploy.finished","subject":"api","actor":"alice","host":"web1","#,
                r#""service":"api","labels":{"env":"prod","version":"1.2.3"},"severity":"warning","#,
                r#""summary":"deployed api 1.2.3 to web1","payload":{"b": [1, 2], "a": "x"}}"#
            )
        );
    }

    #[test]
    fn golden_minimal_envelope() {
        let e = validate_json(r#"{"kind":"chef.run","summary":"chef-client applied 3 resources"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            concat!(
                r#"{"id":"01a1ee56-5e00-7def-8123-456789abcdef","time":"2026-11-18T11:06:40.000Z","#,
                r#""received_at":"2026-11-18T11:06:40.000Z","source":"agent-web1","kind":"chef.run","#,
                r#""subject":null,"actor":null,"host":null,"service":null,"labels":{},"severity":"info","#,
                r#""summary":"chef-client applied 3 resources","payload":null}"#
            )
        );
    }

    #[test]
    fn decode_batch_table() {
        let limits = EventLimits {
            max_batch_items: 2,
            ..EventLimits::default()
        };
        let one = decode_batch(br#" {"kind":"a.b","summary":"s"}"#, &limits).unwrap();
        assert_eq!(one.len(), 1);
        assert!(one[0].is_ok());
        let two = decode_batch(br#"[{"kind":"a.b","summary":"s"}, {"kind":1}]"#, &limits).unwrap();
        assert!(two[0].is_ok());
        assert!(matches!(two[1], Err(EventError::Json(_))));
        assert_eq!(
            decode_batch(b"[{},{},{}]", &limits).err(),
            Some(EventError::BatchTooLarge { count: 3, max: 2 })
        );
        assert_eq!(
            decode_batch(b"{\"summary\":\"caf\xe9\"}", &limits).err(),
            Some(EventError::NotUtf8 { offset: 15 })
        );
        assert!(matches!(decode_batch(b"[{", &limits), Err(EventError::Json(_))));
        let empty = decode_batch(b"", &limits).unwrap();
        assert!(matches!(empty.as_slice(), [Err(EventError::Json(_))]));
    }
}
