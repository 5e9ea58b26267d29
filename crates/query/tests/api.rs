//! The Prometheus HTTP API layer: parameter parsing, status codes and the exact JSON bodies
//! (pinned as golden strings), plus the query limits.

use std::time::Duration;

use model::{Label, SeriesKey, Timestamp};
use query::api::{self, ApiResponse};
use query::{MemReader, QueryLimits};

fn key(name: &str, labels: &[(&str, &str)]) -> SeriesKey {
    SeriesKey::new(name, labels.iter().map(|(k, v)| Label::new(*k, *v)).collect()).unwrap()
}

/// Two series sampled every 10 s from 0 to 100 s, and a Graphite-style name.
fn reader() -> MemReader {
    let mut r = MemReader::new();
    for i in 0..=10 {
        let t = i * 10_000;
        r.add(&key("up", &[("job", "api"), ("instance", "a")]), t, 1.0);
        r.add(&key("up", &[("job", "db"), ("instance", "b")]), t, 0.0);
        r.add(&key("host1.cpu0.x", &[]), t, i as f64 * 0.5);
    }
    r.add(&key("odd", &[("path", "<a&b>")]), 0, 1e21);
    r
}

/// Parameters, expected status, expected body.
type Case = (&'static [(&'static str, &'static str)], u16, &'static str);

fn params(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn check(resp: ApiResponse, status: u16, body: &str) {
    assert_eq!((resp.status, resp.body.as_str()), (status, body));
}

const NOW: Timestamp = Timestamp(100_000);

#[test]
fn instant_query_shapes() {
    let r = reader();
    let l = QueryLimits::default();
    let cases: &[Case] = &[
        (
            &[("query", "up"), ("time", "50")],
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","instance":"a","job":"api"},"value":[50,"1"]},{"metric":{"__name__":"up","instance":"b","job":"db"},"value":[50,"0"]}]}}"#,
        ),
        (
            &[("query", "sum(up)"), ("time", "50.5")],
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[50.500,"1"]}]}}"#,
        ),
        (
            &[("query", "1/0"), ("time", "1970-01-01T00:00:01.25Z")],
            200,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1.250,"+Inf"]}}"#,
        ),
        (
            &[("query", r#""hello""#), ("time", "3")],
            200,
            r#"{"status":"success","data":{"resultType":"string","result":[3,"hello"]}}"#,
        ),
        (
            &[("query", r#"{"host1.cpu0.x"}[15s]"#), ("time", "20")],
            200,
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"host1.cpu0.x"},"values":[[10,"0.5"],[20,"1"]]}]}}"#,
        ),
        (
            &[("query", "odd")],
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"odd","path":"\u003ca\u0026b\u003e"},"value":[100,"1e+21"]}]}}"#,
        ),
        (
            &[("query", "up{job=\"none\"}")],
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
        ),
    ];
    for (p, status, body) in cases {
        check(api::query(&r, &params(p), NOW, &l), *status, body);
    }
}

#[test]
fn instant_query_errors() {
    let r = reader();
    let l = QueryLimits::default();
    let cases: &[Case] = &[
        (
            &[("query", "up"), ("time", "yesterday")],
            400,
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"time\": cannot parse \"yesterday\" to a valid timestamp"}"#,
        ),
        (
            &[("time", "1")],
            400,
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:1: parse error: no expression found in input"}"#,
        ),
        (
            &[("query", "histogram_count(up)")],
            400,
            r#"{"status":"error","errorType":"bad_data","error":"not supported: function histogram_count()"}"#,
        ),
        (
            &[("query", "up"), ("timeout", "soon")],
            400,
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"timeout\": cannot parse \"soon\" to a valid duration"}"#,
        ),
        (
            &[("query", "up + on(instance) group_left up{job=\"api\"} + up")],
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"instance":"a","job":"api"},"value":[100,"3"]}]}}"#,
        ),
        (
            &[(
                "query",
                r#"label_replace(label_replace(up, "instance", "", "instance", ".*"), "job", "", "job", ".*")"#,
            )],
            422,
            r#"{"status":"error","errorType":"execution","error":"vector cannot contain metrics with the same labelset"}"#,
        ),
    ];
    for (p, status, body) in cases {
        let resp = api::query(&r, &params(p), NOW, &l);
        if *status == 400 && body.contains("parse error") {
            assert_eq!(resp.status, 400);
        }
        check(resp, *status, body);
    }
    // parse errors carry the parser's message; pin the shape only
    let resp = api::query(&r, &params(&[("query", "sum(")]), NOW, &l);
    assert_eq!(resp.status, 400);
    assert!(
        resp.body.starts_with(
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": parse error: "#
        ),
        "{}",
        resp.body
    );
}

#[test]
fn range_query() {
    let r = reader();
    let l = QueryLimits::default();
    check(
        api::query_range(
            &r,
            &params(&[
                ("query", r#"{__name__="host1.cpu0.x"}"#),
                ("start", "0"),
                ("end", "30"),
                ("step", "10s"),
            ]),
            &l,
        ),
        200,
        r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"host1.cpu0.x"},"values":[[0,"0"],[10,"0.5"],[20,"1"],[30,"1.5"]]}]}}"#,
    );
    check(
        api::query_range(
            &r,
            &params(&[("query", "time()"), ("start", "0"), ("end", "1"), ("step", "0.5")]),
            &l,
        ),
        200,
        r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[0,"0"],[0.500,"0.5"],[1,"1"]]}]}}"#,
    );
    let errors: &[(&[(&str, &str)], &str)] = &[
        (
            &[("query", "up"), ("start", "10"), ("end", "0"), ("step", "1")],
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"end\": end timestamp must not be before start time"}"#,
        ),
        (
            &[("query", "up"), ("start", "0"), ("end", "10"), ("step", "0")],
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"step\": zero or negative query resolution step widths are not accepted. Try a positive integer"}"#,
        ),
        (
            &[("query", "up"), ("start", "0"), ("end", "100000"), ("step", "1")],
            r#"{"status":"error","errorType":"bad_data","error":"exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"}"#,
        ),
        (
            &[("query", "up"), ("end", "10"), ("step", "1")],
            r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"start\": cannot parse \"\" to a valid timestamp"}"#,
        ),
    ];
    for (p, body) in errors {
        check(api::query_range(&r, &params(p), &l), 400, body);
    }
    // 11,000 intervals (11,001 points) are still allowed, as in Prometheus
    let ok = api::query_range(
        &r,
        &params(&[
            ("query", "sum(up)"),
            ("start", "0"),
            ("end", "11000"),
            ("step", "1"),
        ]),
        &l,
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    // a range query's parse error is not wrapped in "invalid parameter"
    let bad = api::query_range(
        &r,
        &params(&[("query", "sum("), ("start", "0"), ("end", "1"), ("step", "1")]),
        &l,
    );
    assert_eq!(bad.status, 400);
    assert!(
        bad.body
            .starts_with(r#"{"status":"error","errorType":"bad_data","error":"parse error: "#),
        "{}",
        bad.body
    );
}

#[test]
fn metadata_endpoints() {
    let r = reader();
    let l = QueryLimits::default();
    check(
        api::series(
            &r,
            &params(&[("match[]", "up"), ("match[]", r#"{"host1.cpu0.x"}"#)]),
            &l,
        ),
        200,
        r#"{"status":"success","data":[{"__name__":"host1.cpu0.x"},{"__name__":"up","instance":"a","job":"api"},{"__name__":"up","instance":"b","job":"db"}]}"#,
    );
    check(
        api::series(&r, &params(&[("match[]", "up"), ("limit", "1")]), &l),
        200,
        r#"{"status":"success","data":[{"__name__":"up","instance":"a","job":"api"}]}"#,
    );
    check(
        api::series(&r, &params(&[]), &l),
        400,
        r#"{"status":"error","errorType":"bad_data","error":"no match[] parameter provided"}"#,
    );
    check(
        api::series(&r, &params(&[("match[]", "up"), ("start", "200")]), &l),
        200,
        r#"{"status":"success","data":[]}"#,
    );
    check(
        api::labels(&r, &params(&[]), &l),
        200,
        r#"{"status":"success","data":["__name__","instance","job","path"]}"#,
    );
    check(
        api::labels(&r, &params(&[("match[]", r#"{"host1.cpu0.x"}"#)]), &l),
        200,
        r#"{"status":"success","data":["__name__"]}"#,
    );
    check(
        api::label_values(&r, "__name__", &params(&[]), &l),
        200,
        r#"{"status":"success","data":["host1.cpu0.x","odd","up"]}"#,
    );
    check(
        api::label_values(&r, "job", &params(&[("match[]", r#"up{instance="b"}"#)]), &l),
        200,
        r#"{"status":"success","data":["db"]}"#,
    );
    check(
        api::label_values(&r, "a-b", &params(&[]), &l),
        400,
        r#"{"status":"error","errorType":"bad_data","error":"invalid label name: \"a-b\""}"#,
    );
    check(
        api::buildinfo("0.1.0"),
        200,
        r#"{"status":"success","data":{"version":"0.1.0","revision":"","branch":"","buildUser":"","buildDate":"","goVersion":""}}"#,
    );
    check(api::metadata(), 200, r#"{"status":"success","data":{}}"#);
}

#[test]
fn limits_are_prometheus_style_errors() {
    let r = reader();
    let tight = |f: &dyn Fn(&mut QueryLimits)| {
        let mut l = QueryLimits::default();
        f(&mut l);
        l
    };
    let cases: Vec<(QueryLimits, &str, u16, &str)> = vec![
        (
            tight(&|l| l.max_samples = 5),
            "sum_over_time(up[1m])",
            422,
            r#"{"status":"error","errorType":"execution","error":"query processing would load too many samples into memory in query execution"}"#,
        ),
        (
            tight(&|l| l.max_samples = 10),
            "up[1m]",
            422,
            r#"{"status":"error","errorType":"execution","error":"query processing would load too many samples into memory in query execution"}"#,
        ),
        (
            tight(&|l| l.max_series = 1),
            "up",
            422,
            r#"{"status":"error","errorType":"execution","error":"query would select more than 1 series"}"#,
        ),
        (
            tight(&|l| l.timeout = Duration::ZERO),
            "up",
            503,
            r#"{"status":"error","errorType":"timeout","error":"query timed out in query execution"}"#,
        ),
    ];
    for (limits, q, status, body) in cases {
        check(
            api::query(&r, &params(&[("query", q)]), NOW, &limits),
            status,
            body,
        );
    }
    // aggregations fold series as they stream: only the groups' slots count
    let one = tight(&|l| l.max_samples = 1);
    check(
        api::query(&r, &params(&[("query", "count(up)")]), NOW, &one),
        200,
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[100,"2"]}]}}"#,
    );
    assert_eq!(api::query(&r, &params(&[("query", "up")]), NOW, &one).status, 422);
    // the timeout parameter can only shorten the configured timeout
    let l = QueryLimits::default();
    check(
        api::query(&r, &params(&[("query", "up"), ("timeout", "0s")]), NOW, &l),
        503,
        r#"{"status":"error","errorType":"timeout","error":"query timed out in query execution"}"#,
    );
}

#[test]
fn concurrent_queries_are_bounded() {
    let gate = query::QueryGate::new(2);
    let a = gate.try_enter().unwrap();
    let _b = gate.try_enter().unwrap();
    let refused = gate.try_enter().unwrap_err();
    check(
        ApiResponse::from_query_error(&refused),
        503,
        r#"{"status":"error","errorType":"unavailable","error":"too many concurrent queries (at most 2)"}"#,
    );
    drop(a);
    assert_eq!(gate.active(), 1);
    assert!(gate.try_enter().is_ok());
}

#[test]
fn limits_config_round_trips_and_rejects_unknown_keys() {
    let l = QueryLimits::default();
    let json = serde_json::to_string(&l).unwrap();
    assert_eq!(
        json,
        r#"{"max_samples":50000000,"max_series":1000000,"timeout_ms":120000,"lookback_delta_ms":300000,"max_points_per_series_in_range":11000,"subquery_step_ms":60000,"max_concurrent_queries":20,"delayed_name_removal":false,"use_rollups":true,"parallelism":0}"#
    );
    assert_eq!(serde_json::from_str::<QueryLimits>(&json).unwrap(), l);
    assert_eq!(serde_json::from_str::<QueryLimits>("{}").unwrap(), l);
    assert!(serde_json::from_str::<QueryLimits>(r#"{"max_sample":1}"#).is_err());
    assert_eq!(l.validate(), Ok(()));
    let zero_step = QueryLimits {
        subquery_step_ms: 0,
        ..QueryLimits::default()
    };
    assert_eq!(
        zero_step.validate().unwrap_err().to_string(),
        "query.subquery_step_ms must be greater than zero"
    );
    let too_parallel = QueryLimits {
        parallelism: query::MAX_PARALLELISM + 1,
        ..QueryLimits::default()
    };
    assert_eq!(
        too_parallel.validate().unwrap_err().to_string(),
        "query.parallelism must be at most 64"
    );
}
