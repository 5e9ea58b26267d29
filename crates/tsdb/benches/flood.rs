//! In-process robot flood: what a one-series read waits for while appends and seals run.
//!
//! Writer threads (at nice 10, like the server's robot threads) append time-major batches
//! over `FLOOD_SERIES` series as fast as they can, the background maintenance thread seals
//! every completed window (block duration `FLOOD_BLOCK_MINUTES` of data time, default 5, so
//! a seal starts every few seconds of wall time), optional busy threads at nice 0 stand in for the load generators
//! competing for the cores, and one reader thread (nice 0, like the human plane) selects one
//! random series over the last 5 minutes of data every `FLOOD_READ_INTERVAL_MS`. Prints the
//! reader's latency percentiles, the points appended per second and the engine's own
//! storage-lock wait histograms, as one JSON line.
//!
//! Run (bounded by `FLOOD_SECS`, default 10):
//! `CARGO_TARGET_DIR=... cargo bench -p tsdb --bench flood`
//! Knobs: `FLOOD_SERIES` (100000), `FLOOD_SECS` (10), `FLOOD_WRITERS` (2), `FLOOD_BATCH`
//! (16384), `FLOOD_HOGS` (1), `FLOOD_READ_INTERVAL_MS` (5), `FLOOD_BLOCK_MINUTES` (5);
//! `FLOOD_LOCK_WAITS=1` also prints the lock-wait histograms' sums and counts (and the
//! buckets of the head shard read lock).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use model::{ManualClock, MatchOp, Matcher, Point, SeriesKey, Timestamp};
use tsdb::{Db, Options};

const START: i64 = 1_763_524_800_000;
const STEP_MS: i64 = 10_000;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn nice(n: i32) {
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), n);
}

fn name(i: usize) -> String {
    format!("flood_series_{i}")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let series = env("FLOOD_SERIES", 100_000) as usize;
    let secs = env("FLOOD_SECS", 10);
    let writers = env("FLOOD_WRITERS", 2) as usize;
    let batch = env("FLOOD_BATCH", 16_384).max(1) as usize;
    let hogs = env("FLOOD_HOGS", 1);
    let read_every = Duration::from_millis(env("FLOOD_READ_INTERVAL_MS", 5));

    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        block_duration_ms: env("FLOOD_BLOCK_MINUTES", 5).max(1) as i64 * 60 * 1000,
        maintenance_interval: Some(Duration::from_millis(100)),
        ..Options::default()
    };
    let clock = Arc::new(ManualClock::new(Timestamp(START)));
    let db = Db::open(dir.path(), opts, clock).unwrap();
    let ids: Vec<_> = (0..series)
        .map(|i| db.resolve(&SeriesKey::from_name(name(i)).unwrap()).unwrap())
        .collect();
    let ids = Arc::new(ids);

    let stop = Arc::new(AtomicBool::new(false));
    let newest = Arc::new(AtomicI64::new(START));
    let appended = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for w in 0..writers {
        let (db, ids, stop, newest, appended) = (
            Arc::clone(&db),
            Arc::clone(&ids),
            Arc::clone(&stop),
            Arc::clone(&newest),
            Arc::clone(&appended),
        );
        handles.push(std::thread::spawn(move || {
            nice(10);
            // each writer owns a disjoint slice of the series, like one connection per writer
            let mine: Vec<_> = ids.iter().skip(w).step_by(writers).copied().collect();
            let mut pts = Vec::with_capacity(batch);
            let mut round = 0i64;
            let mut x = 0.0f64;
            while !stop.load(Ordering::Relaxed) {
                let ts = START + round * STEP_MS;
                for part in mine.chunks(batch) {
                    pts.clear();
                    for id in part {
                        x += 1.25;
                        pts.push(Point {
                            series: *id,
                            ts,
                            value: x,
                        });
                    }
                    db.append(&pts).unwrap();
                    appended.fetch_add(pts.len() as u64, Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                newest.fetch_max(ts, Ordering::Relaxed);
                round += 1;
            }
        }));
    }
    for _ in 0..hogs {
        let stop = Arc::clone(&stop);
        handles.push(std::thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..10_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
            }
        }));
    }

    let reader = {
        let (db, stop, newest) = (Arc::clone(&db), Arc::clone(&stop), Arc::clone(&newest));
        std::thread::spawn(move || {
            let mut lat = Vec::new();
            let mut points = 0usize;
            let mut rng = 0x9E37_79B9_7F4A_7C15u64;
            while !stop.load(Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let i = (rng % series as u64) as usize;
                let m = [Matcher::new(MatchOp::Equal, "__name__", name(i)).unwrap()];
                let end = newest.load(Ordering::Relaxed);
                let t = Instant::now();
                for s in db.select(&m, end - 5 * 60 * 1000, end).unwrap() {
                    points += s.unwrap().timestamps.len();
                }
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                std::thread::sleep(read_every);
            }
            (lat, points)
        })
    };

    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let (mut lat, read_points) = reader.join().unwrap();
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = t0.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let mut expo = model::telemetry::Exposition::new();
    db.render_metrics(&mut expo);
    let metrics = expo.finish();
    let seals = metrics
        .lines()
        .find(|l| l.starts_with("roaster_tsdb_seals_total "))
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("0")
        .to_owned();
    println!(
        "{{\"series\":{series},\"writers\":{writers},\"batch\":{batch},\"hogs\":{hogs},\"secs\":{elapsed:.1},\
         \"appended_pts_per_s\":{:.0},\"seals\":{seals},\"reads\":{},\"read_points\":{read_points},\
         \"read_ms\":{{\"p50\":{:.3},\"p90\":{:.3},\"p99\":{:.3},\"max\":{:.3}}}}}",
        appended.load(Ordering::Relaxed) as f64 / elapsed,
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0),
    );
    if std::env::var_os("FLOOD_LOCK_WAITS").is_some() {
        for l in metrics.lines().filter(|l| {
            l.starts_with("roaster_storage_lock_wait_seconds")
                && (!l.contains("_bucket") || l.contains("lock=\"head\",op=\"read\""))
        }) {
            println!("{l}");
        }
    }
    db.close().unwrap();
}
