//! The peer benchmark's one-series range query (`query_range` of one series over its full hour,
//! step 10 s: 361 steps), in process, split into the parts the human plane's handler spends its
//! time on. A `tsdb::Db` in a temporary directory holds `ONE_SERIES_BENCH_SERIES` series
//! (default 10,000) × 360 points 10 s apart in both of the peer data set's shapes (dotted
//! Graphite names, and `usage_user{host,cpu}`-style labels), sealed into a block as the
//! server's compaction leaves them. Each line is the median of 9 batches of 2,000 calls, in
//! microseconds per call:
//!
//! - `api`: `query::api::query_range` over `TsdbReader`, as the handler calls it: parameters,
//!   parse, index lookup, read and decode, evaluation, and the JSON body;
//! - `evaluate`: `evaluate_range` alone (the same less the parameters and the JSON);
//! - `parse-only`: `evaluate_range` of the literal `1` (parse and step loop, no storage).
//!
//! What the handler adds beyond `api` (routing, auth, the response) is small; the HTTP round
//! trip is in `bench/scenarios/query_peers.py`.
//!
//! Run: `CARGO_TARGET_DIR=<dir> cargo bench -p server --bench one_series` (about 15 s).

mod common;

use std::sync::Arc;
use std::time::Instant;

use model::{Label, Point, SeriesKey};
use query::QueryLimits;
use query::eval::Steps;
use server::adapters::TsdbReader;

const POINTS: i64 = 360;
const STEP_MS: i64 = 10_000;

fn main() {
    let series = common::env_or("ONE_SERIES_BENCH_SERIES", 10_000);
    let (_dir, db, start) = common::empty_db();
    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(series * 2);
    for s in 0..series {
        // host<h>.cpu<c>.<metric>: 10 metrics per host and cpu, as the peers' data set (the
        // one queried and nine others)
        let (host, cpu) = (s / 50, (s / 10) % 5);
        let metric = match s % 10 {
            0 => "usage_user".to_owned(),
            m => format!("metric{m}"),
        };
        ids.push(
            db.resolve(&SeriesKey::from_name(format!("host{host}.cpu{cpu}.{metric}")).unwrap())
                .unwrap(),
        );
        let labelled = SeriesKey::new(
            metric.as_str(),
            vec![
                Label::new("cpu", format!("cpu{cpu}")),
                Label::new("host", format!("host{host}")),
            ],
        )
        .unwrap();
        ids.push(db.resolve(&labelled).unwrap());
    }
    // gauges as the data set's: a random walk in [0, 100] with two decimals (`63.94`)
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut level: Vec<i64> = vec![5_000; ids.len()];
    for i in 0..POINTS {
        let batch: Vec<Point> = ids
            .iter()
            .zip(level.iter_mut())
            .map(|(id, level)| {
                // a step of about N(0, 1.5) (the data set's): four uniforms in ±1.30
                let mut step = 0;
                for _ in 0..4 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    step += (rng % 261) as i64 - 130;
                }
                *level = (*level + step).clamp(0, 10_000);
                Point {
                    series: *id,
                    ts: start + i * STEP_MS,
                    value: *level as f64 / 100.0,
                }
            })
            .collect();
        db.append(&batch).unwrap();
    }
    db.compact_now().unwrap();
    println!(
        "{} series x {POINTS} points loaded and sealed in {:.1} s",
        ids.len(),
        t0.elapsed().as_secs_f64()
    );
    let reader = TsdbReader::new(Arc::clone(&db));
    let limits = QueryLimits::default();
    let end = start + (POINTS - 1) * STEP_MS;
    let steps = Steps {
        start,
        end,
        step: STEP_MS,
    };
    for q in [
        r#"{__name__="host0.cpu0.usage_user"}"#,
        r#"usage_user{host="host0",cpu="cpu0"}"#,
    ] {
        let params: Vec<(String, String)> = vec![
            ("start".into(), (start / 1000).to_string()),
            ("end".into(), (end / 1000).to_string()),
            ("step".into(), "10".into()),
            ("query".into(), q.into()),
        ];
        let mut len = 0;
        let api = median_us(|| {
            let r = query::api::query_range(&reader, &params, &limits);
            assert_eq!(r.status, 200, "{}", r.body);
            len = r.body.len();
        });
        let evaluate = median_us(|| {
            let m = query::evaluate_range(&reader, q, steps, &limits).unwrap();
            assert_eq!(m.first().map(|s| s.vals.len()), Some(POINTS as usize));
        });
        println!("{q}: api {api:.2} us ({len}-byte body), evaluate {evaluate:.2} us");
    }
    let parse_only = median_us(|| {
        query::evaluate_range(&reader, "1", steps, &limits).unwrap();
    });
    println!("parse-only (`1`): {parse_only:.2} us");
    db.close().unwrap();
}

/// Median over 9 batches of 2,000 calls, in µs per call (after one batch to warm up).
fn median_us(mut f: impl FnMut()) -> f64 {
    const CALLS: u32 = 2_000;
    let mut batch = || {
        let t = Instant::now();
        for _ in 0..CALLS {
            f();
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS)
    };
    batch();
    let mut times: Vec<f64> = (0..9).map(|_| batch()).collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[4]
}
