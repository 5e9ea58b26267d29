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

/// Parses a time parameter: unix seconds (fractions allowed) or RFC 3339, to UTC
/// milliseconds — the Prometheus API's formats, so export takes what the query API takes.
pub use query::time::parse_time;

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
