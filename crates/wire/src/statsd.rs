//! StatsD and DogStatsD lines: `name:value|type[|@rate][|#tag:v,flag]`, several per packet.
//!
//! The parser is pure and borrowing: every [`StatsdMetric`] points into the packet, and
//! [`visit_packet`] hands metrics to a callback without allocating anything on the success
//! path (only a rejected line allocates its [`LineError`]). [`parse_packet`] collects the
//! same into vectors for callers that prefer them.
//!
//! # Accepted syntax
//!
//! | part | form | notes |
//! |---|---|---|
//! | packet | lines separated by `\n` | a trailing `\r` and surrounding ASCII whitespace are trimmed; empty lines are skipped |
//! | name | everything before the first `:` | non-empty, at most [`WireLimits::max_name_bytes`], no whitespace, control characters, `\|` or `#` |
//! | value | `value\|type` | Etsy's multi-value form `name:1\|c:2\|ms` gives one metric per `:`-separated chunk; DogStatsD's packed form `name:1:2:3\|h` gives the untyped values the type (and rate) of the next typed chunk |
//! | `c` | counter, any finite number | |
//! | `g` | gauge; a leading `+` or `-` makes it a delta ([`StatsdValue::GaugeDelta`]) | as Etsy: a negative absolute gauge needs a reset to `0` first |
//! | `ms` | timer, finite and `>= 0` | Etsy rejects negative timings too |
//! | `h`, `d` | histogram, distribution (DogStatsD), any finite number | aggregated as timers |
//! | `s` | set member, any non-empty string up to [`WireLimits::max_label_value_bytes`] | |
//! | `@rate` | sample rate, `0 < rate <= 1` | ignored by gauges and sets, as Etsy does |
//! | `#tags` | DogStatsD tags `k:v,k2:v2,flag` | see below |
//! | `T<ts>`, `c:<id>`, `e:<..>` | DogStatsD timestamp, container id, external data | accepted and ignored: aggregation stamps samples with the flush time |
//!
//! Tags run from `|#` to the next `|` or the end of the line, and apply to every value of the
//! line; fields after them (such as `|@0.5` or `|T1700000000`) are read as above. A tag is
//! split at its first `:`: `k:v` is the label `k="v"`. A tag without `:` (a DogStatsD *flag*)
//! becomes the label `flag="true"` ([`FLAG_TAG_VALUE`]) because a Prometheus label needs a
//! value; `k:` (an explicitly empty value) yields `("k", "")`, which [`model::SeriesKey`]
//! drops, as Prometheus treats an empty value as an absent label. Tag names must be non-empty;
//! names and values obey [`WireLimits`] and there are at most [`WireLimits::max_labels`] tags.
//! Duplicate tag names are not detected here (that needs sorting); the aggregator rejects them
//! when it first builds the series key.
//!
//! # Deliberate differences from Etsy StatsD
//!
//! - Names are not sanitised (Etsy rewrites whitespace to `_`, `/` to `-` and drops other
//!   characters): Roaster names are arbitrary UTF-8, and a name Etsy would rewrite is rejected
//!   as [`Reason::BadName`] only when it contains whitespace, control characters, `|` or `#`.
//! - Unknown types are rejected as [`Reason::Unsupported`] (Etsy counts them as counters);
//!   `h` and `d` are aggregated as timers (Etsy counts them as counters).
//! - Non-finite values (`nan`, `inf`) and sample rates outside `(0, 1]` are rejected as
//!   [`Reason::BadValue`] (Etsy divides by a zero rate and accepts rates above one).
//! - An empty set member is rejected (Etsy stores it as `"0"`).
//!
//! A bad line costs that line; a bad value in a multi-value line costs that value.

use crate::{LineError, Reason, Rejection, WireLimits, check_label, check_name};

/// The value a DogStatsD flag tag (a tag without `:`) gets as a label value.
pub const FLAG_TAG_VALUE: &str = "true";

/// One StatsD value with its type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StatsdValue<'a> {
    /// `c`: added to the counter, divided by the sample rate.
    Counter(f64),
    /// `g` without a sign: the gauge's new value.
    Gauge(f64),
    /// `g` with a leading `+` or `-`: added to the gauge's previous value.
    GaugeDelta(f64),
    /// `ms`: a timing in milliseconds, never negative.
    Timer(f64),
    /// `h`: a DogStatsD histogram value, aggregated as a timer.
    Histogram(f64),
    /// `d`: a DogStatsD distribution value, aggregated as a timer.
    Distribution(f64),
    /// `s`: a set member; never empty.
    Set(&'a str),
}

/// One metric of a packet, borrowed from the packet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsdMetric<'a> {
    /// The metric name as sent; satisfies the limits (see the module doc).
    pub name: &'a str,
    /// The typed value.
    pub value: StatsdValue<'a>,
    /// The sample rate, `0 < sample_rate <= 1`; `1.0` when none was sent.
    pub sample_rate: f64,
    /// The raw DogStatsD tag list (`k:v,flag`), `""` if none; read it with [`tags`]. Its tags
    /// were checked against the limits.
    pub tags: &'a str,
}

/// The tags of a raw DogStatsD tag list as `(name, value)` pairs, in the order sent. Empty
/// items (`a:1,,b:2`) are skipped; a flag `f` yields `("f", FLAG_TAG_VALUE)`.
pub fn tags(raw: &str) -> impl Iterator<Item = (&str, &str)> {
    raw.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once(':') {
            Some((k, v)) => (k, v),
            None => (t, FLAG_TAG_VALUE),
        })
}

/// Parses a packet into its metrics and the errors of its rejected lines (or values).
pub fn parse_packet<'a>(packet: &'a [u8], limits: &WireLimits) -> (Vec<StatsdMetric<'a>>, Vec<LineError>) {
    let mut metrics = Vec::new();
    let mut errors = Vec::new();
    visit_packet(packet, limits, |r| match r {
        Ok(m) => metrics.push(m),
        Err(e) => errors.push(e),
    });
    (metrics, errors)
}

/// Parses a packet and hands each metric, or each error, to `each` in packet order. Does not
/// allocate except to build a [`LineError`]; this is the hot-path entry point.
pub fn visit_packet<'a>(
    packet: &'a [u8],
    limits: &WireLimits,
    mut each: impl FnMut(Result<StatsdMetric<'a>, LineError>),
) {
    let mut start = 0;
    let mut lineno = 0;
    while start <= packet.len() {
        let end = memchr::memchr(b'\n', &packet[start..]).map_or(packet.len(), |i| start + i);
        lineno += 1;
        parse_line(&packet[start..end], lineno, limits, &mut each);
        start = end + 1;
    }
}

/// The parts of a line shared by all of its values.
struct Common<'a> {
    name: &'a str,
    tags: &'a str,
    /// A sample rate given after the tags, for values without their own.
    rate: Option<f64>,
}

fn parse_line<'a>(
    raw: &'a [u8],
    lineno: usize,
    limits: &WireLimits,
    each: &mut impl FnMut(Result<StatsdMetric<'a>, LineError>),
) {
    let line = raw.trim_ascii();
    if line.is_empty() {
        return;
    }
    if line.len() > limits.max_line_bytes {
        let detail = format!(
            "line is {} bytes, more than the limit of {}",
            line.len(),
            limits.max_line_bytes
        );
        each(Err(LineError::new(lineno, Reason::LineTooLong, raw, detail)));
        return;
    }
    let Ok(line) = std::str::from_utf8(line) else {
        each(Err(LineError::new(
            lineno,
            Reason::InvalidUtf8,
            raw,
            "line is not valid utf-8",
        )));
        return;
    };
    let (common, values) = match split_line(line, limits) {
        Ok(parts) => parts,
        Err(r) => {
            each(Err(r.at(lineno, raw)));
            return;
        }
    };
    // Untyped values waiting for the type of the next typed chunk (DogStatsD packed form).
    let mut pending: Option<&str> = None;
    let mut rest = values;
    loop {
        let (chunk, next) = match split_once_byte(rest, b':') {
            Some((c, n)) => (c, Some(n)),
            None => (rest, None),
        };
        match split_once_byte(chunk, b'|') {
            None => {
                pending = Some(match pending {
                    // The run of packed values is contiguous in the line: widen it.
                    Some(p) => values
                        .get(offset(values, p)..offset(values, chunk) + chunk.len())
                        .unwrap_or(chunk),
                    None => chunk,
                });
            }
            Some((value, fields)) => match parse_fields(fields, common.rate) {
                Ok((kind, rate)) => {
                    if let Some(p) = pending.take() {
                        for v in p.split(':') {
                            emit(v, kind, rate, &common, limits, lineno, raw, each);
                        }
                    }
                    emit(value, kind, rate, &common, limits, lineno, raw, each);
                }
                Err(r) => {
                    pending = None;
                    each(Err(r.at(lineno, raw)));
                }
            },
        }
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    if pending.is_some() {
        each(Err(LineError::new(
            lineno,
            Reason::Malformed,
            raw,
            "value without a type (expected value|type)",
        )));
    }
}

/// `s` split around the first `b` (an ASCII byte, so both halves are valid UTF-8), found
/// with `memchr`.
fn split_once_byte(s: &str, b: u8) -> Option<(&str, &str)> {
    let i = memchr::memchr(b, s.as_bytes())?;
    Some((s.get(..i)?, s.get(i + 1..)?))
}

/// Byte offset of `part` inside `whole`; `part` must be a subslice of `whole`.
fn offset(whole: &str, part: &str) -> usize {
    (part.as_ptr() as usize)
        .saturating_sub(whole.as_ptr() as usize)
        .min(whole.len())
}

/// Splits a trimmed UTF-8 line into its name, tags and trailing fields, and the
/// `value|type[|@rate]` chunks.
fn split_line<'a>(line: &'a str, limits: &WireLimits) -> Result<(Common<'a>, &'a str), Rejection> {
    let Some((name, rest)) = split_once_byte(line, b':') else {
        return Err(Rejection::new(
            Reason::Malformed,
            "missing ':' after the metric name",
        ));
    };
    check_name(name, limits)?;
    let bad_byte = |b: &u8| b.is_ascii_whitespace() || b.is_ascii_control() || *b == b'|' || *b == b'#';
    let bad = if name.is_ascii() {
        name.bytes()
            .position(|b| bad_byte(&b))
            .and_then(|i| name.get(i..))
            .and_then(|s| s.chars().next())
    } else {
        name.chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == '|' || *c == '#')
    };
    if let Some(c) = bad {
        return Err(Rejection::new(
            Reason::BadName,
            format!("metric name contains {c:?}"),
        ));
    }
    let tag_start =
        memchr::memchr_iter(b'|', rest.as_bytes()).find(|&i| rest.as_bytes().get(i + 1) == Some(&b'#'));
    let split = tag_start.and_then(|i| Some((rest.get(..i)?, rest.get(i + 2..)?)));
    let (values, tags, rate) = match split {
        None => (rest, "", None),
        Some((values, after)) => {
            let (tags, trailing) = match split_once_byte(after, b'|') {
                Some((t, tr)) => (t, Some(tr)),
                None => (after, None),
            };
            check_tags(tags, limits)?;
            let mut rate = None;
            for field in trailing.into_iter().flat_map(|t| t.split('|')) {
                if let Some(r) = field.strip_prefix('@') {
                    rate = Some(parse_rate(r)?);
                } else if !is_ignored_extension(field) {
                    return Err(unknown_field(field));
                }
            }
            (values, tags, rate)
        }
    };
    if values.is_empty() {
        return Err(Rejection::new(Reason::Malformed, "missing value after ':'"));
    }
    Ok((Common { name, tags, rate }, values))
}

fn check_tags(raw: &str, limits: &WireLimits) -> Result<(), Rejection> {
    let mut count = 0usize;
    for (k, v) in tags(raw) {
        check_label(k, v, limits)?;
        count += 1;
        if count > limits.max_labels {
            return Err(Rejection::new(
                Reason::TooManyLabels,
                format!("more than {} tags", limits.max_labels),
            ));
        }
    }
    Ok(())
}

/// What a typed chunk says: its kind and effective sample rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Timer,
    Histogram,
    Distribution,
    Set,
}

/// Reads `type[|@rate][|T..]` (the part after the value's `|`).
fn parse_fields(fields: &str, line_rate: Option<f64>) -> Result<(Kind, f64), Rejection> {
    let mut parts = fields.split('|');
    let ty = parts.next().unwrap_or("").trim_ascii();
    let kind = match ty {
        "c" => Kind::Counter,
        "g" => Kind::Gauge,
        "ms" => Kind::Timer,
        "h" => Kind::Histogram,
        "d" => Kind::Distribution,
        "s" => Kind::Set,
        "" => return Err(Rejection::new(Reason::Malformed, "missing metric type after '|'")),
        other => {
            return Err(Rejection::new(
                Reason::Unsupported,
                format!("unknown metric type {:?}", short(other)),
            ));
        }
    };
    let mut rate = None;
    for field in parts {
        if let Some(r) = field.strip_prefix('@') {
            if rate.is_some() {
                return Err(Rejection::new(Reason::Malformed, "more than one sample rate"));
            }
            rate = Some(parse_rate(r)?);
        } else if !is_ignored_extension(field) {
            return Err(unknown_field(field));
        }
    }
    Ok((kind, rate.or(line_rate).unwrap_or(1.0)))
}

fn parse_rate(s: &str) -> Result<f64, Rejection> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1.0 => Ok(r),
        _ => Err(Rejection::new(
            Reason::BadValue,
            format!("sample rate {:?} is not a number in (0, 1]", short(s)),
        )),
    }
}

/// DogStatsD extension fields Roaster accepts and ignores: `T<unix seconds>` (client
/// timestamp), `c:<container id>`, `e:<external data>`. Only the `T` form can appear inside a
/// value chunk, because the others contain `:`.
fn is_ignored_extension(field: &str) -> bool {
    field.starts_with('T') || field.starts_with("c:") || field.starts_with("e:")
}

fn unknown_field(field: &str) -> Rejection {
    Rejection::new(Reason::Malformed, format!("unknown field {:?}", short(field)))
}

#[allow(
    clippy::too_many_arguments,
    reason = "private helper of parse_line; the arguments are its locals"
)]
fn emit<'a>(
    value: &'a str,
    kind: Kind,
    rate: f64,
    common: &Common<'a>,
    limits: &WireLimits,
    lineno: usize,
    raw: &[u8],
    each: &mut impl FnMut(Result<StatsdMetric<'a>, LineError>),
) {
    match typed_value(value, kind, limits) {
        Ok(value) => each(Ok(StatsdMetric {
            name: common.name,
            value,
            sample_rate: rate,
            tags: common.tags,
        })),
        Err(r) => each(Err(r.at(lineno, raw))),
    }
}

fn typed_value<'a>(value: &'a str, kind: Kind, limits: &WireLimits) -> Result<StatsdValue<'a>, Rejection> {
    if kind == Kind::Set {
        if value.is_empty() {
            return Err(Rejection::new(Reason::BadValue, "set member is empty"));
        }
        if value.len() > limits.max_label_value_bytes {
            return Err(Rejection::new(
                Reason::BadValue,
                format!(
                    "set member is {} bytes, more than the limit of {}",
                    value.len(),
                    limits.max_label_value_bytes
                ),
            ));
        }
        return Ok(StatsdValue::Set(value));
    }
    let v = match value.parse::<f64>() {
        Ok(v) if v.is_finite() => v,
        _ => {
            return Err(Rejection::new(
                Reason::BadValue,
                format!("value {:?} is not a finite number", short(value)),
            ));
        }
    };
    Ok(match kind {
        Kind::Counter => StatsdValue::Counter(v),
        Kind::Gauge if value.starts_with(['+', '-']) => StatsdValue::GaugeDelta(v),
        Kind::Gauge => StatsdValue::Gauge(v),
        Kind::Timer if v < 0.0 => {
            return Err(Rejection::new(Reason::BadValue, "timer value is negative"));
        }
        Kind::Timer => StatsdValue::Timer(v),
        Kind::Histogram => StatsdValue::Histogram(v),
        Kind::Distribution => StatsdValue::Distribution(v),
        Kind::Set => StatsdValue::Set(value),
    })
}

/// A short prefix of `s` for error details.
fn short(s: &str) -> &str {
    let mut end = s.len().min(32);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders a packet's parse as one line per metric or error, for table tests.
    fn check(packet: &str) -> Vec<String> {
        check_with(packet.as_bytes(), &WireLimits::default())
    }

    fn check_with(packet: &[u8], limits: &WireLimits) -> Vec<String> {
        let mut out = Vec::new();
        visit_packet(packet, limits, |r| {
            out.push(match r {
                Ok(m) => {
                    let mut s = format!("{} {:?}", m.name, m.value);
                    if m.sample_rate != 1.0 {
                        s.push_str(&format!(" @{}", m.sample_rate));
                    }
                    if !m.tags.is_empty() {
                        s.push_str(&format!(" #{}", m.tags));
                    }
                    s
                }
                Err(e) => format!("error line {} {}: {}", e.line, e.reason, e.detail),
            })
        });
        out
    }

    #[test]
    fn good_lines() {
        let cases: &[(&str, &[&str])] = &[
            ("gorets:1|c", &["gorets Counter(1.0)"]),
            ("gorets:1|c|@0.1", &["gorets Counter(1.0) @0.1"]),
            ("gorets:-3.5|c", &["gorets Counter(-3.5)"]),
            ("glork:320|ms|@0.1", &["glork Timer(320.0) @0.1"]),
            ("glork:0|ms", &["glork Timer(0.0)"]),
            ("gaugor:333|g", &["gaugor Gauge(333.0)"]),
            ("gaugor:-10|g", &["gaugor GaugeDelta(-10.0)"]),
            ("gaugor:+4|g", &["gaugor GaugeDelta(4.0)"]),
            ("gaugor:1.5e3|g", &["gaugor Gauge(1500.0)"]),
            ("uniques:765|s", &["uniques Set(\"765\")"]),
            (
                "uniques:user@example.com|s",
                &["uniques Set(\"user@example.com\")"],
            ),
            ("page.load:-2|h", &["page.load Histogram(-2.0)"]),
            ("page.load:2|d|@0.5", &["page.load Distribution(2.0) @0.5"]),
            (
                "christmaspi.temperature.ham:131.2|g",
                &["christmaspi.temperature.ham Gauge(131.2)"],
            ),
            ("ünïcode.name:1|c", &["ünïcode.name Counter(1.0)"]),
            // surrounding whitespace, CRLF, spaces before the type
            ("  a:1|c \r", &["a Counter(1.0)"]),
            ("a:1| c ", &["a Counter(1.0)"]),
            // a rate of exactly one is the default and is not shown
            ("a:1|c|@1", &["a Counter(1.0)"]),
        ];
        for (packet, want) in cases {
            assert_eq!(check(packet), *want, "{packet:?}");
        }
    }

    #[test]
    fn multi_metric_packets_and_multi_value_lines() {
        let cases: &[(&str, &[&str])] = &[
            // Etsy docs, "Multi-Metric Packets"
            (
                "gorets:1|c\nglork:320|ms\ngaugor:333|g\nuniques:765|s",
                &[
                    "gorets Counter(1.0)",
                    "glork Timer(320.0)",
                    "gaugor Gauge(333.0)",
                    "uniques Set(\"765\")",
                ],
            ),
            // empty lines and a trailing newline are skipped
            ("a:1|c\n\n\r\nb:2|c\n", &["a Counter(1.0)", "b Counter(2.0)"]),
            // Etsy multi-value: one metric per ':'-separated chunk, each with its own type
            (
                "a:1|c:2|c|@0.5:3|ms",
                &["a Counter(1.0)", "a Counter(2.0) @0.5", "a Timer(3.0)"],
            ),
            // DogStatsD packed values take the type and rate of the typed chunk
            (
                "h:1:2:3|h|@0.5",
                &[
                    "h Histogram(1.0) @0.5",
                    "h Histogram(2.0) @0.5",
                    "h Histogram(3.0) @0.5",
                ],
            ),
            // a bad value costs that value, not the line
            (
                "a:1|c:x|c:3|c",
                &[
                    "a Counter(1.0)",
                    "error line 1 bad_value: value \"x\" is not a finite number",
                    "a Counter(3.0)",
                ],
            ),
            // a bad line costs that line, not the packet
            (
                "a:1|c\nbad\nb:2|c",
                &[
                    "a Counter(1.0)",
                    "error line 2 malformed: missing ':' after the metric name",
                    "b Counter(2.0)",
                ],
            ),
        ];
        for (packet, want) in cases {
            assert_eq!(check(packet), *want, "{packet:?}");
        }
    }

    #[test]
    fn dogstatsd_tags() {
        let cases: &[(&str, &[&str])] = &[
            ("a:1|c|#env:prod,role:db", &["a Counter(1.0) #env:prod,role:db"]),
            ("a:1|c|@0.5|#env:prod", &["a Counter(1.0) @0.5 #env:prod"]),
            // a rate after the tags applies to values without their own
            ("a:1|c|#env:prod|@0.5", &["a Counter(1.0) @0.5 #env:prod"]),
            // extension fields are ignored
            (
                "a:1|c|#env:prod|T1700000000|c:abc123",
                &["a Counter(1.0) #env:prod"],
            ),
            ("a:1|c|T1700000000", &["a Counter(1.0)"]),
            // tags apply to every value of a multi-value line
            ("a:1|c:2|ms|#k:v", &["a Counter(1.0) #k:v", "a Timer(2.0) #k:v"]),
            // an empty tag list is no tags
            ("a:1|c|#", &["a Counter(1.0)"]),
            // tag values may contain ':'
            ("a:1|c|#url:http://x", &["a Counter(1.0) #url:http://x"]),
        ];
        for (packet, want) in cases {
            assert_eq!(check(packet), *want, "{packet:?}");
        }
    }

    #[test]
    fn tag_iterator() {
        let got: Vec<(&str, &str)> = tags("env:prod,,flag,empty:,url:http://x").collect();
        assert_eq!(
            got,
            [
                ("env", "prod"),
                ("flag", "true"),
                ("empty", ""),
                ("url", "http://x")
            ]
        );
        assert_eq!(tags("").count(), 0);
    }

    #[test]
    fn every_reason_used() {
        let limits = WireLimits {
            max_line_bytes: 40,
            max_labels: 2,
            max_name_bytes: 8,
            max_label_value_bytes: 4,
        };
        let cases: &[(&[u8], &str)] = &[
            (
                b"nocolon",
                "error line 1 malformed: missing ':' after the metric name",
            ),
            (b"a:", "error line 1 malformed: missing value after ':'"),
            (
                b"a:1",
                "error line 1 malformed: value without a type (expected value|type)",
            ),
            (b"a:1|", "error line 1 malformed: missing metric type after '|'"),
            (b"a:1|c|x", "error line 1 malformed: unknown field \"x\""),
            (
                b"a:1|c|@0.5|@0.5",
                "error line 1 malformed: more than one sample rate",
            ),
            (b"a:1|c|#k:v|zz", "error line 1 malformed: unknown field \"zz\""),
            (
                b"a:x|c",
                "error line 1 bad_value: value \"x\" is not a finite number",
            ),
            (
                b"a:nan|g",
                "error line 1 bad_value: value \"nan\" is not a finite number",
            ),
            (
                b"a:inf|c",
                "error line 1 bad_value: value \"inf\" is not a finite number",
            ),
            (
                b"a:|c",
                "error line 1 bad_value: value \"\" is not a finite number",
            ),
            (b"a:-1|ms", "error line 1 bad_value: timer value is negative"),
            (b"a:|s", "error line 1 bad_value: set member is empty"),
            (
                b"a:12345|s",
                "error line 1 bad_value: set member is 5 bytes, more than the limit of 4",
            ),
            (
                b"a:1|c|@0",
                "error line 1 bad_value: sample rate \"0\" is not a number in (0, 1]",
            ),
            (
                b"a:1|c|@1.5",
                "error line 1 bad_value: sample rate \"1.5\" is not a number in (0, 1]",
            ),
            (
                b"a:1|c|@-1",
                "error line 1 bad_value: sample rate \"-1\" is not a number in (0, 1]",
            ),
            (
                b"a:1|c|@x",
                "error line 1 bad_value: sample rate \"x\" is not a number in (0, 1]",
            ),
            (b"a:\xff|c", "error line 1 invalid_utf8: line is not valid utf-8"),
            (
                b"a:1|c|#k:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                "error line 1 line_too_long: line is 45 bytes, more than the limit of 40",
            ),
            (b":1|c", "error line 1 bad_name: metric name is empty"),
            (
                b"toolongname:1|c",
                "error line 1 bad_name: metric name is 11 bytes, more than the limit of 8",
            ),
            (b"a b:1|c", "error line 1 bad_name: metric name contains ' '"),
            (b"a|b:1|c", "error line 1 bad_name: metric name contains '|'"),
            (
                b"a\x00:1|c",
                "error line 1 bad_name: metric name contains a nul byte",
            ),
            (b"a:1|c|#:v", "error line 1 bad_label: label name is empty"),
            (
                b"a:1|c|#k:12345",
                "error line 1 bad_label: value of label \"k\" is 5 bytes, more than the limit of 4",
            ),
            (b"a:1|c|#a,b,c", "error line 1 too_many_labels: more than 2 tags"),
            (b"a:1|x", "error line 1 unsupported: unknown metric type \"x\""),
        ];
        for (packet, want) in cases {
            assert_eq!(
                check_with(packet, &limits),
                [*want],
                "{:?}",
                String::from_utf8_lossy(packet)
            );
        }
    }

    #[test]
    fn errors_carry_line_numbers_and_excerpts() {
        let (metrics, errors) = parse_packet(b"a:1|c\n\nb:x|c", &WireLimits::default());
        assert_eq!(metrics.len(), 1);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 3);
        assert_eq!(errors[0].excerpt, "b:x|c");
        assert_eq!(errors[0].reason, Reason::BadValue);
    }

    #[test]
    fn empty_and_whitespace_packets_yield_nothing() {
        for packet in ["", "\n", "\n\n", "   ", "\r\n"] {
            assert!(check(packet).is_empty(), "{packet:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_outputs_satisfy_limits(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let limits = WireLimits { max_line_bytes: 100, max_labels: 3, max_name_bytes: 10, max_label_value_bytes: 10 };
            let (metrics, errors) = parse_packet(&bytes, &limits);
            for m in &metrics {
                proptest::prop_assert!(!m.name.is_empty() && m.name.len() <= 10);
                proptest::prop_assert!(m.sample_rate > 0.0 && m.sample_rate <= 1.0);
                proptest::prop_assert!(tags(m.tags).count() <= 3);
            }
            for e in &errors {
                proptest::prop_assert!(e.line >= 1);
            }
        }

        #[test]
        fn statsd_shaped_lines_never_panic(line in "[a-z:|@#,.0-9+\\-ms]{0,40}") {
            let _ = parse_packet(line.as_bytes(), &WireLimits::default());
        }
    }
}
