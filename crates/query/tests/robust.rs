//! The evaluator never panics: random expressions assembled from PromQL fragments (valid
//! or not) are evaluated at random times against a small data set, and must return either
//! a value or an error.

use model::{Label, SeriesKey};
use proptest::prelude::*;
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
