//! The bucket path of `*_over_time` (rollup summaries plus raw edges) against the raw path,
//! on randomised data: instant and range queries, offsets and `@`, aggregations over them,
//! NaN, infinities and stale markers. min/max/count/last must agree exactly; sum and avg
//! within [`REL`] relative (float rounding of a different summation order).

use model::{Label, SeriesKey};
use proptest::prelude::*;
use query::eval::Steps;
use query::{MemReader, QueryLimits, QueryValue, Windows, evaluate_instant, evaluate_range};

/// Relative tolerance of sum/avg (the differential test against Prometheus allows 1e-9).
const REL: f64 = 1e-12;
/// Absolute tolerance for results that should be 0.
const ABS: f64 = 1e-9;

const HOUR: i64 = 3_600_000;
const MIN: i64 = 60_000;
const STALE: u64 = 0x7ff0_0000_0000_0002;

fn agree(a: f64, b: f64, exact: bool) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if exact || a.is_infinite() || b.is_infinite() {
        return a.to_bits() == b.to_bits() || a == b;
    }
    (a - b).abs() <= ABS || (a - b).abs() <= REL * a.abs().max(b.abs())
}

fn values_agree(a: &QueryValue, b: &QueryValue, exact: bool) -> Result<(), String> {
    match (a, b) {
        (QueryValue::Vector(x), QueryValue::Vector(y)) => {
            if x.len() != y.len() {
                return Err(format!("{} vs {} samples", x.len(), y.len()));
            }
            for (p, q) in x.iter().zip(y) {
                if p.labels != q.labels || p.t != q.t || !agree(p.v, q.v, exact) {
                    return Err(format!("{p:?} vs {q:?}"));
                }
            }
            Ok(())
        }
        _ => Err(format!("shapes differ: {a:?} vs {b:?}")),
    }
}

fn value_strategy() -> impl Strategy<Value = f64> {
    prop_oneof![
        30 => (-10_000i64..10_000).prop_map(|c| c as f64 / 100.0),
        1 => Just(f64::NAN),
        1 => Just(f64::from_bits(STALE)),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
    ]
}

/// Up to 4 series, each up to 120 samples at random times within 4 hours.
fn data_strategy() -> impl Strategy<Value = Vec<Vec<(i64, f64)>>> {
    prop::collection::vec(
        prop::collection::vec((0i64..4 * HOUR / 1000, value_strategy()), 0..120),
        1..4,
    )
    .prop_map(|series| {
        series
            .into_iter()
            .map(|pts| pts.into_iter().map(|(s, v)| (s * 1000, v)).collect())
            .collect()
    })
}

fn reader(data: &[Vec<(i64, f64)>], bucket_ms: i64) -> MemReader {
    let mut r = MemReader::new().with_buckets(bucket_ms);
    for (i, pts) in data.iter().enumerate() {
        let key = SeriesKey::new("m", vec![Label::new("i", i.to_string())]).unwrap();
        for (t, v) in pts {
            r.add(&key, *t, *v);
        }
    }
    r
}

const FUNCS: [&str; 6] = [
    "sum_over_time",
    "count_over_time",
    "min_over_time",
    "max_over_time",
    "last_over_time",
    "avg_over_time",
];
const RANGES: [&str; 6] = ["1m", "5m", "30m", "1h", "2h", "90m"];

fn query_strategy() -> impl Strategy<Value = (String, bool)> {
    (0..FUNCS.len(), 0..RANGES.len(), 0..4usize, 0..3usize).prop_map(|(f, r, modifier, wrap)| {
        let func = FUNCS[f];
        let sel = match modifier {
            0 => format!("m[{}]", RANGES[r]),
            1 => format!("m[{}] offset 30m", RANGES[r]),
            2 => format!("m[{}] @ 7200", RANGES[r]),
            _ => format!(r#"m{{i!="1"}}[{}]"#, RANGES[r]),
        };
        let inner = format!("{func}({sel})");
        let q = match wrap {
            0 => inner,
            1 => format!("sum({inner})"),
            _ => format!("max by (i) ({inner})"),
        };
        let exact = !matches!(func, "sum_over_time" | "avg_over_time") && wrap != 1;
        (q, exact)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn instant_queries_agree(
        data in data_strategy(),
        (q, exact) in query_strategy(),
        at_s in 0i64..5 * HOUR / 1000,
        bucket in prop_oneof![Just(MIN), Just(HOUR)],
    ) {
        let raw_limits = QueryLimits { use_rollups: false, ..QueryLimits::default() };
        let limits = QueryLimits::default();
        // hour boundaries are where instant queries meet whole buckets
        for t in [at_s * 1000, (at_s * 1000 / HOUR) * HOUR, (at_s * 1000 / HOUR) * HOUR + 1000] {
            let want = evaluate_instant(&reader(&data, 0), &q, t, &raw_limits);
            let got = evaluate_instant(&reader(&data, bucket), &q, t, &limits);
            match (&want, &got) {
                (Ok(w), Ok(g)) => {
                    if let Err(e) = values_agree(w, g, exact) {
                        return Err(TestCaseError::fail(format!("{q} at {t}: {e}")));
                    }
                }
                _ => prop_assert_eq!(want.is_ok(), got.is_ok(), "{} at {}", q, t),
            }
        }
    }

    #[test]
    fn range_queries_agree(
        data in data_strategy(),
        (q, exact) in query_strategy(),
        start_min in 0i64..120,
        step in prop_oneof![Just(MIN), Just(5 * MIN), Just(HOUR), Just(30_000i64)],
        bucket in prop_oneof![Just(MIN), Just(HOUR)],
    ) {
        let steps = Steps { start: start_min * MIN, end: start_min * MIN + 3 * HOUR, step };
        let raw_limits = QueryLimits { use_rollups: false, ..QueryLimits::default() };
        let limits = QueryLimits::default();
        let want = evaluate_range(&reader(&data, 0), &q, steps, &raw_limits);
        let got = evaluate_range(&reader(&data, bucket), &q, steps, &limits);
        match (want, got) {
            (Ok(w), Ok(g)) => {
                prop_assert_eq!(w.len(), g.len(), "{}", q);
                for (a, b) in w.iter().zip(&g) {
                    prop_assert_eq!(&a.labels, &b.labels);
                    prop_assert_eq!(&a.ts, &b.ts, "{}", q);
                    for (x, y) in a.vals.iter().zip(&b.vals) {
                        prop_assert!(agree(*x, *y, exact), "{}: {} vs {}", q, x, y);
                    }
                }
            }
            (w, g) => prop_assert_eq!(w.is_ok(), g.is_ok(), "{}", q),
        }
    }
}

/// Buckets are used at all: an instant query at an hour boundary over `[1h]` is served
/// whole from one bucket per series.
#[test]
fn hour_window_is_served_from_buckets() {
    let w = Windows::new(vec![2 * HOUR], HOUR);
    assert!(w.is_clean(HOUR, 2 * HOUR - 10_000));
    assert!(
        w.is_clean(HOUR, 2 * HOUR),
        "last sample exactly at the window end"
    );
    assert!(!w.is_clean(2 * HOUR, 2 * HOUR + 10_000), "straddles the end");
    assert!(!w.is_clean(HOUR - MIN, HOUR + 10_000), "straddles the start");
    assert!(!w.is_clean(3 * HOUR, 3 * HOUR + 1), "outside every window");
    let steps = Windows::new(vec![HOUR, HOUR + MIN], HOUR);
    assert!(
        steps.is_clean(0, 10_000),
        "inside the first window, before the second"
    );
    assert!(
        !steps.is_clean(30_000, 70_000),
        "inside the first window, cut by the second"
    );
    assert!(steps.is_clean(MIN, MIN + 50_000), "inside both");
}

/// Delegates to a [`MemReader`] and counts the buckets it hands over.
struct Counting {
    inner: MemReader,
    buckets: std::sync::atomic::AtomicUsize,
}

impl query::SeriesReader for Counting {
    fn select(
        &self,
        m: &[model::Matcher],
        s: i64,
        e: i64,
        v: &mut query::Visit<'_>,
    ) -> Result<(), query::QueryError> {
        self.inner.select(m, s, e, v)
    }
    fn select_summaries(
        &self,
        m: &[model::Matcher],
        w: &Windows,
        v: &mut query::SummaryVisit<'_>,
    ) -> Result<(), query::QueryError> {
        self.inner.select_summaries(m, w, &mut |k, b, ts, vals| {
            self.buckets
                .fetch_add(b.len(), std::sync::atomic::Ordering::Relaxed);
            v(k, b, ts, vals)
        })
    }
    fn series(
        &self,
        m: &[model::Matcher],
        s: i64,
        e: i64,
        l: usize,
    ) -> Result<Vec<SeriesKey>, query::QueryError> {
        self.inner.series(m, s, e, l)
    }
    fn label_names(
        &self,
        m: &[model::Matcher],
        s: i64,
        e: i64,
        l: usize,
    ) -> Result<Vec<String>, query::QueryError> {
        self.inner.label_names(m, s, e, l)
    }
    fn label_values(
        &self,
        n: &str,
        m: &[model::Matcher],
        s: i64,
        e: i64,
        l: usize,
    ) -> Result<Vec<String>, query::QueryError> {
        self.inner.label_values(n, m, s, e, l)
    }
}

/// The peer benchmark's shape: 360 points 10 s apart from an hour boundary, asked at the
/// last sample + 1 s over `[1h]`: one bucket per series, no raw sample, same answer.
#[test]
fn benchmark_shape_uses_one_bucket_per_series() {
    let data: Vec<Vec<(i64, f64)>> = (0..3)
        .map(|s| {
            (0..360)
                .map(|i| (HOUR + i * 10_000, ((s * 7 + i * 13) % 1000) as f64 / 100.0))
                .collect()
        })
        .collect();
    let r = Counting {
        inner: reader(&data, HOUR),
        buckets: Default::default(),
    };
    let t = HOUR + 3_591_000;
    for f in FUNCS {
        let q = format!("sum({f}(m[1h]))");
        let raw = evaluate_instant(
            &reader(&data, 0),
            &q,
            t,
            &QueryLimits {
                use_rollups: false,
                ..QueryLimits::default()
            },
        )
        .unwrap();
        r.buckets.store(0, std::sync::atomic::Ordering::Relaxed);
        let got = evaluate_instant(&r, &q, t, &QueryLimits::default()).unwrap();
        assert_eq!(r.buckets.load(std::sync::atomic::Ordering::Relaxed), 3, "{q}");
        values_agree(&raw, &got, false).unwrap();
    }
}

/// Aggregations with their parameter: the mergeable ones fold per part; the others collect
/// the parts' series in key order (`topk` breaks ties by that order).
const AGGS: [(&str, &str); 10] = [
    ("sum", ""),
    ("avg", ""),
    ("count", ""),
    ("min", ""),
    ("max", ""),
    ("group", ""),
    ("topk", "2, "),
    ("bottomk", "1, "),
    ("quantile", "0.5, "),
    ("stddev", ""),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Aggregations evaluated in 3 parts (merged, or collected in key order) agree with one
    /// sequential evaluation.
    #[test]
    fn parallel_aggregation_agrees_with_sequential(
        data in data_strategy(),
        agg in 0..AGGS.len(),
        inner in 0..4usize,
        by in any::<bool>(),
        at_s in 0i64..5 * HOUR / 1000,
        step in prop_oneof![Just(MIN), Just(5 * MIN)],
    ) {
        let inner = match inner {
            0 => "m".to_owned(),
            1 => "rate(m[10m])".to_owned(),
            2 => "avg_over_time(m[1h])".to_owned(),
            _ => "quantile_over_time(0.5, m[30m])".to_owned(),
        };
        let (op, param) = AGGS[agg];
        let q = if by {
            format!("{op} by (i) ({param}{inner})")
        } else {
            format!("{op}({param}{inner})")
        };
        let seq = QueryLimits { parallelism: 1, ..QueryLimits::default() };
        let par = QueryLimits { parallelism: 3, ..QueryLimits::default() };
        let r = reader(&data, HOUR);
        let exact = !matches!(op, "sum" | "avg");
        let t = at_s * 1000;
        let want = evaluate_instant(&r, &q, t, &seq);
        let got = evaluate_instant(&r, &q, t, &par);
        match (&want, &got) {
            (Ok(w), Ok(g)) => {
                if let Err(e) = values_agree(w, g, exact) {
                    return Err(TestCaseError::fail(format!("{q} at {t}: {e}")));
                }
            }
            _ => prop_assert_eq!(want.is_ok(), got.is_ok(), "{}", q),
        }
        let steps = Steps { start: t, end: t + 2 * HOUR, step };
        let want = evaluate_range(&r, &q, steps, &seq);
        let got = evaluate_range(&r, &q, steps, &par);
        match (want, got) {
            (Ok(w), Ok(g)) => {
                prop_assert_eq!(w.len(), g.len(), "{}", q);
                for (a, b) in w.iter().zip(&g) {
                    prop_assert_eq!(&a.labels, &b.labels);
                    prop_assert_eq!(&a.ts, &b.ts, "{}", q);
                    for (x, y) in a.vals.iter().zip(&b.vals) {
                        prop_assert!(agree(*x, *y, exact), "{}: {} vs {}", q, x, y);
                    }
                }
            }
            (w, g) => prop_assert_eq!(w.is_ok(), g.is_ok(), "{}", q),
        }
    }
}

/// Limits hold across parts: series are counted over all parts.
#[test]
fn parallel_parts_share_the_series_limit() {
    let data: Vec<Vec<(i64, f64)>> = (0..3).map(|_| vec![(0, 1.0)]).collect();
    let r = reader(&data, 0);
    for parallelism in [1, 2, 3] {
        let limits = QueryLimits {
            parallelism,
            max_series: 2,
            ..QueryLimits::default()
        };
        let err = evaluate_instant(&r, "sum(m)", 1000, &limits).unwrap_err();
        assert_eq!(
            err,
            query::QueryError::TooManySeries(2),
            "parallelism {parallelism}"
        );
        let err = evaluate_instant(&r, "sum(count_over_time(m[1m]))", 1000, &limits).unwrap_err();
        assert_eq!(
            err,
            query::QueryError::TooManySeries(2),
            "parallelism {parallelism}"
        );
        let err = evaluate_instant(&r, "topk(1, count_over_time(m[1m]))", 1000, &limits).unwrap_err();
        assert_eq!(
            err,
            query::QueryError::TooManySeries(2),
            "parallelism {parallelism}"
        );
    }
}
