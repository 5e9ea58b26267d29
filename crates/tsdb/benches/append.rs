//! In-process append and read throughput on the peer data set's shape
//! (`../shared/bench/peers/gen.py`): series `host{h}.cpu{c}.{metric}`, per cpu 5 random-walk
//! gauges with 2 decimals, 3 integer counters and 2 constants, 360 points 10 s apart,
//! appended time-major (one batch = every series at one timestamp), durability every 100 ms.
//!
//! What it proves: the issue asks for ≥ 10 M points/s appended on one core and reports
//! points/s decoded when reading every series for 1 h. It also prints peak RSS (VmHWM).
//!
//! Run: `CARGO_TARGET_DIR=... cargo bench -p tsdb --bench append`
//! Full size (100,000 series × 360 = 36 M points; ~1 min, several hundred MiB):
//! `TSDB_BENCH_SERIES=100000 cargo bench -p tsdb --bench append`

use std::sync::Arc;

use divan::counter::ItemsCount;
use model::{ManualClock, MatchOp, Matcher, Point, SeriesKey, Timestamp};
use tsdb::{Db, Options};

const POINTS: usize = 360;
const STEP_MS: i64 = 10_000;
const START: i64 = 1_763_524_800_000;

fn series_count() -> usize {
    std::env::var("TSDB_BENCH_SERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

const METRICS: [&str; 10] = [
    "user",
    "system",
    "iowait",
    "idle",
    "steal",
    "interrupts",
    "ctxt",
    "forks",
    "cores",
    "mhz",
];

fn names(n: usize) -> Vec<SeriesKey> {
    (0..n)
        .map(|i| {
            let (h, rest) = (i / 80, i % 80);
            let (c, m) = (rest / 10, rest % 10);
            SeriesKey::from_name(format!("host{h}.cpu{c}.{}", METRICS[m])).unwrap()
        })
        .collect()
}

/// Time-major batches of the data set, generated in-process.
fn batches(ids: &[model::SeriesId]) -> Vec<Vec<Point>> {
    let mut seed = 42u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut state: Vec<f64> = ids.iter().map(|_| (rnd() % 10_000) as f64 / 100.0).collect();
    (0..POINTS)
        .map(|p| {
            ids.iter()
                .enumerate()
                .map(|(i, id)| {
                    let v = match i % 10 {
                        0..5 => {
                            let step = (rnd() % 201) as f64 - 100.0;
                            state[i] = ((state[i] * 100.0 + step).round()) / 100.0;
                            state[i]
                        }
                        5..8 => {
                            state[i] += (rnd() % 1000) as f64;
                            state[i]
                        }
                        _ => 4.0,
                    };
                    Point {
                        series: *id,
                        ts: START + p as i64 * STEP_MS,
                        value: v,
                    }
                })
                .collect()
        })
        .collect()
}

fn open() -> (tempfile::TempDir, Arc<Db>) {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(START + POINTS as i64 * STEP_MS)));
    let opts = Options {
        maintenance_interval: None,
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts, clock).unwrap();
    (dir, db)
}

fn loaded() -> (tempfile::TempDir, Arc<Db>, Vec<Vec<Point>>) {
    let (dir, db) = open();
    let ids: Vec<_> = names(series_count())
        .iter()
        .map(|k| db.resolve(k).unwrap())
        .collect();
    let b = batches(&ids);
    (dir, db, b)
}

#[divan::bench(sample_count = 3, sample_size = 1)]
fn append_data_set(bencher: divan::Bencher) {
    bencher
        .counter(ItemsCount::new(series_count() * POINTS))
        .with_inputs(loaded)
        .bench_local_values(|(dir, db, batches)| {
            for b in &batches {
                db.append(b).unwrap();
            }
            (dir, db)
        });
}

#[divan::bench(sample_count = 3, sample_size = 1)]
fn select_all_series_last_hour(bencher: divan::Bencher) {
    let (_dir, db, batches) = loaded();
    for b in &batches {
        db.append(b).unwrap();
    }
    let end = START + POINTS as i64 * STEP_MS;
    let all = [Matcher::new(MatchOp::Regex, "__name__", "host.+").unwrap()];
    let points = series_count() * 360; // 1 h at 10 s = 360 points per series
    bencher.counter(ItemsCount::new(points)).bench_local(|| {
        let mut n = 0;
        for s in db.select(&all, end - 3_600_000, end).unwrap() {
            n += s.unwrap().values.len();
        }
        n
    });
}

fn main() {
    divan::main();
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines().filter(|l| l.starts_with("VmHWM")) {
            println!("peak RSS {line}");
        }
    }
}
