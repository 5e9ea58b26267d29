//! `GET /api/v1/statsd/quantile`: percentiles of StatsD timers over any time range and any
//! set of timers, answered by merging the per-flush sketches of the sketch log
//! (`ingest::sketchlog`), never by averaging stored percentiles.
//!
//! Parameters (query string, `read` scope):
//! - `name`: a timer name as sent (with any configured timer prefix); `*` matches any run
//!   of characters, `?` one character. And/or `match`: a PromQL selector over the timer name
//!   (`__name__`) and its tags, e.g. `{__name__=~"api\\..*",host!="canary"}`. At least one.
//! - `q`: quantiles in `[0, 1]`, repeated or comma-separated (default `0.5,0.9,0.99`; at most
//!   [`MAX_QUANTILES`]).
//! - `start`, `end`: RFC 3339 or Unix seconds, inclusive, over flush times (default: the
//!   hour before now).
//! - `group_by`: a tag name (or `__name__`) to merge per value; timers lacking the tag form
//!   the group `""`. Without it every selected sketch is merged into one answer.
//! - `limit` (default 100, at most `statsd_sketch_query_max_groups`) and `after` (the last
//!   group of the previous page): groups are sorted by value and paginated.
//!
//! Answer: `{"status":"success","data":{"relative_accuracy":0.01,"sketches_merged":N,
//! "groups":[{"group":…,"sketches":…,"count":…,"sum":…,"min":…,"max":…,
//! "quantiles":{"0.99":…}}],"next_after":…}}`. Every quantile value is within
//! `relative_accuracy` of a value of the merged timers at that rank. The merge runs on the
//! blocking pool under a query permit, bounded by `statsd_sketch_query_max_sketches`.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ingest::sketchlog::{SketchLogError, SketchQuery};
use model::{MatchOp, Matcher};

use super::{HumanState, error, params};

/// Most quantiles one request may ask for.
pub const MAX_QUANTILES: usize = 32;

/// Default page size of the groups.
const DEFAULT_LIMIT: usize = 100;

/// Default time range when `start` is absent: the hour before `end`.
const DEFAULT_RANGE_MS: i64 = 3_600_000;

/// Turns a `*`/`?` glob into an anchored-by-the-matcher regex body.
fn glob_regex(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() * 2);
    for c in glob.chars() {
        match c {
            '*' => out.push_str(".*"),
            '?' => out.push('.'),
            c => out.push_str(&regex_escape(c)),
        }
    }
    out
}

fn regex_escape(c: char) -> String {
    if "\\.+*?()|[]{}^$#&-~".contains(c) {
        format!("\\{c}")
    } else {
        c.to_string()
    }
}

/// The handler (registered in the human router's `read` group).
pub(super) async fn quantile(State(state): State<HumanState>, req: Request) -> Response {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, "bad_data", &m);
    let Some(log) = state.0.parts.ingest.sketch_log() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the statsd sketch log is disabled (ingest.statsd_sketch_retention_hours = 0)",
        );
    };
    let params = match params(req, 0).await {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let max_groups = state.0.parts.config.ingest.statsd_sketch_query_max_groups;
    let mut matchers: Vec<Matcher> = Vec::new();
    let mut quantiles: Vec<f64> = Vec::new();
    let (mut start, mut end) = (None, None);
    let (mut group_by, mut after) = (None, None);
    let mut limit = DEFAULT_LIMIT.min(max_groups);
    for (k, v) in &params {
        match k.as_str() {
            "name" if v.contains(['*', '?']) => {
                match Matcher::new(MatchOp::Regex, model::METRIC_NAME_LABEL, glob_regex(v)) {
                    Ok(m) => matchers.push(m),
                    Err(e) => return bad(format!("name: {e}")),
                }
            }
            "name" => matchers.push(Matcher::equal(model::METRIC_NAME_LABEL, v.as_str())),
            "match" | "match[]" => match query::parse_selector(v) {
                Ok(m) => matchers.extend(m),
                Err(e) => return bad(format!("match: {e}")),
            },
            "q" => {
                for part in v.split(',') {
                    match part.trim().parse::<f64>() {
                        Ok(q) if (0.0..=1.0).contains(&q) => quantiles.push(q),
                        _ => return bad(format!("q: {part:?} is not a number between 0 and 1")),
                    }
                }
            }
            "start" | "end" => {
                let Some(t) = crate::export::parse_time(v) else {
                    return bad(format!("{k}: {v:?} is neither RFC 3339 nor unix seconds"));
                };
                if k == "start" {
                    start = Some(t);
                } else {
                    end = Some(t);
                }
            }
            "group_by" => group_by = Some(v.clone()),
            "after" => after = Some(v.clone()),
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=max_groups).contains(&n) => limit = n,
                _ => return bad(format!("limit: must be between 1 and {max_groups}")),
            },
            _ => {}
        }
    }
    if matchers.is_empty() {
        return bad("name or match is required".into());
    }
    if matchers.iter().all(Matcher::matches_empty) {
        return bad("the selection must contain a matcher that does not match the empty string".into());
    }
    if quantiles.is_empty() {
        quantiles = vec![0.5, 0.9, 0.99];
    }
    if quantiles.len() > MAX_QUANTILES {
        return bad(format!("q: at most {MAX_QUANTILES} quantiles"));
    }
    let end = end.unwrap_or_else(|| state.0.parts.clock.now().millis());
    let start = start.unwrap_or(end.saturating_sub(DEFAULT_RANGE_MS));
    if start > end {
        return bad("start must not be after end".into());
    }
    let query = SketchQuery {
        matchers,
        start_ms: start,
        end_ms: end,
        quantiles,
        group_by,
    };
    let answer = match state.blocking(move |_| log.query(&query)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e @ (SketchLogError::TooManySketches(_) | SketchLogError::TooManyGroups(_)))) => {
            return error(StatusCode::UNPROCESSABLE_ENTITY, "execution", &e.to_string());
        }
        Ok(Err(SketchLogError::BadQuantile(q))) => return bad(format!("q: {q} is not between 0 and 1")),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "statsd quantile query failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the sketch log could not be read",
            );
        }
        Err(r) => return r.into_response(),
    };
    let mut groups: Vec<_> = answer
        .groups
        .into_iter()
        .filter(|g| match (&after, &g.group) {
            (Some(a), Some(v)) => v > a,
            _ => true,
        })
        .collect();
    let next_after = if groups.len() > limit {
        groups.truncate(limit);
        groups.last().and_then(|g| g.group.clone())
    } else {
        None
    };
    let groups: Vec<serde_json::Value> = groups
        .into_iter()
        .map(|g| {
            let qs: serde_json::Map<String, serde_json::Value> = g
                .quantiles
                .iter()
                .map(|(q, v)| (q.to_string(), serde_json::json!(v)))
                .collect();
            serde_json::json!({
                "group": g.group,
                "sketches": g.sketches,
                "count": g.count,
                "sum": g.sum,
                "min": g.min,
                "max": g.max,
                "quantiles": qs,
            })
        })
        .collect();
    Json(serde_json::json!({
        "status": "success",
        "data": {
            "relative_accuracy": answer.relative_accuracy,
            "sketches_merged": answer.sketches_merged,
            "start_ms": start,
            "end_ms": end,
            "groups": groups,
            "next_after": next_after,
        }
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_regexes() {
        let cases = [
            (
                "api.*.latency",
                "api\\..*\\.latency",
                "api.a.latency",
                "apiXa.latency",
            ),
            ("h?", "h.", "h1", "h12"),
        ];
        for (glob, re, yes, no) in cases {
            assert_eq!(glob_regex(glob), re);
            let m = Matcher::new(MatchOp::Regex, "__name__", glob_regex(glob)).unwrap();
            assert!(m.matches(yes), "{glob} {yes}");
            assert!(!m.matches(no), "{glob} {no}");
        }
    }
}
