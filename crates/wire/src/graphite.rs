//! Graphite plaintext protocol: `path[;tag=value...] value [timestamp]`, one metric per line.
//!
//! Accepted syntax (what carbon, VictoriaMetrics and InfluxDB's graphite input accept):
//! - Fields are separated by runs of spaces or tabs; leading and trailing blanks and a trailing
//!   `\r` (CRLF line ends) are ignored. Lines that are blank after that are skipped by
//!   [`decode`] silently; more than three fields is [`Reason::Malformed`].
//! - `value` is a float in the usual decimal syntax (`37.42`, `-0.0`, `1e3`, `.5`), or
//!   `nan`/`inf`/`infinity` with an optional sign, any case (Python's `float()`, which carbon
//!   uses, accepts these). Anything else is [`Reason::BadValue`]. Python's `1_000` is not accepted.
//! - `timestamp` is Unix seconds, possibly fractional (converted to milliseconds, rounded). A
//!   missing timestamp or `-1` means "now": [`GraphiteLine::timestamp_ms`] is `None` and the
//!   caller supplies its clock's time. Non-numbers and values whose milliseconds fall outside
//!   ±9e15 are [`Reason::BadTimestamp`]. Millisecond timestamps are not guessed: they are read
//!   as seconds and land far in the future.
//! - Tags (Graphite 1.1): `path;k=v;k2=v2`. A tag name is non-empty and contains none of
//!   `; ! ^ =`; a value is non-empty, contains no `;` and does not start with `~`. Order is
//!   kept as sent in [`GraphiteLine::key`] (the ingest cache key) and does not matter for the
//!   resulting [`SeriesKey`], which is sorted.
//!
//! The hot path, [`parse_line`], does not allocate: it validates and borrows. Building the
//! series key ([`GraphiteLine::series_key`]) allocates and is meant to run only on a series
//! cache miss.
//!
//! [`Templates`] turn dotted paths into a name plus labels the way InfluxDB 1.x's graphite input
//! does; see its docs for the exact subset supported.

use memchr::memchr;
use model::{Label, SeriesKey};

use crate::{LineError, Reason, Rejection, WireLimits, check_label, check_name, series_key};

/// Largest accepted timestamp magnitude in milliseconds (about year 287,000), the same bound
/// as [`model::Timestamp::from_secs_f64`].
const MAX_ABS_TIMESTAMP_MS: i64 = 9_000_000_000_000_000;

/// One parsed Graphite line, borrowing from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphiteLine<'a> {
    /// The path plus `;tags` exactly as sent: ingest caches series ids by this.
    pub key: &'a str,
    /// The dotted path (the part of `key` before the first `;`); never empty.
    pub path: &'a str,
    /// The raw tags `k=v;k2=v2` (the part of `key` after the first `;`), or `""`.
    pub tags: &'a str,
    /// The value; NaN and infinities included.
    pub value: f64,
    /// UTC milliseconds, or `None` for "now" (missing or `-1` timestamp).
    pub timestamp_ms: Option<i64>,
}

impl GraphiteLine<'_> {
    /// Builds the series key: the name and labels from `templates` (when one matches the path;
    /// otherwise the path is the name), then the line's own tags, which replace template labels
    /// of the same name. Allocates: call it on a series cache miss only.
    pub fn series_key(
        &self,
        templates: Option<&Templates>,
        limits: &WireLimits,
    ) -> Result<SeriesKey, Rejection> {
        series_key_parts(self.path, self.tags, templates, limits)
    }
}

/// [`GraphiteLine::series_key`] for a cached raw key (`path;k=v...`, as in
/// [`GraphiteLine::key`]), for callers that kept only the key bytes of a cache miss.
pub fn key_to_series(
    key: &str,
    templates: Option<&Templates>,
    limits: &WireLimits,
) -> Result<SeriesKey, Rejection> {
    let (path, tags) = key.split_once(';').unwrap_or((key, ""));
    if key.len() > path.len() && tags.is_empty() {
        return Err(Rejection::new(Reason::BadLabel, "empty tag list after ';'"));
    }
    check_name(path, limits)?;
    series_key_parts(path, tags, templates, limits)
}

fn series_key_parts(
    path: &str,
    raw_tags: &str,
    templates: Option<&Templates>,
    limits: &WireLimits,
) -> Result<SeriesKey, Rejection> {
    let (name, mut labels) = templates
        .and_then(|t| t.apply(path))
        .unwrap_or_else(|| (path.to_owned(), Vec::new()));
    let mut own = Vec::new();
    for tag in tags(raw_tags) {
        let (k, v) = tag?;
        own.push(Label::new(k, v));
    }
    labels.retain(|l| !own.iter().any(|o| o.name == l.name));
    labels.extend(own);
    series_key(name, labels, limits)
}

/// Parses one line (without its `\n`; a trailing `\r` is fine). Does not allocate unless the
/// line is rejected. The error's `line` is 1: a caller reading a stream renumbers it.
pub fn parse_line<'a>(line: &'a [u8], limits: &WireLimits) -> Result<GraphiteLine<'a>, LineError> {
    parse_at(line, 1, limits)
}

/// Parses one line, numbering its error `line_no`.
fn parse_at<'a>(raw: &'a [u8], line_no: usize, limits: &WireLimits) -> Result<GraphiteLine<'a>, LineError> {
    if raw.len() > limits.max_line_bytes {
        return Err(LineError::new(
            line_no,
            Reason::LineTooLong,
            raw,
            format!(
                "line is {} bytes, more than the limit of {}",
                raw.len(),
                limits.max_line_bytes
            ),
        ));
    }
    let line = trim(raw);
    let err = |reason, detail: &str| LineError::new(line_no, reason, raw, detail);
    if line.is_empty() {
        return Err(err(Reason::Malformed, "empty line"));
    }
    // One pass over the key finds its end and the first ';' and notes a NUL: the common
    // tag-free ASCII key then needs only the UTF-8 check (which has an ASCII fast path).
    let mut key_end = line.len();
    let mut semi = None;
    let mut nul = false;
    for (i, &b) in line.iter().enumerate() {
        match b {
            b' ' | b'\t' | b'\r' => {
                key_end = i;
                break;
            }
            b';' if semi.is_none() => semi = Some(i),
            0 => nul = true,
            _ => {}
        }
    }
    let key_bytes = &line[..key_end];
    let rest = skip_blanks(&line[key_end..]);
    if rest.is_empty() {
        return Err(err(Reason::Malformed, "missing value"));
    }
    let value_end = find_blank(rest).unwrap_or(rest.len());
    let value_bytes = &rest[..value_end];
    let rest = skip_blanks(&rest[value_end..]);
    let ts_end = find_blank(rest).unwrap_or(rest.len());
    let ts_bytes = &rest[..ts_end];
    if !skip_blanks(&rest[ts_end..]).is_empty() {
        return Err(err(Reason::Malformed, "more than three fields"));
    }

    let Ok(key) = std::str::from_utf8(key_bytes) else {
        return Err(err(Reason::InvalidUtf8, "metric path is not valid utf-8"));
    };
    let (path, tag_str) = match semi {
        Some(i) => (&key[..i], &key[i + 1..]),
        None => (key, ""),
    };
    if path.is_empty() || path.len() > limits.max_name_bytes || (nul && path.contains('\0')) {
        return Err(check_name(path, limits)
            .err()
            .unwrap_or_else(|| Rejection::new(Reason::BadName, "invalid metric path"))
            .at(line_no, raw));
    }
    if semi.is_some() {
        if tag_str.is_empty() {
            return Err(err(Reason::BadLabel, "empty tag list after ';'"));
        }
        check_tags(tag_str, limits).map_err(|r| r.at(line_no, raw))?;
    }
    let Some(value) = parse_f64(value_bytes) else {
        return Err(err(Reason::BadValue, "value is not a number"));
    };
    let timestamp_ms = if ts_bytes.is_empty() {
        None
    } else {
        match parse_timestamp(ts_bytes) {
            Some(t) => t,
            None => {
                return Err(err(
                    Reason::BadTimestamp,
                    "timestamp is not a number of seconds in range",
                ));
            }
        }
    };
    Ok(GraphiteLine {
        key,
        path,
        tags: tag_str,
        value,
        timestamp_ms,
    })
}

/// Parses a buffer of `\n`-separated lines (a UDP packet, a TCP read): the good lines, and one
/// error per bad line. Blank lines are skipped. An unterminated last line is parsed too.
pub fn decode<'a>(buf: &'a [u8], limits: &WireLimits) -> (Vec<GraphiteLine<'a>>, Vec<LineError>) {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut rest = buf;
    let mut line_no = 0usize;
    while !rest.is_empty() {
        line_no += 1;
        let (line, next) = match memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        if trim(line).is_empty() {
            continue;
        }
        match parse_at(line, line_no, limits) {
            Ok(l) => lines.push(l),
            Err(e) => errors.push(e),
        }
    }
    (lines, errors)
}

/// Writes one line in the plaintext format, `\n` included: the inverse of [`parse_line`] for
/// keys without blanks or newlines. Timestamps are written as seconds, with three decimals when
/// they are not whole seconds; `None` writes no timestamp.
pub fn format_line(out: &mut String, key: &str, value: f64, timestamp_ms: Option<i64>) {
    use std::fmt::Write as _;
    let _ = write!(out, "{key} {value}");
    if let Some(ms) = timestamp_ms {
        let secs = ms.div_euclid(1000);
        let frac = ms.rem_euclid(1000);
        if frac == 0 {
            let _ = write!(out, " {secs}");
        } else if secs < 0 {
            // -1.5 s is secs = -2, frac = 500: write it as a plain decimal
            let _ = write!(out, " {}", ms as f64 / 1000.0);
        } else {
            let _ = write!(out, " {secs}.{frac:03}");
        }
    }
    out.push('\n');
}

/// Iterates over raw Graphite tags `k=v;k2=v2`, validating each (Graphite's rules, see the
/// module doc). `""` yields nothing.
pub fn tags(raw: &str) -> impl Iterator<Item = Result<(&str, &str), Rejection>> {
    let mut segments = (!raw.is_empty()).then(|| raw.split(';'));
    std::iter::from_fn(move || segments.as_mut()?.next()).map(parse_tag)
}

fn parse_tag(segment: &str) -> Result<(&str, &str), Rejection> {
    let Some((name, value)) = segment.split_once('=') else {
        return Err(Rejection::new(Reason::BadLabel, "tag has no '='"));
    };
    if name.is_empty() {
        return Err(Rejection::new(Reason::BadLabel, "tag name is empty"));
    }
    if name.bytes().any(|b| matches!(b, b'!' | b'^')) {
        return Err(Rejection::new(Reason::BadLabel, "tag name contains '!' or '^'"));
    }
    if value.is_empty() {
        return Err(Rejection::new(Reason::BadLabel, "tag value is empty"));
    }
    if value.starts_with('~') {
        return Err(Rejection::new(Reason::BadLabel, "tag value starts with '~'"));
    }
    Ok((name, value))
}

/// Validates raw tags against Graphite's rules and the limits without allocating (unless bad).
fn check_tags(raw: &str, limits: &WireLimits) -> Result<(), Rejection> {
    let mut count = 0usize;
    for tag in tags(raw) {
        let (k, v) = tag?;
        check_label(k, v, limits)?;
        count += 1;
        if count > limits.max_labels {
            return Err(Rejection::new(
                Reason::TooManyLabels,
                format!("more than the limit of {} tags", limits.max_labels),
            ));
        }
    }
    Ok(())
}

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r')
}

fn find_blank(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| is_blank(b))
}

fn skip_blanks(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_blank(b)).unwrap_or(s.len());
    &s[start..]
}

fn trim(s: &[u8]) -> &[u8] {
    let s = skip_blanks(s);
    let end = s.iter().rposition(|&b| !is_blank(b)).map_or(0, |i| i + 1);
    &s[..end]
}

/// Exact powers of ten representable in an f64 (10^0 ..= 10^22).
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
    1e19, 1e20, 1e21, 1e22,
];

/// Parses a float. Fast path for plain decimals whose digits fit in 2^53 (`37.42`): the digits
/// are exact in an f64, 10^k (k <= 19) is exact, so one IEEE division is correctly rounded
/// (Clinger's fast path). Everything else goes through `str::parse`, also correctly rounded.
pub(crate) fn parse_f64(s: &[u8]) -> Option<f64> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return parse_f64_slow(s);
    }
    // at most 19 digits: the mantissa cannot overflow a u64
    let mut mantissa: u64 = 0;
    let mut dot = None;
    for (i, &b) in digits.iter().enumerate() {
        let d = b.wrapping_sub(b'0');
        if d < 10 {
            mantissa = mantissa * 10 + u64::from(d);
        } else if b == b'.' && dot.is_none() {
            dot = Some(i);
        } else {
            return parse_f64_slow(s);
        }
    }
    let frac = dot.map_or(0, |i| digits.len() - i - 1);
    if digits.len() == 1 && dot.is_some() || mantissa > 1 << 53 {
        return parse_f64_slow(s);
    }
    let v = mantissa as f64 / POW10.get(frac).copied()?;
    Some(if neg { -v } else { v })
}

fn parse_f64_slow(s: &[u8]) -> Option<f64> {
    std::str::from_utf8(s).ok()?.parse::<f64>().ok()
}

/// Parses a Graphite timestamp (seconds): `Some(None)` for "now" (`-1`), `Some(Some(ms))`, or
/// `None` when it is not a number in range.
fn parse_timestamp(s: &[u8]) -> Option<Option<i64>> {
    if s == b"-1" {
        return Some(None);
    }
    if !s.is_empty() && s.len() <= 18 {
        let mut secs: i64 = 0;
        let mut all_digits = true;
        for &b in s {
            let d = b.wrapping_sub(b'0');
            all_digits &= d < 10;
            // wrapping: a non-digit makes the value meaningless, and it is then discarded
            secs = secs.wrapping_mul(10).wrapping_add(i64::from(d));
        }
        if all_digits {
            // at most 18 digits, so `secs` is exact; the range check keeps `* 1000` in range
            return (secs < MAX_ABS_TIMESTAMP_MS / 1000).then(|| Some(secs * 1000));
        }
    }
    let secs = parse_f64(s)?;
    if secs == -1.0 {
        return Some(None);
    }
    model::Timestamp::from_secs_f64(secs).map(|t| Some(t.millis()))
}

/// Why a template could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template string was blank.
    #[error("template is empty")]
    Empty,
    /// More than `filter template tags`.
    #[error("template {0:?} has more than three parts (filter, template, tags)")]
    TooManyParts(String),
    /// The template names no `measurement` part.
    #[error("template {0:?} has no measurement part")]
    NoMeasurement(String),
    /// Both greedy forms in one template.
    #[error("template {0:?} uses both 'measurement*' and 'field*'")]
    BothGreedy(String),
    /// The extra tags are not `k=v,k2=v2` with non-empty names and values.
    #[error("template {0:?} has malformed extra tags")]
    BadTags(String),
    /// The filter has an empty part (`a..b`).
    #[error("template {0:?} has a filter with an empty part")]
    BadFilter(String),
    /// Two templates share a filter (or two have none), so which applies would be ambiguous.
    #[error("template {0:?} repeats the filter of an earlier template")]
    DuplicateFilter(String),
}

/// A set of InfluxDB-1.x-style Graphite templates: `[filter] template [k=v,k2=v2]`.
///
/// - The **template** is dotted parts matched position by position against the path's parts:
///   `measurement` (joined with `.` when several), `measurement*` (this and all remaining path
///   parts), `field` (joined with `.`), `field*` (greedy), an empty part (skip that path part),
///   or any other word: a label of that name (several parts with the same label name are joined
///   with `.`). The name is the measurement, or `measurement_field` when there is a field (a
///   template `host.measurement.field` turns `server1.cpu.idle` into `cpu_idle{host="server1"}`).
///   Path parts beyond the template are ignored, as in InfluxDB; if the path is too short to
///   reach any measurement part, the whole path is the name.
/// - The optional **filter** is dotted parts, each a literal, `*` (any part) or a glob with `*`
///   inside (`cpu*`); it matches a path that has at least as many parts (a prefix match, as in
///   InfluxDB). When several filters match, the most specific wins: comparing part by part, a
///   literal beats a glob beats `*`, then the longer filter wins.
/// - A template **without a filter** is the default, used when no filter matches. At most one.
/// - The optional **extra tags** are labels added to every series the template produces; labels
///   taken from the path replace them.
///
/// Not supported: InfluxDB's configurable separator (always `.`), and its quirk of joining an
/// extra tag with a path label of the same name.
#[derive(Debug, Clone, Default)]
pub struct Templates {
    filtered: Vec<(Filter, Template)>,
    default: Option<Template>,
}

#[derive(Debug, Clone)]
struct Template {
    parts: Vec<Part>,
    extra: Vec<Label>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Skip,
    Measurement,
    MeasurementGreedy,
    Field,
    FieldGreedy,
    Label(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Filter(Vec<FilterPart>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum FilterPart {
    Literal(String),
    Glob(String),
    Any,
}

impl FilterPart {
    /// Lower is more specific.
    fn rank(&self) -> u8 {
        match self {
            FilterPart::Literal(_) => 0,
            FilterPart::Glob(_) => 1,
            FilterPart::Any => 2,
        }
    }

    fn matches(&self, part: &str) -> bool {
        match self {
            FilterPart::Literal(l) => l == part,
            FilterPart::Glob(g) => glob_match(g.as_bytes(), part.as_bytes()),
            FilterPart::Any => true,
        }
    }
}

impl Filter {
    fn matches(&self, parts: &[&str]) -> bool {
        self.0.len() <= parts.len() && self.0.iter().zip(parts).all(|(f, p)| f.matches(p))
    }

    /// Whether `self` is more specific than `other`.
    fn beats(&self, other: &Filter) -> bool {
        for (a, b) in self.0.iter().zip(&other.0) {
            if a.rank() != b.rank() {
                return a.rank() < b.rank();
            }
        }
        self.0.len() > other.0.len()
    }
}

/// `*` matches any run of bytes; everything else matches itself. Iterative, no backtracking
/// blow-up (the classic two-pointer algorithm).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

impl Templates {
    /// Parses template strings (from config). Fails on the first bad one.
    pub fn parse(specs: &[String]) -> Result<Templates, TemplateError> {
        let mut out = Templates::default();
        for spec in specs {
            let words: Vec<&str> = spec.split_whitespace().collect();
            let (filter, template, extra) = match words.as_slice() {
                [] => return Err(TemplateError::Empty),
                [t] => (None, *t, None),
                [t, tags] if tags.contains('=') => (None, *t, Some(*tags)),
                [f, t] => (Some(*f), *t, None),
                [f, t, tags] => (Some(*f), *t, Some(*tags)),
                _ => return Err(TemplateError::TooManyParts(spec.clone())),
            };
            let template = parse_template(spec, template, extra)?;
            match filter {
                None => {
                    if out.default.is_some() {
                        return Err(TemplateError::DuplicateFilter(spec.clone()));
                    }
                    out.default = Some(template);
                }
                Some(f) => {
                    let filter = parse_filter(spec, f)?;
                    if out.filtered.iter().any(|(g, _)| *g == filter) {
                        return Err(TemplateError::DuplicateFilter(spec.clone()));
                    }
                    out.filtered.push((filter, template));
                }
            }
        }
        Ok(out)
    }

    /// Whether there are no templates at all (then [`Templates::apply`] always answers `None`).
    pub fn is_empty(&self) -> bool {
        self.filtered.is_empty() && self.default.is_none()
    }

    /// Applies the best-matching template to a dotted path: the metric name and labels, or
    /// `None` when no template matches (the path then stays the name).
    pub fn apply(&self, path: &str) -> Option<(String, Vec<Label>)> {
        if self.is_empty() {
            return None;
        }
        let parts: Vec<&str> = path.split('.').collect();
        let mut best: Option<&(Filter, Template)> = None;
        for candidate in &self.filtered {
            if candidate.0.matches(&parts) && best.is_none_or(|b| candidate.0.beats(&b.0)) {
                best = Some(candidate);
            }
        }
        let template = best.map(|(_, t)| t).or(self.default.as_ref())?;
        Some(template.apply(path, &parts))
    }
}

impl Template {
    fn apply(&self, path: &str, parts: &[&str]) -> (String, Vec<Label>) {
        let mut measurement: Vec<&str> = Vec::new();
        let mut field: Vec<&str> = Vec::new();
        let mut labels: Vec<(&str, Vec<&str>)> = Vec::new();
        for (i, part) in self.parts.iter().enumerate() {
            let Some(&value) = parts.get(i) else { break };
            let rest = parts.get(i..).unwrap_or_default();
            match part {
                Part::Skip => {}
                Part::Measurement => measurement.push(value),
                Part::MeasurementGreedy => {
                    measurement.extend_from_slice(rest);
                    break;
                }
                Part::Field => field.push(value),
                Part::FieldGreedy => {
                    field.extend_from_slice(rest);
                    break;
                }
                Part::Label(name) => match labels.iter_mut().find(|(n, _)| n == name) {
                    Some((_, values)) => values.push(value),
                    None => labels.push((name, vec![value])),
                },
            }
        }
        let mut name = if measurement.is_empty() {
            path.to_owned()
        } else {
            measurement.join(".")
        };
        if !field.is_empty() {
            name.push('_');
            name.push_str(&field.join("."));
        }
        let mut out: Vec<Label> = self
            .extra
            .iter()
            .filter(|e| !labels.iter().any(|(n, _)| *n == e.name))
            .cloned()
            .collect();
        out.extend(labels.into_iter().map(|(n, v)| Label::new(n, v.join("."))));
        (name, out)
    }
}

fn parse_template(spec: &str, template: &str, extra: Option<&str>) -> Result<Template, TemplateError> {
    let parts: Vec<Part> = template
        .split('.')
        .map(|p| match p {
            "" => Part::Skip,
            "measurement" => Part::Measurement,
            "measurement*" => Part::MeasurementGreedy,
            "field" => Part::Field,
            "field*" => Part::FieldGreedy,
            other => Part::Label(other.to_owned()),
        })
        .collect();
    if !parts
        .iter()
        .any(|p| matches!(p, Part::Measurement | Part::MeasurementGreedy))
    {
        return Err(TemplateError::NoMeasurement(spec.to_owned()));
    }
    if parts.contains(&Part::MeasurementGreedy) && parts.contains(&Part::FieldGreedy) {
        return Err(TemplateError::BothGreedy(spec.to_owned()));
    }
    let mut labels = Vec::new();
    if let Some(extra) = extra {
        for kv in extra.split(',') {
            match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() && !v.is_empty() => labels.push(Label::new(k, v)),
                _ => return Err(TemplateError::BadTags(spec.to_owned())),
            }
        }
    }
    Ok(Template { parts, extra: labels })
}

fn parse_filter(spec: &str, filter: &str) -> Result<Filter, TemplateError> {
    filter
        .split('.')
        .map(|p| match p {
            "" => Err(TemplateError::BadFilter(spec.to_owned())),
            "*" => Ok(FilterPart::Any),
            g if g.contains('*') => Ok(FilterPart::Glob(g.to_owned())),
            l => Ok(FilterPart::Literal(l.to_owned())),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> WireLimits {
        WireLimits::default()
    }

    /// Renders a parse result compactly: `key|path|tags|value|ts` or `error:reason`.
    fn show(line: &[u8]) -> String {
        match parse_line(line, &limits()) {
            Ok(l) => format!(
                "{}|{}|{}|{:?}|{}",
                l.key,
                l.path,
                l.tags,
                l.value,
                l.timestamp_ms.map_or("now".to_owned(), |t| t.to_string())
            ),
            Err(e) => format!("error:{}", e.reason),
        }
    }

    #[test]
    fn lines() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"host123.cpu4.usage_user 37.42 1700000000",
                "host123.cpu4.usage_user|host123.cpu4.usage_user||37.42|1700000000000",
            ),
            (b"a.b 1 1700000000\r", "a.b|a.b||1.0|1700000000000"),
            (b"  a.b \t 1\t\t1700000000  ", "a.b|a.b||1.0|1700000000000"),
            (b"a.b 1", "a.b|a.b||1.0|now"),
            (b"a.b 1 -1", "a.b|a.b||1.0|now"),
            (b"a.b 1 -1.0", "a.b|a.b||1.0|now"),
            (b"a.b 1 1700000000.5", "a.b|a.b||1.0|1700000000500"),
            (b"a.b 1 1700000000.0004", "a.b|a.b||1.0|1700000000000"),
            (b"a.b 1 0", "a.b|a.b||1.0|0"),
            (b"a.b 1 -5", "a.b|a.b||1.0|-5000"),
            (b"a.b 1 1e9", "a.b|a.b||1.0|1000000000000"),
            (b"a.b -0.0 1", "a.b|a.b||-0.0|1000"),
            (b"a.b nan 1", "a.b|a.b||NaN|1000"),
            (b"a.b NaN 1", "a.b|a.b||NaN|1000"),
            (b"a.b inf 1", "a.b|a.b||inf|1000"),
            (b"a.b -Infinity 1", "a.b|a.b||-inf|1000"),
            (b"a.b +5 1", "a.b|a.b||5.0|1000"),
            (b"a.b .5 1", "a.b|a.b||0.5|1000"),
            (b"a.b 5. 1", "a.b|a.b||5.0|1000"),
            (b"a.b 1e-3 1", "a.b|a.b||0.001|1000"),
            (
                b"a.b 12345678901234567890 1",
                "a.b|a.b||1.2345678901234567e19|1000",
            ),
            (
                b"a.b 0.1234567890123456789 1",
                "a.b|a.b||0.12345678901234568|1000",
            ),
            (
                b"a.b;dc=ams;host=x1 2 1",
                "a.b;dc=ams;host=x1|a.b|dc=ams;host=x1|2.0|1000",
            ),
            (b"a.b;k=v=w 2 1", "a.b;k=v=w|a.b|k=v=w|2.0|1000"),
            (
                "température.cuisine 21.5 1".as_bytes(),
                "température.cuisine|température.cuisine||21.5|1000",
            ),
            // errors
            (b"", "error:malformed"),
            (b"   \r", "error:malformed"),
            (b"a.b", "error:malformed"),
            (b"a.b 1 2 3", "error:malformed"),
            (b"a.b x 1", "error:bad_value"),
            (b"a.b 1x 1", "error:bad_value"),
            (b"a.b 0x10 1", "error:bad_value"),
            (b"a.b . 1", "error:bad_value"),
            (b"a.b - 1", "error:bad_value"),
            (b"a.b 1_000 1", "error:bad_value"),
            (b"a.b 1 abc", "error:bad_timestamp"),
            (b"a.b 1 nan", "error:bad_timestamp"),
            (b"a.b 1 inf", "error:bad_timestamp"),
            (b"a.b 1 99999999999999999", "error:bad_timestamp"),
            (b"a.b 1 999999999999999999999", "error:bad_timestamp"),
            (b"a.b 1 1e300", "error:bad_timestamp"),
            (b"a\xffb 1 1", "error:invalid_utf8"),
            (b";k=v 1 1", "error:bad_name"),
            (b"a.b; 1 1", "error:bad_label"),
            (b"a.b;k 1 1", "error:bad_label"),
            (b"a.b;=v 1 1", "error:bad_label"),
            (b"a.b;k= 1 1", "error:bad_label"),
            (b"a.b;k=~v 1 1", "error:bad_label"),
            (b"a.b;k!=v 1 1", "error:bad_label"),
            (b"a.b;k^=v 1 1", "error:bad_label"),
            (b"a.b;k=v;; 1 1", "error:bad_label"),
            (b"a.b;k=v\0 1 1", "error:bad_label"),
        ];
        for (line, want) in cases {
            assert_eq!(show(line), *want, "line {:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn limits_are_enforced() {
        let tight = WireLimits {
            max_line_bytes: 40,
            max_labels: 2,
            max_name_bytes: 8,
            max_label_value_bytes: 4,
        };
        let cases: &[(&[u8], Option<Reason>)] = &[
            (b"a.b;x=1;y=2 1 1", None),
            (b"a.b;x=1;y=2;z=3 1 1", Some(Reason::TooManyLabels)),
            (b"abcdefghi 1 1", Some(Reason::BadName)),
            (b"a;x=12345 1 1", Some(Reason::BadLabel)),
            (b"a;abcdefghi=1 1 1", Some(Reason::BadLabel)),
            (
                b"a 1 1                                      ",
                Some(Reason::LineTooLong),
            ),
        ];
        for (line, want) in cases {
            let got = parse_line(line, &tight).err().map(|e| e.reason);
            assert_eq!(got, *want, "line {:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn decode_keeps_good_lines_and_numbers_bad_ones() {
        let buf = b"a 1 1\n\nbad\r\n  \nb 2 2\r\nc x 3\nd 4";
        let (lines, errors) = decode(buf, &limits());
        let keys: Vec<&str> = lines.iter().map(|l| l.key).collect();
        assert_eq!(keys, ["a", "b", "d"]);
        let errs: Vec<(usize, &str, &str)> = errors
            .iter()
            .map(|e| (e.line, e.reason.as_str(), e.excerpt.as_str()))
            .collect();
        assert_eq!(errs, [(3, "malformed", "bad\r"), (6, "bad_value", "c x 3")]);
        assert_eq!(decode(b"", &limits()), (vec![], vec![]));
        assert_eq!(decode(b"\n\n", &limits()), (vec![], vec![]));
    }

    #[test]
    fn series_keys_from_tags_and_templates() {
        let templates = Templates::parse(&[
            "host.measurement.field".to_owned(),
            "*.app env.service.resource.measurement".to_owned(),
            "stats.* .measurement* region=eu".to_owned(),
        ])
        .unwrap();
        let cases: &[(&str, &str)] = &[
            ("server1.cpu.idle 1", r#"cpu_idle{host="server1"}"#),
            ("server1.cpu.idle;host=override 1", r#"cpu_idle{host="override"}"#),
            (
                "prod.app.db.latency 1",
                r#"latency{env="prod",resource="db",service="app"}"#,
            ),
            ("stats.gauges.a.b 1", r#"{"gauges.a.b",region="eu"}"#),
            ("a.b;z=1;y=2 1", r#"b{host="a",y="2",z="1"}"#),
            ("server1 1", r#"server1{host="server1"}"#),
        ];
        for (line, want) in cases {
            let l = parse_line(line.as_bytes(), &limits()).unwrap();
            let key = l.series_key(Some(&templates), &limits()).unwrap();
            assert_eq!(key.to_string(), *want, "{line}");
        }
        let plain = parse_line(b"a.b;y=2 1", &limits()).unwrap();
        assert_eq!(
            plain.series_key(None, &limits()).unwrap().to_string(),
            r#"{"a.b",y="2"}"#
        );
        for (key, want) in [
            ("a.b;y=2", Ok(r#"{"a.b",y="2"}"#)),
            ("server1.cpu.idle", Ok(r#"{"server1.cpu.idle"}"#)),
            ("a.b;", Err(Reason::BadLabel)),
            ("a.b;y", Err(Reason::BadLabel)),
            (";y=1", Err(Reason::BadName)),
            ("", Err(Reason::BadName)),
        ] {
            let got = key_to_series(key, None, &limits())
                .map(|k| k.to_string())
                .map_err(|r| r.reason);
            assert_eq!(got, want.map(str::to_owned), "{key}");
        }
        let dup = parse_line(b"a.b;y=2;y=3 1", &limits()).unwrap();
        assert_eq!(
            dup.series_key(None, &limits()).unwrap_err().reason,
            Reason::BadLabel
        );
    }

    #[test]
    fn template_semantics() {
        // (templates, path, expected name and labels or None)
        let cases: &[(&[&str], &str, Option<&str>)] = &[
            (&["measurement*"], "a.b.c", Some("a.b.c")),
            (&["host.measurement*"], "h.a.b", Some("a.b host=h")),
            (&["measurement.measurement.field*"], "a.b.c.d", Some("a.b_c.d")),
            (&["host.host.measurement"], "h1.h2.m", Some("m host=h1.h2")),
            (&["..measurement"], "x.y.m.z", Some("m")),
            (&["cpu.* measurement.host"], "mem.h1", None),
            (
                &["cpu.* measurement.host", "measurement*"],
                "mem.h1",
                Some("mem.h1"),
            ),
            (&["cpu.* measurement.host"], "cpu.h1.extra", Some("cpu host=h1")),
            (&["cpu.* measurement.host"], "cpu", None),
            (
                &["*.* measurement.a", "cpu.* measurement.b"],
                "cpu.x",
                Some("cpu b=x"),
            ),
            (
                &["cpu.* measurement.a", "cpu.x measurement.b"],
                "cpu.x",
                Some("cpu b=x"),
            ),
            (
                &["cpu measurement.a", "cpu.x measurement.b"],
                "cpu.x",
                Some("cpu b=x"),
            ),
            (
                &["cp* measurement.a", "* measurement.b"],
                "cpu.x",
                Some("cpu a=x"),
            ),
            (&["host.measurement.field"], "h", Some("h host=h")),
            (
                &["measurement.field region=eu,dc=1"],
                "m.f",
                Some("m_f dc=1 region=eu"),
            ),
            (&["measurement.region region=eu"], "m.us", Some("m region=us")),
        ];
        for (specs, path, want) in cases {
            let specs: Vec<String> = specs.iter().map(|s| (*s).to_owned()).collect();
            let t = Templates::parse(&specs).unwrap();
            let got = t.apply(path).map(|(name, mut labels)| {
                labels.sort();
                let mut s = name;
                for l in labels {
                    s.push_str(&format!(" {}={}", l.name, l.value));
                }
                s
            });
            assert_eq!(got.as_deref(), *want, "{specs:?} on {path}");
        }
    }

    #[test]
    fn bad_templates() {
        let cases: &[(&[&str], TemplateError)] = &[
            (&[""], TemplateError::Empty),
            (&["host.field"], TemplateError::NoMeasurement("host.field".into())),
            (
                &["measurement*.field*"],
                TemplateError::BothGreedy("measurement*.field*".into()),
            ),
            (&["a b c d"], TemplateError::TooManyParts("a b c d".into())),
            (
                &["measurement x=1,y"],
                TemplateError::BadTags("measurement x=1,y".into()),
            ),
            (
                &["a..b measurement"],
                TemplateError::BadFilter("a..b measurement".into()),
            ),
            (
                &["measurement", "measurement*"],
                TemplateError::DuplicateFilter("measurement*".into()),
            ),
            (
                &["a measurement", "a measurement*"],
                TemplateError::DuplicateFilter("a measurement*".into()),
            ),
        ];
        for (specs, want) in cases {
            let specs: Vec<String> = specs.iter().map(|s| (*s).to_owned()).collect();
            assert_eq!(Templates::parse(&specs).unwrap_err(), *want, "{specs:?}");
        }
        assert!(Templates::parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn glob() {
        let cases = [
            ("*", "", true),
            ("cpu*", "cpu0", true),
            ("cpu*", "cp", false),
            ("*u*", "cpu", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("**", "x", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p.as_bytes(), t.as_bytes()), want, "{p} {t}");
        }
    }

    #[test]
    fn fast_float_path_agrees_with_std() {
        for s in [
            "0",
            "-0",
            "37.42",
            "0.1",
            "123456789012345",
            "1.00000000000001",
            "99.99",
            "-0.000001",
        ] {
            assert_eq!(
                parse_f64(s.as_bytes()).map(f64::to_bits),
                s.parse::<f64>().ok().map(f64::to_bits),
                "{s}"
            );
        }
    }

    #[test]
    fn fast_float_path_rejects_what_std_rejects() {
        for s in [".", "-.", "+", "-", "", "1.2.3", "1..2", "--1", "1-", "1 ", "١"] {
            assert_eq!(parse_f64(s.as_bytes()), None, "{s:?}");
        }
        assert_eq!(
            parse_timestamp(b"8999999999999"),
            Some(Some(8_999_999_999_999_000))
        );
        assert_eq!(parse_timestamp(b"9000000000000"), None);
        assert_eq!(parse_timestamp(b"999999999999999999"), None);
        assert_eq!(parse_timestamp(b"12a"), None);
    }

    proptest::proptest! {
        #[test]
        fn fast_float_path_matches_std(m in 0u64..1_000_000_000_000_000, frac in 0usize..16, neg: bool) {
            let digits = m.to_string();
            let s = if frac > 0 && frac < digits.len() {
                format!("{}{}.{}", if neg { "-" } else { "" }, &digits[..digits.len() - frac], &digits[digits.len() - frac..])
            } else {
                format!("{}{}", if neg { "-" } else { "" }, digits)
            };
            proptest::prop_assert_eq!(parse_f64(s.as_bytes()).map(f64::to_bits), s.parse::<f64>().ok().map(f64::to_bits));
        }

        #[test]
        fn format_then_parse_round_trips(
            path in "[a-z0-9_]{1,8}(\\.[a-z0-9_]{1,8}){0,4}",
            tags in proptest::collection::vec(("[a-z]{1,6}", "[a-z0-9.]{1,6}"), 0..4),
            value in proptest::num::f64::ANY,
            ts in proptest::option::of(0i64..4_000_000_000_000),
        ) {
            let mut key = path.clone();
            for (k, v) in &tags {
                key.push(';');
                key.push_str(k);
                key.push('=');
                key.push_str(v);
            }
            let mut out = String::new();
            format_line(&mut out, &key, value, ts);
            let line = out.strip_suffix('\n').unwrap();
            let parsed = parse_line(line.as_bytes(), &limits()).unwrap();
            proptest::prop_assert_eq!(parsed.key, key.as_str());
            proptest::prop_assert_eq!(parsed.path, path.as_str());
            proptest::prop_assert_eq!(parsed.timestamp_ms, ts);
            if value.is_nan() {
                proptest::prop_assert!(parsed.value.is_nan());
            } else {
                proptest::prop_assert_eq!(parsed.value.to_bits(), value.to_bits());
            }
        }
    }
}
