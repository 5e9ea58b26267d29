//! Prometheus HTTP API semantics without HTTP: decoded parameters in, an HTTP status and the
//! exact JSON body Prometheus would send out. The server maps routes and methods (GET and
//! form POST both arrive here as `(name, value)` pairs) and authentication; everything about
//! parameter formats, defaults, limits and result shapes lives here.
//!
//! Shapes (as Prometheus 2.x):
//! - success: `{"status":"success","data":…}`
//! - error: `{"status":"error","errorType":"bad_data"|"execution"|"timeout"|"internal","error":"…"}`
//!   with status 400, 422, 503 and 500 respectively
//! - vector: `[{"metric":{…},"value":[<unix seconds>,"<value>"]}]`; matrix: `"values":[[…],…]`;
//!   scalar and string: `[<unix seconds>,"<value>"]`
//! - values: sample values as Prometheus' `jsonutil.MarshalValue` (`1e+21`, `1e-07` beyond
//!   `[1e-6, 1e21)`), scalar values as plain `FormatFloat(v, 'f', -1, 64)`
//!
//! Strings are escaped as Go's `encoding/json` does (`<`, `>`, `&` become `\u003c` …), so
//! byte-for-byte comparisons against Prometheus hold.

use std::fmt::Write as _;

use model::{Matcher, Timestamp};

use crate::eval::{QueryValue, RawSeries, Steps};
use crate::labels::Labels;
use crate::time::{parse_duration, parse_time, write_json_value, write_timestamp};
use crate::{QueryError, QueryLimits, SeriesReader, evaluate_instant, evaluate_range, parse_selector};

/// The time an omitted `start` stands for, in ms: about 292,000 years before the epoch,
/// far enough to mean "all time" yet a thousand times inside `i64`, so readers may add
/// and subtract ranges without overflow (Prometheus' own `minTime` is at the very edge).
pub const MIN_TIME_MS: i64 = -9_223_309_901_257_974;
/// The time an omitted `end` stands for, in ms (see [`MIN_TIME_MS`]).
pub const MAX_TIME_MS: i64 = 9_223_309_901_257_974;

/// A status code and a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The JSON body.
    pub body: String,
}

impl ApiResponse {
    fn success(data: &str) -> ApiResponse {
        ApiResponse {
            status: 200,
            body: format!("{{\"status\":\"success\",\"data\":{data}}}"),
        }
    }

    /// The success envelope around a query result, rendered into one buffer sized up front
    /// (no copy of the data into the envelope, no regrowth for the common shapes).
    fn success_value(v: &QueryValue) -> ApiResponse {
        let mut body = String::with_capacity(64 + estimated_len(v));
        body.push_str("{\"status\":\"success\",\"data\":");
        render_value_into(&mut body, v);
        body.push('}');
        ApiResponse { status: 200, body }
    }

    /// Whether this is the error answer to a query that ran out of time (`errorType`
    /// `timeout`), as opposed to any other 503.
    pub fn is_timeout(&self) -> bool {
        self.status == 503
            && self
                .body
                .starts_with("{\"status\":\"error\",\"errorType\":\"timeout\"")
    }

    fn error(kind: ErrorKind, msg: &str) -> ApiResponse {
        let (status, typ) = match kind {
            ErrorKind::BadData => (400, "bad_data"),
            ErrorKind::Execution => (422, "execution"),
            ErrorKind::Timeout => (503, "timeout"),
            ErrorKind::Internal => (500, "internal"),
            ErrorKind::Unavailable => (503, "unavailable"),
        };
        let mut body = String::from("{\"status\":\"error\",\"errorType\":\"");
        body.push_str(typ);
        body.push_str("\",\"error\":");
        go_json_string(&mut body, msg);
        body.push('}');
        ApiResponse { status, body }
    }

    /// The Prometheus error response for a query error (for example a refused
    /// [`crate::QueryGate`] permit).
    pub fn from_query_error(e: &QueryError) -> ApiResponse {
        let kind = match e {
            QueryError::BadData(_) | QueryError::NotSupported(_) => ErrorKind::BadData,
            QueryError::Execution(_) | QueryError::TooManySamples | QueryError::TooManySeries(_) => {
                ErrorKind::Execution
            }
            QueryError::Timeout => ErrorKind::Timeout,
            QueryError::Storage(_) => ErrorKind::Internal,
            QueryError::TooManyQueries(_) => ErrorKind::Unavailable,
        };
        ApiResponse::error(kind, &e.to_string())
    }
}

#[derive(Debug, Clone, Copy)]
enum ErrorKind {
    BadData,
    Execution,
    Timeout,
    Internal,
    Unavailable,
}

fn param<'p>(params: &'p [(String, String)], name: &str) -> Option<&'p str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn bad_param(name: &str, msg: &str) -> ApiResponse {
    ApiResponse::error(ErrorKind::BadData, &format!("invalid parameter {name:?}: {msg}"))
}

fn time_param(params: &[(String, String)], name: &str, default: i64) -> Result<i64, ApiResponse> {
    match param(params, name) {
        None | Some("") => Ok(default),
        Some(s) => {
            parse_time(s).ok_or_else(|| bad_param(name, &format!("cannot parse {s:?} to a valid timestamp")))
        }
    }
}

fn required_time(params: &[(String, String)], name: &str) -> Result<i64, ApiResponse> {
    let s = param(params, name).unwrap_or("");
    parse_time(s).ok_or_else(|| bad_param(name, &format!("cannot parse {s:?} to a valid timestamp")))
}

/// Applies the `timeout` parameter: it may only shorten the configured timeout.
fn effective_limits(params: &[(String, String)], limits: &QueryLimits) -> Result<QueryLimits, ApiResponse> {
    let mut l = limits.clone();
    if let Some(s) = param(params, "timeout").filter(|s| !s.is_empty()) {
        let ms = parse_duration(s)
            .filter(|ms| *ms >= 0)
            .ok_or_else(|| bad_param("timeout", &format!("cannot parse {s:?} to a valid duration")))?;
        let d = std::time::Duration::from_millis(ms.unsigned_abs());
        l.timeout = l.timeout.min(d);
    }
    Ok(l)
}

fn query_text(params: &[(String, String)]) -> Result<&str, ApiResponse> {
    match param(params, "query") {
        Some(q) if !q.trim().is_empty() => Ok(q),
        _ => Err(bad_param(
            "query",
            "1:1: parse error: no expression found in input",
        )),
    }
}

fn query_error(e: &QueryError) -> ApiResponse {
    match e {
        QueryError::BadData(m) if m.starts_with("parse error") => bad_param("query", m),
        e => ApiResponse::from_query_error(e),
    }
}

/// `/api/v1/query`: `query`, optional `time` (default `now`) and `timeout`.
pub fn query(
    reader: &dyn SeriesReader,
    params: &[(String, String)],
    now: Timestamp,
    limits: &QueryLimits,
) -> ApiResponse {
    let run = || -> Result<ApiResponse, ApiResponse> {
        let t = time_param(params, "time", now.millis())?;
        let limits = effective_limits(params, limits)?;
        let q = query_text(params)?;
        let value = evaluate_instant(reader, q, t, &limits).map_err(|e| query_error(&e))?;
        Ok(ApiResponse::success_value(&value))
    };
    run().unwrap_or_else(|e| e)
}

/// `/api/v1/query_range`: `query`, `start`, `end`, `step`, optional `timeout`.
pub fn query_range(
    reader: &dyn SeriesReader,
    params: &[(String, String)],
    limits: &QueryLimits,
) -> ApiResponse {
    let run = || -> Result<ApiResponse, ApiResponse> {
        let start = required_time(params, "start")?;
        let end = required_time(params, "end")?;
        if end < start {
            return Err(bad_param("end", "end timestamp must not be before start time"));
        }
        let step_s = param(params, "step").unwrap_or("");
        let step = parse_duration(step_s)
            .ok_or_else(|| bad_param("step", &format!("cannot parse {step_s:?} to a valid duration")))?;
        if step <= 0 {
            return Err(bad_param(
                "step",
                "zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        let steps = Steps { start, end, step };
        // as Prometheus: the number of intervals, not of points, is compared
        if usize::try_from((end - start) / step).unwrap_or(usize::MAX) > limits.max_points_per_series_in_range
        {
            return Err(ApiResponse::error(
                ErrorKind::BadData,
                &format!(
                    "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
                    group_thousands(limits.max_points_per_series_in_range)
                ),
            ));
        }
        let limits = effective_limits(params, limits)?;
        // unlike /query, Prometheus reports a range query's parse error unwrapped
        let q = param(params, "query").unwrap_or("");
        if q.trim().is_empty() {
            return Err(ApiResponse::error(
                ErrorKind::BadData,
                "1:1: parse error: no expression found in input",
            ));
        }
        let m = evaluate_range(reader, q, steps, &limits).map_err(|e| ApiResponse::from_query_error(&e))?;
        Ok(ApiResponse::success_value(&QueryValue::Matrix(m)))
    };
    run().unwrap_or_else(|e| e)
}

fn group_thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The `match[]` selectors; `Ok(vec![])` when none is given.
fn match_params(params: &[(String, String)]) -> Result<Vec<Vec<Matcher>>, ApiResponse> {
    params
        .iter()
        .filter(|(k, _)| k == "match[]")
        .map(|(_, v)| parse_selector(v).map_err(|e| bad_param("match[]", &e.to_string())))
        .collect()
}

fn limit_param(params: &[(String, String)], max: usize) -> Result<usize, ApiResponse> {
    match param(params, "limit") {
        None | Some("") => Ok(max),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n > 0 => Ok((n as u64).min(max as u64) as usize),
            Ok(0) => Ok(max),
            _ => Err(bad_param("limit", "limit must be non-negative")),
        },
    }
}

fn range_params(params: &[(String, String)]) -> Result<(i64, i64), ApiResponse> {
    let start = time_param(params, "start", MIN_TIME_MS)?;
    let end = time_param(params, "end", MAX_TIME_MS)?;
    Ok((start, end))
}

/// `/api/v1/series`: one or more `match[]`, optional `start`, `end`, `limit`.
pub fn series(reader: &dyn SeriesReader, params: &[(String, String)], limits: &QueryLimits) -> ApiResponse {
    let run = || -> Result<ApiResponse, ApiResponse> {
        let sets = match_params(params)?;
        if sets.is_empty() {
            return Err(ApiResponse::error(
                ErrorKind::BadData,
                "no match[] parameter provided",
            ));
        }
        let (start, end) = range_params(params)?;
        let limit = limit_param(params, limits.max_series)?;
        let mut all: Vec<Labels> = Vec::new();
        for m in &sets {
            let keys = reader
                .series(m, start, end, limit)
                .map_err(|e| ApiResponse::from_query_error(&e))?;
            all.extend(keys.iter().map(Labels::from_key));
        }
        all.sort();
        all.dedup();
        all.truncate(limit);
        let mut data = String::from("[");
        for (i, l) in all.iter().enumerate() {
            if i > 0 {
                data.push(',');
            }
            render_labels(&mut data, l);
        }
        data.push(']');
        Ok(ApiResponse::success(&data))
    };
    run().unwrap_or_else(|e| e)
}

/// `/api/v1/labels`: optional `match[]`, `start`, `end`, `limit`.
pub fn labels(reader: &dyn SeriesReader, params: &[(String, String)], limits: &QueryLimits) -> ApiResponse {
    let run = || -> Result<ApiResponse, ApiResponse> {
        let mut sets = match_params(params)?;
        if sets.is_empty() {
            sets.push(Vec::new());
        }
        let (start, end) = range_params(params)?;
        let limit = limit_param(params, limits.max_series)?;
        let mut names = Vec::new();
        for m in &sets {
            names.extend(
                reader
                    .label_names(m, start, end, limit)
                    .map_err(|e| ApiResponse::from_query_error(&e))?,
            );
        }
        Ok(ApiResponse::success(&string_list(names, limit)))
    };
    run().unwrap_or_else(|e| e)
}

/// `/api/v1/label/<name>/values`: optional `match[]`, `start`, `end`, `limit`.
pub fn label_values(
    reader: &dyn SeriesReader,
    name: &str,
    params: &[(String, String)],
    limits: &QueryLimits,
) -> ApiResponse {
    let run = || -> Result<ApiResponse, ApiResponse> {
        if !crate::functions::is_label_name(name) {
            return Err(ApiResponse::error(
                ErrorKind::BadData,
                &format!("invalid label name: {name:?}"),
            ));
        }
        let mut sets = match_params(params)?;
        if sets.is_empty() {
            sets.push(Vec::new());
        }
        let (start, end) = range_params(params)?;
        let limit = limit_param(params, limits.max_series)?;
        let mut values = Vec::new();
        for m in &sets {
            values.extend(
                reader
                    .label_values(name, m, start, end, limit)
                    .map_err(|e| ApiResponse::from_query_error(&e))?,
            );
        }
        Ok(ApiResponse::success(&string_list(values, limit)))
    };
    run().unwrap_or_else(|e| e)
}

/// `/api/v1/status/buildinfo`.
pub fn buildinfo(version: &str) -> ApiResponse {
    let mut data = String::from("{\"version\":");
    go_json_string(&mut data, version);
    data.push_str(
        ",\"revision\":\"\",\"branch\":\"\",\"buildUser\":\"\",\"buildDate\":\"\",\"goVersion\":\"\"}",
    );
    ApiResponse::success(&data)
}

/// `/api/v1/metadata`: Roaster keeps no metric metadata, so the map is empty.
pub fn metadata() -> ApiResponse {
    ApiResponse::success("{}")
}

fn string_list(mut v: Vec<String>, limit: usize) -> String {
    v.sort();
    v.dedup();
    v.truncate(limit);
    let mut out = String::from("[");
    for (i, s) in v.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        go_json_string(&mut out, s);
    }
    out.push(']');
    out
}

/// Renders a query result as the `data` object.
pub fn render_value(v: &QueryValue) -> String {
    let mut out = String::with_capacity(estimated_len(v));
    render_value_into(&mut out, v);
    out
}

/// A guess at the rendered size of `v`: about 24 bytes a point (`[1795064400,"63.94"],`)
/// plus labels, so one allocation usually holds the whole answer.
fn estimated_len(v: &QueryValue) -> usize {
    const POINT: usize = 24;
    const SERIES: usize = 96;
    match v {
        QueryValue::Scalar { .. } | QueryValue::String { .. } => 64,
        QueryValue::Vector(samples) => 48 + samples.len().saturating_mul(SERIES + POINT),
        QueryValue::Matrix(series) => series.iter().fold(48usize, |n, s| {
            n.saturating_add(SERIES + s.ts.len().saturating_mul(POINT))
        }),
    }
}

fn render_value_into(out: &mut String, v: &QueryValue) {
    match v {
        QueryValue::Scalar { t, v } => {
            out.push_str("{\"resultType\":\"scalar\",\"result\":");
            // Prometheus writes scalars with plain `FormatFloat(v, 'f', -1, 64)`, samples not
            render_point(out, *t, &crate::time::format_value(*v));
        }
        QueryValue::String { t, v } => {
            out.push_str("{\"resultType\":\"string\",\"result\":");
            render_point(out, *t, v);
        }
        QueryValue::Vector(samples) => {
            out.push_str("{\"resultType\":\"vector\",\"result\":[");
            for (i, s) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                render_labels(out, &s.labels);
                out.push_str(",\"value\":");
                render_sample(out, s.t, s.v);
                out.push('}');
            }
            out.push(']');
        }
        QueryValue::Matrix(series) => {
            out.push_str("{\"resultType\":\"matrix\",\"result\":[");
            for (i, s) in series.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render_series(out, s);
            }
            out.push(']');
        }
    }
    out.push('}');
}

fn render_series(out: &mut String, s: &RawSeries) {
    out.push_str("{\"metric\":");
    render_labels(out, &s.labels);
    out.push_str(",\"values\":[");
    for (i, (t, v)) in s.ts.iter().zip(&s.vals).enumerate() {
        if i > 0 {
            out.push(',');
        }
        render_sample(out, *t, *v);
    }
    out.push_str("]}");
}

fn render_point(out: &mut String, t: i64, v: &str) {
    out.push('[');
    write_timestamp(out, t);
    out.push(',');
    go_json_string(out, v);
    out.push(']');
}

/// `[t,"v"]` for a sample value (no escaping needed: the text is digits, signs, `.`, `e`, `NaN`, `Inf`).
fn render_sample(out: &mut String, t: i64, v: f64) {
    out.push('[');
    write_timestamp(out, t);
    out.push(',');
    write_json_value(out, v);
    out.push(']');
}

fn render_labels(out: &mut String, l: &Labels) {
    out.push('{');
    for (i, (k, v)) in l.pairs().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        go_json_string(out, k);
        out.push(':');
        go_json_string(out, v);
    }
    out.push('}');
}

/// Writes `s` as a JSON string the way Go's `encoding/json` does.
pub fn go_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
