//! Measures the benchmark harness' aggregate queries (`bench.py`: `sum(avg_over_time(
//! {__name__=~"host.+"}[1h]))` and friends) and the one-series range query over an
//! in-memory reader holding 10,000 series × 360 points (10 s apart), to show the evaluator
//! itself is not the bottleneck: it streams series by series and never materialises the
//! samples. Storage decoding is not included; the server's end-to-end figure adds it.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-query cargo bench -p query --bench aggregate`
//! (about 10 s; prints the median of 7 runs per query in thread CPU time, and samples/s).

use std::time::Instant;

use model::SeriesKey;
use query::eval::Steps;
use query::{MemReader, QueryLimits, evaluate_instant, evaluate_range};

const SERIES: usize = 10_000;
const POINTS: usize = 360;
const STEP_MS: i64 = 10_000;
const START_MS: i64 = 1_700_000_000_000;

fn main() {
    let mut reader = MemReader::new();
    let ts: Vec<i64> = (0..POINTS as i64).map(|i| START_MS + i * STEP_MS).collect();
    for s in 0..SERIES {
        // host<h>.cpu<c>.<metric>: 1000 hosts × 10 names, as the peers' data set
        let name = format!(
            "host{}.cpu{}.{}",
            s / 10,
            s % 5,
            if s % 10 < 5 { "x" } else { "count" }
        );
        let key = SeriesKey::from_name(name).unwrap();
        let vals: Vec<f64> = (0..POINTS).map(|i| ((s * 31 + i * 7) % 100) as f64).collect();
        reader.add_sorted(&key, &ts, &vals);
    }
    let end = START_MS + (POINTS as i64 - 1) * STEP_MS;
    // the queries aggregate over several metric names: Prometheus 3's lazy name drop; and
    // the evaluator is what this measures: raw samples, not the reader's rollup buckets, on
    // this thread alone (its CPU time is the figure)
    let limits = QueryLimits {
        max_samples: 200_000_000,
        delayed_name_removal: true,
        use_rollups: false,
        parallelism: 1,
        ..QueryLimits::default()
    };
    let total = (SERIES * POINTS) as f64;
    let queries = [
        (r#"sum(count_over_time({__name__=~"host.+"}[2h]))"#, total),
        (r#"sum(avg_over_time({__name__=~"host.+"}[1h]))"#, total),
        (
            r#"sum(sum_over_time({__name__=~"host.+\\.count"}[6h]))"#,
            total / 2.0,
        ),
        (
            r#"sum(rate({__name__=~"host.+\\.count"}[5m]))"#,
            (SERIES * 31) as f64 / 2.0,
        ),
        (r#"topk(10, {__name__=~"host.+"})"#, SERIES as f64),
    ];
    for (q, samples) in queries {
        let median = median_ms(|| {
            let v = evaluate_instant(&reader, q, end + 1000, &limits).unwrap();
            std::hint::black_box(v);
        });
        println!(
            "{q}: median {median:.2} ms, {:.0} M samples/s",
            samples / median / 1000.0
        );
    }
    let one = r#"{__name__="host1.cpu0.x"}"#;
    let median = median_ms(|| {
        let m = evaluate_range(
            &reader,
            one,
            Steps {
                start: START_MS,
                end,
                step: STEP_MS,
            },
            &limits,
        )
        .unwrap();
        assert_eq!(m.first().map(|s| s.vals.len()), Some(POINTS));
        std::hint::black_box(m);
    });
    println!("query_range {one} step=10s: median {median:.3} ms");
    let range = Steps {
        start: START_MS,
        end,
        step: STEP_MS,
    };
    for q in [
        r#"sum(rate({__name__=~"host.+\\.count"}[5m]))"#,
        r#"sum(avg_over_time({__name__=~"host.+"}[10m]))"#,
        r#"{__name__=~"host1.+"} > 50"#,
    ] {
        let median = median_ms(|| {
            std::hint::black_box(evaluate_range(&reader, q, range, &limits).unwrap());
        });
        println!("query_range {q} over 1h step=10s (360 steps): median {median:.2} ms");
    }
}

/// Median of 7 runs, in ms of this thread's CPU time (from `/proc/thread-self/schedstat`;
/// the build machine is shared, so wall time mostly measures the neighbours). CPU time is
/// only updated at scheduler ticks, so runs shorter than a tick fall back to wall time.
fn median_ms(mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let (t, c) = (Instant::now(), cpu_ns());
            f();
            let wall = t.elapsed().as_secs_f64() * 1000.0;
            match (c, cpu_ns()) {
                (Some(a), Some(b)) if b > a && wall > 5.0 => (b - a) as f64 / 1e6,
                _ => wall,
            }
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[3]
}

fn cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
