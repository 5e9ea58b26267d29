//! The evaluator never panics: random expressions assembled from PromQL fragments (valid
//! or not) are evaluated at random times against a small data set, and must return either
//! a value or an error.

use model::{Label, SeriesKey};
use proptest::prelude::*;
use query::eval::QueryValue;
use query::eval::Steps;
use query::{MemReader, QueryLimits, evaluate_instant, evaluate_range};

const FRAGMENTS: &[&str] = &[
    "m",
    "n{a=\"1\"}",
    "{\"x.y\"}",
    "m[1m]",
    "m[5m:10s]",
    "m offset 1m",
    "m @ 100",
    "m offset -100000000y",
    "rate(",
    "sum(",
    "avg by (a) (",
    "topk(2, ",
    "count_values(\"v\", ",
    "quantile(0.5, ",
    "histogram_quantile(0.9, ",
    "label_replace(",
    "\"a\"",
    "\"(.*)\"",
    "absent(",
    "predict_linear(",
    "deriv(",
    "irate(",
    "max_over_time(",
    ")",
    ")",
    ", ",
    " + ",
    " / ",
    " > bool ",
    " and ",
    " or ",
    " unless ",
    " * on(a) group_left ",
    " ^ ",
    "-",
    "1",
    "0",
    "NaN",
    "Inf",
    "1e308",
    "time()",
    "vector(1)",
    "scalar(",
    "[1m:]",
    "[0s:1s]",
    "[100000000y:1ms]",
];

fn reader() -> MemReader {
    let mut r = MemReader::new();
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    for i in 0..30i64 {
        let v = [i as f64, f64::NAN, stale, -1.0, f64::INFINITY][(i % 5) as usize];
        r.add(&SeriesKey::from_name("m").unwrap(), i * 10_000, i as f64);
        r.add(
            &SeriesKey::new("n", vec![Label::new("a", "1")]).unwrap(),
            i * 10_000,
            v,
        );
        r.add(
            &SeriesKey::new("n", vec![Label::new("a", "2"), Label::new("le", "0.5")]).unwrap(),
            i * 10_000,
            v,
        );
        r.add(&SeriesKey::from_name("x.y").unwrap(), i * 7_000, -v);
    }
    r
}

/// Well-formed expressions: selectors and literals combined by functions, aggregations,
/// operators and subqueries, so evaluation (not just parsing) is exercised.
fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("m".to_owned()),
        Just("n".to_owned()),
        Just("n{a=\"1\"}".to_owned()),
        Just("{\"x.y\"}".to_owned()),
        Just("m offset 1m".to_owned()),
        Just("n @ 100".to_owned()),
        Just("m offset -5m".to_owned()),
        (-3i32..4).prop_map(|v| v.to_string()),
        Just("NaN".to_owned()),
        Just("time()".to_owned()),
    ];
    leaf.prop_recursive(4, 32, 3, |inner| {
        // ranges over arbitrary expressions must be subqueries; selectors get plain ranges below
        let range = prop_oneof![
            Just("[5m:10s]"),
            Just("[2m:]"),
            Just("[1m:15s] offset 30s"),
            Just("[90s:20s] @ 100")
        ];
        prop_oneof![
            (
                prop_oneof![
                    Just("rate"),
                    Just("irate"),
                    Just("increase"),
                    Just("delta"),
                    Just("idelta"),
                    Just("deriv"),
                    Just("changes"),
                    Just("resets"),
                    Just("avg_over_time"),
                    Just("min_over_time"),
                    Just("max_over_time"),
                    Just("sum_over_time"),
                    Just("count_over_time"),
                    Just("last_over_time"),
                    Just("stddev_over_time"),
                    Just("absent_over_time"),
                    Just("present_over_time")
                ],
                inner.clone(),
                range.clone()
            )
                .prop_map(|(f, e, r)| format!("{f}(({e}){r})")),
            (
                prop_oneof![
                    Just("rate"),
                    Just("increase"),
                    Just("delta"),
                    Just("irate"),
                    Just("deriv"),
                    Just("resets"),
                    Just("avg_over_time"),
                    Just("count_over_time"),
                    Just("stdvar_over_time")
                ],
                prop_oneof![Just("m"), Just("n"), Just("{\"x.y\"}"), Just("n{a=\"1\"}")],
                prop_oneof![
                    Just("[1m]"),
                    Just("[30s]"),
                    Just("[5m] offset 1m"),
                    Just("[2m] @ 200")
                ]
            )
                .prop_map(|(f, sel, r)| format!("{f}({sel}{r})")),
            (inner.clone(), range.clone()).prop_map(|(e, r)| format!("quantile_over_time(0.3, ({e}){r})")),
            (inner.clone(), range).prop_map(|(e, r)| format!("predict_linear(({e}){r}, 60)")),
            (
                prop_oneof![
                    Just("sum"),
                    Just("avg"),
                    Just("min"),
                    Just("max"),
                    Just("count"),
                    Just("group"),
                    Just("stddev"),
                    Just("stdvar")
                ],
                prop_oneof![Just(""), Just(" by (a)"), Just(" without (le)")],
                inner.clone()
            )
                .prop_map(|(a, g, e)| format!("{a}{g} ({e})")),
            (
                prop_oneof![Just("topk"), Just("bottomk"), Just("quantile")],
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(a, k, e)| format!("{a}(scalar({k}), {e})")),
            inner.clone().prop_map(|e| format!("count_values(\"v\", {e})")),
            (
                prop_oneof![
                    Just("abs"),
                    Just("ceil"),
                    Just("ln"),
                    Just("sqrt"),
                    Just("sort_desc"),
                    Just("absent"),
                    Just("timestamp"),
                    Just("scalar"),
                    Just("vector"),
                    Just("year"),
                    Just("minute")
                ],
                inner.clone()
            )
                .prop_map(|(f, e)| format!("{f}({e})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("clamp({a}, scalar({b}), 2)")),
            inner
                .clone()
                .prop_map(|e| format!("histogram_quantile(0.9, {e})")),
            inner
                .clone()
                .prop_map(|e| format!("label_replace({e}, \"b\", \"$1\", \"a\", \"(.*)\")")),
            (
                inner.clone(),
                prop_oneof![
                    Just("+"),
                    Just("/"),
                    Just("%"),
                    Just("^"),
                    Just("> bool"),
                    Just("<"),
                    Just("and"),
                    Just("or"),
                    Just("unless"),
                    Just("* on(a) group_left"),
                    Just("- ignoring(le) group_right"),
                    Just("atan2")
                ],
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("({a}) {op} ({b})")),
            inner.prop_map(|e| format!("-({e})")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]
    #[test]
    fn well_formed_expressions_never_panic(q in expr(), t in -100_000i64..400_000, step in 1_000i64..60_000) {
        let r = reader();
        let limits = QueryLimits { max_samples: 200_000, ..QueryLimits::default() };
        let a = evaluate_instant(&r, &q, t, &limits);
        let b = evaluate_range(&r, &q, Steps { start: t, end: t + 10 * step, step }, &limits);
        // ROBUST_DEBUG=1 prints each expression and whether it evaluated, to tune the generator
        if std::env::var("ROBUST_DEBUG").is_ok() {
            println!("{} {} {q} {:?}", a.is_ok(), b.is_ok(), b.as_ref().err());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn never_panics(parts in proptest::collection::vec(0..FRAGMENTS.len(), 1..8), t in -1_000_000i64..1_000_000, step in 1i64..100_000) {
        let q: String = parts.iter().map(|i| FRAGMENTS[*i]).collect();
        let r = reader();
        let limits = QueryLimits { max_samples: 100_000, ..QueryLimits::default() };
        let _ = evaluate_instant(&r, &q, t, &limits);
        let _ = evaluate_range(&r, &q, Steps { start: t, end: t + 20 * step, step }, &limits);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    /// A range query is the instant query at every step: both paths must agree point for
    /// point (or both fail).
    #[test]
    fn range_query_equals_instant_query_per_step(q in expr(), t in 0i64..300_000, step in 5_000i64..60_000) {
        let r = reader();
        let limits = QueryLimits { max_samples: 200_000, ..QueryLimits::default() };
        let steps = Steps { start: t, end: t + 6 * step, step };
        let Ok(range) = evaluate_range(&r, &q, steps, &limits) else { return Ok(()) };
        for i in 0..steps.len() {
            let at = steps.at(i);
            let instant = evaluate_instant(&r, &q, at, &limits);
            let mut want: Vec<(String, u64)> = match instant {
                Ok(QueryValue::Vector(v)) => v.into_iter().map(|s| (s.labels.to_string(), s.v.to_bits())).collect(),
                Ok(QueryValue::Scalar { v, .. }) => vec![("{}".to_owned(), v.to_bits())],
                other => { prop_assert!(false, "{q} at {at}: instant gave {other:?}"); unreachable!() }
            };
            let mut got: Vec<(String, u64)> = range
                .iter()
                .filter_map(|s| s.ts.iter().position(|x| *x == at).map(|p| (s.labels.to_string(), s.vals[p].to_bits())))
                .collect();
            want.sort();
            got.sort();
            // NaN payloads may differ between paths; compare NaN as NaN
            let norm = |v: Vec<(String, u64)>| -> Vec<(String, u64)> {
                v.into_iter().map(|(l, b)| (l, if f64::from_bits(b).is_nan() { f64::NAN.to_bits() } else { b })).collect()
            };
            prop_assert_eq!(norm(got), norm(want), "{} at {}", q, at);
        }
    }
}
