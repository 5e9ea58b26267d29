//! `GET /api/v1/export`: raw samples as JSON lines in VictoriaMetrics' export shape, one line
//! per series: `{"metric":{"__name__":"m","a":"1"},"values":[1.5,2],"timestamps":[1000,2000]}`.
//!
//! Streaming: a blocking task walks storage one series at a time and hands each finished line
//! to a bounded channel (`export_buffer_series`); the response body forwards them as they come.
//! Memory is bounded by one series plus the channel, never by the result. A client that goes
//! away stops the walk at the next series.
//!
//! Values that JSON cannot carry (NaN, such as Prometheus' stale markers, and ±Inf) are written
//! as `null`. Parameters: `match[]` (repeatable, a PromQL series selector; the union is
//! exported, each series once), `start` and `end` (RFC 3339 or unix seconds, inclusive;
//! default: everything).

use serde::Serialize;

/// One exported series, serialized as one line.
#[derive(Debug, Serialize)]
pub struct ExportLine<'a> {
    /// `__name__` first, then the labels in name order.
    pub metric: serde_json::Map<String, serde_json::Value>,
    /// The values, `null` for non-finite ones.
    pub values: &'a [f64],
    /// UTC milliseconds.
    pub timestamps: &'a [i64],
}

/// Renders one series as a JSON line (with the trailing newline).
pub fn render_line(key: &model::SeriesKey, timestamps: &[i64], values: &[f64]) -> Vec<u8> {
    let mut metric = serde_json::Map::new();
    metric.insert(model::METRIC_NAME_LABEL.into(), key.name().into());
    for l in key.labels() {
        metric.insert(l.name.clone(), l.value.clone().into());
    }
    let line = ExportLine {
        metric,
        values,
        timestamps,
    };
    // serde_json writes non-finite floats as null; serializing plain data cannot fail.
    let mut out = serde_json::to_vec(&line).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Parses a time parameter: unix seconds (fractions allowed) or RFC 3339
/// (`2026-11-21T05:00:00Z`, `2026-11-21T05:00:00.123+01:00`), to UTC milliseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return model::Timestamp::from_secs_f64(secs).map(|t| t.millis());
    }
    parse_rfc3339(s)
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |at: usize, c: &[u8]| b.get(at).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if sep(i, b".") {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Keep millisecond precision; further digits are truncated.
        let digits = &s[start..i.min(start + 3)];
        millis = digits.parse::<i64>().ok()? * 10i64.pow(3 - digits.len() as u32);
    }
    let offset_min = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && sep(i + 3, b":") => {
            let m = num(i + 1, 2)? * 60 + num(i + 4, 2)?;
            if *sign == b'-' { -m } else { m }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(secs * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{Label, SeriesKey};

    #[test]
    fn time_parameters() {
        let cases: &[(&str, Option<i64>)] = &[
            ("0", Some(0)),
            ("1763701200", Some(1_763_701_200_000)),
            ("1763701200.5", Some(1_763_701_200_500)),
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2026-11-21T05:00:00Z", Some(1_795_237_200_000)),
            ("2026-11-21T05:00:00.25Z", Some(1_795_237_200_250)),
            ("2026-11-21T06:00:00+01:00", Some(1_795_237_200_000)),
            ("2000-02-29T00:00:00Z", Some(951_782_400_000)),
            ("2026-13-01T00:00:00Z", None),
            ("2026-11-21", None),
            ("yesterday", None),
            ("2026-11-21T05:00:00", None),
            ("NaN", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_time(input), *want, "{input}");
        }
    }

    #[test]
    fn line_shape() {
        let key = SeriesKey::new("cpu.x", vec![Label::new("host", "a")]).unwrap();
        let line = render_line(&key, &[1000, 2000], &[1.5, f64::NAN]);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"metric\":{\"__name__\":\"cpu.x\",\"host\":\"a\"},\"values\":[1.5,null],\"timestamps\":[1000,2000]}\n"
        );
    }
}
