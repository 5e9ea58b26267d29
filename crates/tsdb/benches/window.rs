//! In-process figure for `rate(x[5m])` at the end of sealed data (the issue-4 query's read
//! path): `Db::select` of the last 5 minutes of every counter series, after `compact_now`
//! sealed a data set shaped like `shared/bench/peers/gen.py` (per cpu 5 random-walk gauges
//! with 2 decimals, 3 integer counters +U[0, 5000) per step, 2 constants; 360 points 10 s
//! apart, one 2-hour raw block).
//!
//! Prints ms per 10k selected series, decoded window points/s, and bytes/point of the raw
//! blocks; then the same for a window in the middle of the hour and for the whole hour
//! (so a change cannot only help windows at a block's end).
//!
//! Run: `CARGO_TARGET_DIR=... cargo bench -p tsdb --bench window`
//! (10,000 series; `WINDOW_BENCH_SERIES` for another multiple of 10, `WINDOW_BENCH_REPS`
//! for the number of timed repetitions, the median is printed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use model::{ManualClock, MatchOp, Matcher, Point, SeriesKey, Timestamp};
use tsdb::{Db, Options};

const POINTS: usize = 360;
const STEP_MS: i64 = 10_000;
const START: i64 = 1_763_524_800_000;
const METRICS: [&str; 10] = [
    "usage_user",
    "usage_system",
    "usage_iowait",
    "load",
    "temp",
    "interrupts",
    "ctx_switches",
    "bytes_in",
    "mhz_max",
    "online",
];

#[path = "../tests/support/splitmix.rs"]
mod splitmix;
use splitmix::Gen;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Median wall time of `reps` selects of `matchers` over `[start, end]`, and the points and
/// series one select returns.
fn time_select(db: &Db, matchers: &[Matcher], start: i64, end: i64, reps: usize) -> (Duration, usize, usize) {
    let mut times = Vec::new();
    let (mut points, mut series) = (0, 0);
    for _ in 0..reps {
        let t = Instant::now();
        (points, series) = (0, 0);
        for s in db.select(matchers, start, end).unwrap() {
            points += s.unwrap().values.len();
            series += 1;
        }
        times.push(t.elapsed());
    }
    times.sort();
    (times[times.len() / 2], points, series)
}

fn main() {
    let n = env("WINDOW_BENCH_SERIES", 10_000) / 10 * 10;
    let reps = env("WINDOW_BENCH_REPS", 9).max(1);
    let dir = tempfile::tempdir().unwrap();
    let end = START + (POINTS as i64 - 1) * STEP_MS;
    let clock = Arc::new(ManualClock::new(Timestamp(end + STEP_MS)));
    let opts = Options {
        maintenance_interval: None,
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts, clock).unwrap();
    let ids: Vec<_> = (0..n)
        .map(|i| {
            let (h, c, m) = (i / 100, i / 10 % 10, i % 10);
            db.resolve(&SeriesKey::from_name(format!("host{h}.cpu{c}.{}", METRICS[m])).unwrap())
                .unwrap()
        })
        .collect();
    let mut g = Gen(42);
    let mut state: Vec<f64> = (0..n)
        .map(|i| match i % 10 {
            0..5 => (g.uniform() * 10_000.0).round() / 100.0,
            5..8 => (g.next() % 1_000_000_000) as f64,
            8 => 3400.0,
            _ => 1.0,
        })
        .collect();
    let mut batch = Vec::with_capacity(n);
    for p in 0..POINTS {
        batch.clear();
        for (i, id) in ids.iter().enumerate() {
            if p > 0 {
                match i % 10 {
                    0..5 => state[i] = (state[i] + g.gauss(1.5)).clamp(0.0, 100.0),
                    5..8 => state[i] += (g.next() % 5000) as f64,
                    _ => {}
                }
            }
            let v = state[i];
            batch.push(Point {
                series: *id,
                ts: START + p as i64 * STEP_MS,
                value: if i % 10 < 5 {
                    format!("{v:.2}").parse().unwrap()
                } else {
                    v
                },
            });
        }
        db.append(&batch).unwrap();
    }
    db.compact_now().unwrap();
    let raw: u64 = std::fs::read_dir(dir.path().join("blocks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".raw"))
        .map(|p| std::fs::metadata(p.join("data")).unwrap().len())
        .sum();
    let total = (n * POINTS) as f64;
    println!(
        "{n} series x {POINTS} points sealed: raw blocks {:.4} B/pt, all blocks {:.4} B/pt",
        raw as f64 / total,
        db.stats().block_bytes as f64 / total
    );
    let counters = [Matcher::new(
        MatchOp::Regex,
        "__name__",
        ".*[.](interrupts|ctx_switches|bytes_in)",
    )
    .unwrap()];
    let windows = [
        ("last 5 min (rate[5m] at the end)", end - 300_000, end),
        ("5 min in the middle", START + 1_800_000, START + 2_100_000),
        ("whole hour", START, end),
    ];
    for (name, a, b) in windows {
        let (d, points, series) = time_select(&db, &counters, a, b, reps);
        println!(
            "select counters, {name}: {series} series, {points} points, {:.2} ms per 10k series, {:.2} M points/s (median of {reps})",
            d.as_secs_f64() * 1e3 * 10_000.0 / series.max(1) as f64,
            points as f64 / d.as_secs_f64() / 1e6
        );
    }
}
