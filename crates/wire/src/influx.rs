//! InfluxDB line protocol: `measurement[,tag=value...] field=value[,field=value...] [timestamp]`.
//!
//! What is accepted (InfluxDB 1.x/2.x line protocol):
//! - One point per line; `\n` separates lines, a trailing `\r` is ignored, blank lines and lines
//!   starting with `#` (comments) are skipped. Leading blanks are ignored; sections are separated
//!   by one or more spaces; trailing spaces are allowed.
//! - Escapes: in the measurement, `\,` and `\ `; in tag keys, tag values and field keys, `\,`,
//!   `\=` and `\ `; in string field values, `\"` and `\\`. A backslash before any other character
//!   is kept literally, as InfluxDB does.
//! - Field values: float (`1`, `-1.5`, `1e3`; NaN and infinities are rejected, as InfluxDB does),
//!   integer `12i`, unsigned `12u`, boolean (`t`, `T`, `true`, `True`, `TRUE`, `f`, ... → 1 or 0)
//!   and string (`"..."`). **String fields are skipped**: the line's numeric fields are kept and
//!   one [`Reason::StringField`] entry is reported for the line (not a rejection, see
//!   [`Reason::is_rejection`]). A field key repeated in one line: the last value wins.
//! - Integers and unsigned integers become f64 and lose precision beyond 2^53.
//! - The timestamp is an integer (may be negative) in the request's [`Precision`], converted to
//!   milliseconds (rounding toward negative infinity). Missing means "now" (`None`).
//!
//! Output: one [`Sample`] per numeric field, the series named `measurement_field` with the tags
//! as labels. A field named `value` is no exception: `cpu value=1` is the series `cpu_value`,
//! so every field of every measurement maps the same way. A bad line is rejected whole (none of
//! its fields are kept) and alone (the other lines are kept).
//!
//! Not supported: string fields containing a raw newline (the line splitter sees two lines).

use std::borrow::Cow;
use std::str::FromStr;

use memchr::memchr;
use model::Label;

use crate::{LineError, Reason, Rejection, Sample, WireLimits, series_key};

/// The unit of the timestamps in a request (`?precision=`). InfluxDB's default is nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// `n`, `ns` (the default)
    #[default]
    Nanoseconds,
    /// `u`, `us`, `µ`
    Microseconds,
    /// `ms`
    Milliseconds,
    /// `s`
    Seconds,
    /// `m` (v1 only)
    Minutes,
    /// `h` (v1 only)
    Hours,
}

/// An unknown `precision` query parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown precision {0:?}: expected one of n, ns, u, us, ms, s, m, h")]
pub struct PrecisionError(pub String);

impl FromStr for Precision {
    type Err = PrecisionError;

    /// Accepts v1 (`n|ns|u|us|ms|s|m|h`) and v2 (`ns|us|ms|s`) values.
    fn from_str(s: &str) -> Result<Precision, PrecisionError> {
        Ok(match s {
            "n" | "ns" => Precision::Nanoseconds,
            "u" | "us" | "µ" | "µs" => Precision::Microseconds,
            "ms" => Precision::Milliseconds,
            "s" => Precision::Seconds,
            "m" => Precision::Minutes,
            "h" => Precision::Hours,
            other => return Err(PrecisionError(other.to_owned())),
        })
    }
}

impl Precision {
    /// Converts a timestamp in this precision to milliseconds; `None` when out of range.
    pub fn to_millis(self, ts: i64) -> Option<i64> {
        let ms = match self {
            Precision::Nanoseconds => ts.div_euclid(1_000_000),
            Precision::Microseconds => ts.div_euclid(1_000),
            Precision::Milliseconds => ts,
            Precision::Seconds => ts.checked_mul(1_000)?,
            Precision::Minutes => ts.checked_mul(60_000)?,
            Precision::Hours => ts.checked_mul(3_600_000)?,
        };
        (ms.unsigned_abs() < 9_000_000_000_000_000).then_some(ms)
    }
}

/// Decodes a request body: one [`Sample`] per numeric field of every good line, and one
/// [`LineError`] per rejected line (plus one [`Reason::StringField`] note per line that had
/// string fields).
pub fn decode(body: &[u8], precision: Precision, limits: &WireLimits) -> (Vec<Sample>, Vec<LineError>) {
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    let mut rest = body;
    let mut line_no = 0usize;
    while !rest.is_empty() {
        line_no += 1;
        let (raw, next) = match memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let start = line
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(line.len());
        let line = &line[start..];
        if line.is_empty() || line.first() == Some(&b'#') {
            continue;
        }
        if raw.len() > limits.max_line_bytes {
            errors.push(LineError::new(
                line_no,
                Reason::LineTooLong,
                raw,
                format!(
                    "line is {} bytes, more than the limit of {}",
                    raw.len(),
                    limits.max_line_bytes
                ),
            ));
            continue;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            errors.push(LineError::new(
                line_no,
                Reason::InvalidUtf8,
                raw,
                "line is not valid utf-8",
            ));
            continue;
        };
        let before = samples.len();
        match parse_line(text, precision, limits, &mut samples) {
            Ok(None) => {}
            Ok(Some(note)) => errors.push(note.at(line_no, raw)),
            Err(r) => {
                samples.truncate(before);
                errors.push(r.at(line_no, raw));
            }
        }
    }
    (samples, errors)
}

/// One field value, before conversion.
enum FieldValue {
    Number(f64),
    Text,
}

/// Parses one line into `out`. `Ok(Some(_))` carries a string-field note; on `Err` the caller
/// truncates `out` back, so a bad line leaves nothing behind.
fn parse_line(
    line: &str,
    precision: Precision,
    limits: &WireLimits,
    out: &mut Vec<Sample>,
) -> Result<Option<Rejection>, Rejection> {
    let bad = |reason, detail: &str| Rejection::new(reason, detail);
    let b = line.as_bytes();

    // measurement
    let end = scan(b, 0, |c| c == b',' || c == b' ');
    let measurement = unescape(&line[..end], b", ");
    if measurement.is_empty() {
        return Err(bad(Reason::BadName, "measurement is empty"));
    }
    let mut pos = end;

    // tags
    let mut labels: Vec<Label> = Vec::new();
    while b.get(pos) == Some(&b',') {
        let key_start = pos + 1;
        let key_end = scan(b, key_start, |c| c == b'=' || c == b',' || c == b' ');
        if b.get(key_end) != Some(&b'=') {
            return Err(bad(Reason::Malformed, "tag without '='"));
        }
        let value_start = key_end + 1;
        let value_end = scan(b, value_start, |c| c == b',' || c == b' ' || c == b'=');
        if b.get(value_end) == Some(&b'=') {
            return Err(bad(Reason::Malformed, "unescaped '=' in tag value"));
        }
        let key = unescape(&line[key_start..key_end], b",= ");
        let value = unescape(&line[value_start..value_end], b",= ");
        if key.is_empty() {
            return Err(bad(Reason::BadLabel, "tag key is empty"));
        }
        if value.is_empty() {
            return Err(bad(Reason::BadLabel, "tag value is empty"));
        }
        if labels.len() >= limits.max_labels {
            return Err(Rejection::new(
                Reason::TooManyLabels,
                format!("more than the limit of {} tags", limits.max_labels),
            ));
        }
        labels.push(Label::new(key, value));
        pos = value_end;
    }

    // fields
    pos = skip_spaces(b, pos);
    if pos >= b.len() {
        return Err(bad(Reason::Malformed, "missing fields"));
    }
    let mut fields: Vec<(Cow<'_, str>, FieldValue)> = Vec::new();
    loop {
        let key_end = scan(b, pos, |c| c == b'=' || c == b',' || c == b' ');
        if b.get(key_end) != Some(&b'=') {
            return Err(bad(Reason::Malformed, "field without '='"));
        }
        let key = unescape(&line[pos..key_end], b",= ");
        if key.is_empty() {
            return Err(bad(Reason::Malformed, "field key is empty"));
        }
        let value_start = key_end + 1;
        let (value, value_end) = if b.get(value_start) == Some(&b'"') {
            (FieldValue::Text, string_end(b, value_start + 1)?)
        } else {
            let end = scan(b, value_start, |c| c == b',' || c == b' ');
            (FieldValue::Number(parse_number(&b[value_start..end])?), end)
        };
        fields.retain(|(k, _)| *k != key);
        fields.push((key, value));
        pos = value_end;
        match b.get(pos) {
            Some(b',') => pos += 1,
            _ => break,
        }
    }

    // timestamp
    pos = skip_spaces(b, pos);
    let ts_end = scan(b, pos, |c| c == b' ');
    let timestamp_ms = if ts_end > pos {
        let ts = line[pos..ts_end]
            .parse::<i64>()
            .map_err(|_| bad(Reason::BadTimestamp, "timestamp is not an integer"))?;
        Some(
            precision
                .to_millis(ts)
                .ok_or_else(|| bad(Reason::BadTimestamp, "timestamp out of range"))?,
        )
    } else {
        None
    };
    if skip_spaces(b, ts_end) < b.len() {
        return Err(bad(Reason::Malformed, "unexpected text after the timestamp"));
    }

    let mut strings = 0usize;
    let mut first_string = None;
    for (field, value) in &fields {
        match value {
            FieldValue::Number(v) => {
                let name = format!("{measurement}_{field}");
                let key = series_key(name, labels.clone(), limits)?;
                out.push(Sample {
                    key,
                    timestamp_ms,
                    value: *v,
                });
            }
            FieldValue::Text => {
                strings += 1;
                first_string.get_or_insert(field);
            }
        }
    }
    Ok(first_string.map(|f| {
        Rejection::new(
            Reason::StringField,
            format!("{strings} string field(s) skipped, first {f:?}"),
        )
    }))
}

/// The index of the first byte at or after `from` for which `stop` holds, skipping escaped
/// bytes (`\x`); `b.len()` when there is none.
fn scan(b: &[u8], from: usize, stop: impl Fn(u8) -> bool) -> usize {
    let mut i = from;
    while let Some(&c) = b.get(i) {
        if c == b'\\' {
            i += 2;
            continue;
        }
        if stop(c) {
            return i;
        }
        i += 1;
    }
    b.len()
}

fn skip_spaces(b: &[u8], from: usize) -> usize {
    let mut i = from;
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    i
}

/// The index just past the closing quote of a string field whose content starts at `from`.
fn string_end(b: &[u8], from: usize) -> Result<usize, Rejection> {
    let mut i = from;
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' => i += 2,
            b'"' => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(Rejection::new(Reason::Malformed, "unterminated string field"))
}

/// Removes the backslash from `\x` for `x` in `escapable`; other backslashes stay.
fn unescape<'a>(s: &'a str, escapable: &[u8]) -> Cow<'a, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&n) = chars.peek()
            && n.is_ascii()
            && escapable.contains(&(n as u8))
        {
            out.push(n);
            chars.next();
            continue;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// Parses a non-string field value: integer `i`, unsigned `u`, boolean or float.
fn parse_number(v: &[u8]) -> Result<f64, Rejection> {
    let bad = || Rejection::new(Reason::BadValue, "field value is not a number, boolean or string");
    let Some(&last) = v.last() else {
        return Err(Rejection::new(Reason::BadValue, "field value is empty"));
    };
    match v {
        b"t" | b"T" | b"true" | b"True" | b"TRUE" => return Ok(1.0),
        b"f" | b"F" | b"false" | b"False" | b"FALSE" => return Ok(0.0),
        _ => {}
    }
    let body = &v[..v.len() - 1];
    let text = |s: &[u8]| std::str::from_utf8(s).ok().map(str::to_owned);
    match last {
        b'i' => {
            let s = text(body).ok_or_else(bad)?;
            s.parse::<i64>().map(|n| n as f64).map_err(|_| bad())
        }
        b'u' => {
            let s = text(body).ok_or_else(bad)?;
            s.parse::<u64>().map(|n| n as f64).map_err(|_| bad())
        }
        _ => {
            // only decimal float syntax: this rejects nan, inf and infinity, as InfluxDB does
            if !v
                .iter()
                .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'+' | b'e' | b'E'))
            {
                return Err(bad());
            }
            crate::graphite::parse_f64(v)
                .filter(|f| f.is_finite())
                .ok_or_else(bad)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders decoded samples and errors, one per line: `series value ts` or `!line reason`.
    fn check(body: &str, precision: Precision) -> String {
        let (samples, errors) = decode(body.as_bytes(), precision, &WireLimits::default());
        let mut out: Vec<String> = samples
            .iter()
            .map(|s| {
                format!(
                    "{} {:?} {}",
                    s.key,
                    s.value,
                    s.timestamp_ms.map_or("now".to_owned(), |t| t.to_string())
                )
            })
            .collect();
        out.extend(errors.iter().map(|e| format!("!{} {}", e.line, e.reason)));
        out.join("\n")
    }

    #[test]
    fn lines() {
        let ns = Precision::Nanoseconds;
        let cases: &[(&str, &str)] = &[
            ("cpu value=1 1700000000000000000", "cpu_value{} 1.0 1700000000000"),
            (
                "cpu,host=a,dc=x usage=0.5,idle=99i 1700000000000000000",
                "cpu_usage{dc=\"x\",host=\"a\"} 0.5 1700000000000\ncpu_idle{dc=\"x\",host=\"a\"} 99.0 1700000000000",
            ),
            ("cpu v=1", "cpu_v{} 1.0 now"),
            ("cpu v=1  ", "cpu_v{} 1.0 now"),
            ("cpu v=1\r", "cpu_v{} 1.0 now"),
            ("  cpu   v=1   1000000   ", "cpu_v{} 1.0 1"),
            ("cpu v=-0.0", "cpu_v{} -0.0 now"),
            ("cpu v=1e3", "cpu_v{} 1000.0 now"),
            ("cpu v=18446744073709551615u", "cpu_v{} 1.8446744073709552e19 now"),
            ("cpu v=-9223372036854775808i", "cpu_v{} -9.223372036854776e18 now"),
            (
                "cpu a=t,b=FALSE,c=True",
                "cpu_a{} 1.0 now\ncpu_b{} 0.0 now\ncpu_c{} 1.0 now",
            ),
            ("cpu v=1,v=2", "cpu_v{} 2.0 now"),
            ("cpu v=1 -1000000", "cpu_v{} 1.0 -1"),
            ("cpu v=1 -1", "cpu_v{} 1.0 -1"),
            (
                r"c\ p\,u,h\ o\=st=a\,b\ c\=d f\ i\,e\=ld=1",
                "{\"c p,u_f i,e=ld\",h o=st=\"a,b c=d\"} 1.0 now",
            ),
            (r"c\pu v=1", "{\"c\\\\pu_v\"} 1.0 now"),
            (
                "cpu msg=\"hi, there = x\",v=2",
                "cpu_v{} 2.0 now\n!1 string_field",
            ),
            ("cpu msg=\"a \\\" b \\\\\"", "!1 string_field"),
            ("# comment\n\ncpu v=1\n", "cpu_v{} 1.0 now"),
            (
                "café,pièce=cuisine température=21.5",
                "{\"café_température\",pièce=\"cuisine\"} 21.5 now",
            ),
            // errors
            ("cpu", "!1 malformed"),
            ("cpu ", "!1 malformed"),
            ("cpu,host=a", "!1 malformed"),
            ("cpu,host v=1", "!1 malformed"),
            ("cpu,host= v=1", "!1 bad_label"),
            ("cpu,=a v=1", "!1 bad_label"),
            ("cpu,a=1,a=2 v=1", "!1 bad_label"),
            (",host=a v=1", "!1 bad_name"),
            ("cpu v", "!1 malformed"),
            ("cpu =1", "!1 malformed"),
            ("cpu v=", "!1 bad_value"),
            ("cpu v=abc", "!1 bad_value"),
            ("cpu v=NaN", "!1 bad_value"),
            ("cpu v=inf", "!1 bad_value"),
            ("cpu v=1.5i", "!1 bad_value"),
            ("cpu v=-1u", "!1 bad_value"),
            ("cpu v=99999999999999999999i", "!1 bad_value"),
            ("cpu v=\"open", "!1 malformed"),
            ("cpu v=1 abc", "!1 bad_timestamp"),
            ("cpu v=1 1.5", "!1 bad_timestamp"),
            ("cpu v=1 1 2", "!1 malformed"),
            ("cpu v=1,s=\"x\" 99999999999999999999", "!1 bad_timestamp"),
            ("cpu v=1,w=x", "!1 bad_value"),
            ("cpu\u{0} v=1", "!1 bad_name"),
        ];
        for (body, want) in cases {
            assert_eq!(check(body, ns), *want, "{body:?}");
        }
    }

    #[test]
    fn a_bad_line_costs_a_line() {
        let bytes = b"a v=1 1000000\nbad line\nb v=2\nc v=3 3000000\nd\xff v=4\n";
        let (samples, errors) = decode(bytes, Precision::Nanoseconds, &WireLimits::default());
        let names: Vec<&str> = samples.iter().map(|s| s.key.name()).collect();
        assert_eq!(names, ["a_v", "b_v", "c_v"]);
        let errs: Vec<(usize, Reason)> = errors.iter().map(|e| (e.line, e.reason)).collect();
        assert_eq!(errs, [(2, Reason::Malformed), (5, Reason::InvalidUtf8)]);
    }

    #[test]
    fn precisions() {
        let cases: &[(&str, i64, Option<i64>)] = &[
            ("ns", 1_700_000_000_123_456_789, Some(1_700_000_000_123)),
            ("n", -1, Some(-1)),
            ("us", 1_700_000_000_123_456, Some(1_700_000_000_123)),
            ("u", 1, Some(0)),
            ("ms", 1_700_000_000_123, Some(1_700_000_000_123)),
            ("s", 1_700_000_000, Some(1_700_000_000_000)),
            ("m", 2, Some(120_000)),
            ("h", 2, Some(7_200_000)),
            ("s", i64::MAX, None),
            ("ms", i64::MIN, None),
        ];
        for (p, ts, want) in cases {
            let precision: Precision = p.parse().unwrap();
            assert_eq!(precision.to_millis(*ts), *want, "{p} {ts}");
        }
        assert!("d".parse::<Precision>().is_err());
        assert_eq!(check("cpu v=1 2", Precision::Hours), "cpu_v{} 1.0 7200000");
    }

    #[test]
    fn limits_reject_the_line() {
        let tight = WireLimits {
            max_line_bytes: 30,
            max_labels: 1,
            max_name_bytes: 6,
            max_label_value_bytes: 2,
        };
        let cases: &[(&str, Reason)] = &[
            ("cpu,a=1,b=2 v=1", Reason::TooManyLabels),
            ("cpu,a=123 v=1", Reason::BadLabel),
            ("cpu v=1,long=2", Reason::BadName),
            ("cpu v=1                               ", Reason::LineTooLong),
        ];
        for (line, want) in cases {
            let (samples, errors) = decode(line.as_bytes(), Precision::Seconds, &tight);
            assert!(samples.is_empty(), "{line}");
            assert_eq!(
                errors.iter().map(|e| e.reason).collect::<Vec<_>>(),
                [*want],
                "{line}"
            );
        }
    }
}
