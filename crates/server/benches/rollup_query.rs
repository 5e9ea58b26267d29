//! The peer benchmark's aggregate over the real storage engine, in process: a `tsdb::Db` in a
//! temporary directory holding `ROLLUP_BENCH_SERIES` series (default 10,000) × 360 points
//! 10 s apart from an hour boundary two days ago, sealed into a block with hour rollups, read
//! through `TsdbReader` as the server does. Times `sum(avg_over_time({__name__=~"host.+"}[1h]))`
//! at the last sample + 1 s four ways (raw or rollup reads × 1 thread or all cores) and
//! `sum(rate(...count[5m]))` (raw only: rate has no rollup) on 1 thread and all cores, with the
//! peak extra RSS of each query (`/proc/self/clear_refs` resets the high-water mark).
//!
//! Run: `CARGO_TARGET_DIR=<dir> cargo bench -p server --bench rollup_query` (about 20 s with
//! 10,000 series; `ROLLUP_BENCH_SERIES=100000` for the peer data set's size, ~10× longer).
//! Prints the median wall time of 5 runs per variant (wall, since the parallel variants use
//! several threads; on a shared machine the neighbours show).

mod common;

use std::sync::Arc;
use std::time::Instant;

use model::{Point, SeriesKey};
use query::{QueryLimits, QueryValue, evaluate_instant};
use server::adapters::TsdbReader;

const POINTS: i64 = 360;
const STEP_MS: i64 = 10_000;

fn main() {
    let series = common::env_or("ROLLUP_BENCH_SERIES", 10_000);
    let (_dir, db, start) = common::empty_db();
    let t0 = Instant::now();
    let mut ids = Vec::with_capacity(series);
    for s in 0..series {
        let name = format!(
            "host{}.cpu{}.{}",
            s / 10,
            s % 5,
            if s % 10 < 5 { "x" } else { "count" }
        );
        ids.push(db.resolve(&SeriesKey::from_name(name).unwrap()).unwrap());
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut level: Vec<i64> = vec![5000; series];
    for i in 0..POINTS {
        let batch: Vec<Point> = ids
            .iter()
            .enumerate()
            .map(|(s, id)| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let counter = s % 10 >= 5;
                let step = (rng % 201) as i64 - 100;
                level[s] = if counter {
                    level[s] + step.abs()
                } else {
                    level[s] + step
                };
                Point {
                    series: *id,
                    ts: start + i * STEP_MS,
                    value: level[s] as f64 / 100.0,
                }
            })
            .collect();
        db.append(&batch).unwrap();
    }
    db.compact_now().unwrap();
    println!(
        "{series} series x {POINTS} points loaded and sealed in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let reader = TsdbReader::new(Arc::clone(&db));
    let t = start + (POINTS - 1) * STEP_MS + 1000;
    let agg = r#"sum(avg_over_time({__name__=~"host.+"}[1h]))"#;
    let rate = r#"sum(rate({__name__=~"host.+\\.count"}[5m]))"#;
    // the queries aggregate over many metric names: Prometheus 3's lazy name drop, as the
    // peer benchmark's Roaster runs (with 2.x's eager one, `rate` leaves the series only their
    // empty label sets, which collide)
    let limits = |use_rollups, parallelism| QueryLimits {
        max_samples: 500_000_000,
        use_rollups,
        parallelism,
        delayed_name_removal: true,
        ..QueryLimits::default()
    };
    let mut reference = None;
    for (q, rollups, threads, label) in [
        (agg, false, 1, "raw, 1 thread"),
        (agg, false, 0, "raw, all cores"),
        (agg, true, 1, "rollups, 1 thread"),
        (agg, true, 0, "rollups, all cores"),
        (rate, false, 1, "raw, 1 thread"),
        (rate, false, 0, "raw, all cores"),
    ] {
        let l = limits(rollups, threads);
        let mut value = f64::NAN;
        let (median, rss) = median_ms(|| {
            let v = evaluate_instant(&reader, q, t, &l).unwrap();
            if let QueryValue::Vector(s) = &v {
                value = s.first().map_or(f64::NAN, |s| s.v);
            }
        });
        if q == agg {
            let r = *reference.get_or_insert(value);
            assert!((r - value).abs() <= 1e-9 * r.abs(), "{label}: {value} vs {r}");
        }
        println!(
            "{q} [{label}, {} threads]: median {median:.1} ms, {:.0} M points/s, peak extra RSS {:.1} MiB, value {value}",
            l.threads(),
            (series as f64 * POINTS as f64 / if q == rate { 2.0 } else { 1.0 }) / median / 1000.0,
            rss as f64 / (1 << 20) as f64,
        );
    }
    db.close().unwrap();
}

/// Median wall time of 5 runs in ms, and the largest peak RSS growth over the run before it.
fn median_ms(mut f: impl FnMut()) -> (f64, u64) {
    let mut peak = 0;
    let mut times: Vec<f64> = (0..5)
        .map(|_| {
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            let before = status_kib("VmRSS:");
            let t = Instant::now();
            f();
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            peak = peak.max(status_kib("VmHWM:").saturating_sub(before) * 1024);
            ms
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    (times[2], peak)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
