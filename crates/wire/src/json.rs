//! Roaster's JSON ingest body, for `POST /api/v1/ingest`. **This shape is a public contract**
//! (pinned by `json_contract_golden` below); change it only by adding optional parts.
//!
//! ```json
//! {
//!   "series": [
//!     {
//!       "name": "christmaspi.temperature.ham",
//!       "labels": {"room": "kitchen"},
//!       "samples": [[1450000000000, 131.2], [1450000001000, "NaN"], [null, 131.4]]
//!     }
//!   ]
//! }
//! ```
//!
//! - `series` (required): an array of series objects.
//! - `name` (required): the metric name, any non-empty UTF-8 string (Graphite paths welcome).
//! - `labels` (optional): an object of string label values; an empty value means "no such
//!   label" and is dropped; a key repeated in one object: the last wins. `__name__` may only
//!   repeat the name.
//! - `samples` (required): an array of `[timestamp, value]` pairs.
//!   - `timestamp`: an integer, UTC **milliseconds** since the Unix epoch, or `null` for "the
//!     server's now". RFC 3339 strings and fractional numbers are not accepted (send integers).
//!   - `value`: a JSON number, or one of the strings `"NaN"`, `"+Inf"`, `"Inf"`, `"-Inf"`
//!     (JSON has no literal for these).
//! - Unknown keys are rejected (in a series: that series; at the top level: the request), so a
//!   typo such as `"sample"` fails loudly instead of silently dropping data.
//!
//! Errors: a body that is not JSON or not an object with a `series` array is a
//! [`DecodeError::Json`]. Otherwise each bad series is rejected alone with a [`LineError`] whose
//! `line` is the series' 1-based position; a bad sample inside a good series is rejected alone
//! too (same `line`, the detail names the sample's 1-based position) and the series' other
//! samples are kept.

use std::collections::BTreeMap;

use model::Label;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{DecodeError, LineError, Reason, Rejection, Sample, WireLimits, series_key};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body<'a> {
    #[serde(borrow)]
    series: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesIn<'a> {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(borrow)]
    samples: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ValueIn {
    Number(f64),
    Text(String),
}

/// Decodes a JSON ingest body: the samples of the good series, and one error per bad series
/// or sample. Fails whole only when the body is not JSON or not the top-level shape.
pub fn decode(body: &[u8], limits: &WireLimits) -> Result<(Vec<Sample>, Vec<LineError>), DecodeError> {
    // serde would also accept a struct written as an array (`[[...]]`): insist on an object
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(DecodeError::Json(
            "expected an object with a \"series\" array".into(),
        ));
    }
    let body: Body<'_> = serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in body.series.iter().enumerate() {
        let line = i + 1;
        let text = raw.get().as_bytes();
        if !raw.get().starts_with('{') {
            errors.push(LineError::new(
                line,
                Reason::Malformed,
                text,
                "series is not an object",
            ));
            continue;
        }
        let series: SeriesIn<'_> = match serde_json::from_str(raw.get()) {
            Ok(s) => s,
            Err(e) => {
                errors.push(LineError::new(line, Reason::Malformed, text, e.to_string()));
                continue;
            }
        };
        let labels = series.labels.into_iter().map(|(k, v)| Label::new(k, v)).collect();
        let key = match series_key(series.name, labels, limits) {
            Ok(k) => k,
            Err(r) => {
                errors.push(r.at(line, text));
                continue;
            }
        };
        for (j, raw_sample) in series.samples.iter().enumerate() {
            match parse_sample(raw_sample.get()) {
                Ok((timestamp_ms, value)) => samples.push(Sample {
                    key: key.clone(),
                    timestamp_ms,
                    value,
                }),
                Err(r) => errors.push(
                    Rejection::new(r.reason, format!("sample {}: {}", j + 1, r.detail))
                        .at(line, raw_sample.get().as_bytes()),
                ),
            }
        }
    }
    Ok((samples, errors))
}

fn parse_sample(raw: &str) -> Result<(Option<i64>, f64), Rejection> {
    let (ts, value): (&RawValue, ValueIn) = serde_json::from_str(raw)
        .map_err(|e| Rejection::new(Reason::Malformed, format!("expected [timestamp, value]: {e}")))?;
    let ts: Option<i64> = serde_json::from_str(ts.get()).map_err(|_| {
        Rejection::new(
            Reason::BadTimestamp,
            "timestamp is not an integer number of milliseconds or null",
        )
    })?;
    if ts.is_some_and(|t| t.unsigned_abs() >= 9_000_000_000_000_000) {
        return Err(Rejection::new(Reason::BadTimestamp, "timestamp out of range"));
    }
    let value = match value {
        ValueIn::Number(v) => v,
        ValueIn::Text(s) => match s.as_str() {
            "NaN" => f64::NAN,
            "+Inf" | "Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            _ => {
                return Err(Rejection::new(
                    Reason::BadValue,
                    "value is not a number, \"NaN\", \"+Inf\" or \"-Inf\"",
                ));
            }
        },
    };
    Ok((ts, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str) -> String {
        match decode(body.as_bytes(), &WireLimits::default()) {
            Err(DecodeError::Json(_)) => "error: json".to_owned(),
            Err(e) => format!("error: {e}"),
            Ok((samples, errors)) => {
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
                out.extend(
                    errors
                        .iter()
                        .map(|e| format!("!{} {} {}", e.line, e.reason, e.excerpt)),
                );
                out.join("\n")
            }
        }
    }

    /// The documented example, pinned: if this test changes, the public contract changed.
    #[test]
    fn json_contract_golden() {
        let body = r#"{
          "series": [
            {
              "name": "christmaspi.temperature.ham",
              "labels": {"room": "kitchen"},
              "samples": [[1450000000000, 131.2], [1450000001000, "NaN"], [null, 131.4]]
            }
          ]
        }"#;
        assert_eq!(
            check(body),
            [
                r#"{"christmaspi.temperature.ham",room="kitchen"} 131.2 1450000000000"#,
                r#"{"christmaspi.temperature.ham",room="kitchen"} NaN 1450000001000"#,
                r#"{"christmaspi.temperature.ham",room="kitchen"} 131.4 now"#,
            ]
            .join("\n")
        );
    }

    #[test]
    fn series_and_samples() {
        let cases: &[(&str, &str)] = &[
            (r#"{"series":[]}"#, ""),
            (r#"{"series":[{"name":"a","samples":[]}]}"#, ""),
            (r#"{"series":[{"name":"a","samples":[[1,-0.0]]}]}"#, "a{} -0.0 1"),
            (
                r#"{"series":[{"name":"a","samples":[[1,"+Inf"],[2,"-Inf"],[3,"Inf"]]}]}"#,
                "a{} inf 1\na{} -inf 2\na{} inf 3",
            ),
            (
                r#"{"series":[{"name":"a","samples":[[-5,1e308]]}]}"#,
                "a{} 1e308 -5",
            ),
            (
                r#"{"series":[{"name":"a","labels":{"x":""},"samples":[[1,1]]}]}"#,
                "a{} 1.0 1",
            ),
            (
                r#"{"series":[{"name":"a","labels":{"__name__":"a"},"samples":[[1,1]]}]}"#,
                "a{} 1.0 1",
            ),
            // bad series, rejected alone
            (
                r#"{"series":[{"name":"","samples":[[1,1]]}]}"#,
                r#"!1 bad_name {"name":"","samples":[[1,1]]}"#,
            ),
            (
                r#"{"series":[{"samples":[[1,1]]}]}"#,
                r#"!1 malformed {"samples":[[1,1]]}"#,
            ),
            (r#"{"series":[{"name":"a"}]}"#, r#"!1 malformed {"name":"a"}"#),
            (
                r#"{"series":[{"name":"a","sample":[]}]}"#,
                r#"!1 malformed {"name":"a","sample":[]}"#,
            ),
            (
                r#"{"series":[{"name":5,"samples":[]}]}"#,
                r#"!1 malformed {"name":5,"samples":[]}"#,
            ),
            (
                r#"{"series":[{"name":"a","labels":{"x":1},"samples":[]}]}"#,
                r#"!1 malformed {"name":"a","labels":{"x":1},"samples":[]}"#,
            ),
            (
                r#"{"series":[{"name":"a","labels":{"":"v"},"samples":[]}]}"#,
                r#"!1 bad_label {"name":"a","labels":{"":"v"},"samples":[]}"#,
            ),
            (
                r#"{"series":[{"name":"a","labels":{"__name__":"b"},"samples":[]}]}"#,
                r#"!1 bad_label {"name":"a","labels":{"__name__":"b"},"samples":[]}"#,
            ),
            (
                r#"{"series":[7, {"name":"b","samples":[[1,2]]}]}"#,
                "b{} 2.0 1\n!1 malformed 7",
            ),
            // bad samples, rejected alone
            (
                r#"{"series":[{"name":"a","samples":[[1,"x"],[2,2]]}]}"#,
                "a{} 2.0 2\n!1 bad_value [1,\"x\"]",
            ),
            (
                r#"{"series":[{"name":"a","samples":[[1.5,1]]}]}"#,
                "!1 bad_timestamp [1.5,1]",
            ),
            (
                r#"{"series":[{"name":"a","samples":[["2015-12-13T09:46:40Z",1]]}]}"#,
                "!1 bad_timestamp [\"2015-12-13T09:46:40Z\",1]",
            ),
            (
                r#"{"series":[{"name":"a","samples":[[9223372036854775807,1]]}]}"#,
                "!1 bad_timestamp [9223372036854775807,1]",
            ),
            (r#"{"series":[{"name":"a","samples":[[1]]}]}"#, "!1 malformed [1]"),
            (
                r#"{"series":[{"name":"a","samples":[[1,2,3]]}]}"#,
                "!1 malformed [1,2,3]",
            ),
            (
                r#"{"series":[{"name":"a","samples":[{"t":1}]}]}"#,
                "!1 malformed {\"t\":1}",
            ),
            (
                r#"{"series":[{"name":"a","samples":[[1,null]]}]}"#,
                "!1 malformed [1,null]",
            ),
            // whole-request errors
            ("", "error: json"),
            ("[]", "error: json"),
            ("[[]]", "error: json"),
            ("null", "error: json"),
            ("{\"series\":[]", "error: json"),
            (r#"{"series":[["a",[]]]}"#, r#"!1 malformed ["a",[]]"#),
            (r#"{"series":{}}"#, "error: json"),
            (r#"{"series":[],"x":1}"#, "error: json"),
            ("{\"series\":[]} trailing", "error: json"),
        ];
        for (body, want) in cases {
            assert_eq!(check(body), *want, "{body}");
        }
    }

    #[test]
    fn limits_reject_the_series() {
        let tight = WireLimits {
            max_labels: 1,
            max_name_bytes: 3,
            ..WireLimits::default()
        };
        let body = r#"{"series":[
            {"name":"abcd","samples":[[1,1]]},
            {"name":"a","labels":{"x":"1","y":"2"},"samples":[[1,1]]},
            {"name":"ok","labels":{"x":"1"},"samples":[[1,1]]}]}"#;
        let (samples, errors) = decode(body.as_bytes(), &tight).unwrap();
        assert_eq!(samples.len(), 1);
        let errs: Vec<(usize, Reason)> = errors.iter().map(|e| (e.line, e.reason)).collect();
        assert_eq!(errs, [(1, Reason::BadName), (2, Reason::TooManyLabels)]);
    }
}
