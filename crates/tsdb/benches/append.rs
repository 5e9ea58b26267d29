//! In-process append and read throughput on the peer data set's shape
//! (`../shared/bench/peers/gen.py`): series `host{h}.cpu{c}.{metric}`, per cpu 5 random-walk
//! gauges with 2 decimals, 3 integer counters and 2 constants, 360 points 10 s apart,
//! appended time-major (one batch = every series at one timestamp), durability every 100 ms.
//!
//! What it proves: the issue asks for ≥ 10 M points/s appended on one core and reports
//! points/s decoded when reading every series for 1 h. It also prints peak RSS (VmHWM).
//!
//! Run: `CARGO_TARGET_DIR=... cargo bench -p tsdb --bench append`
//! Figures at full size, without divan (batches generated lazily so they do not inflate
//! RSS; prints append points/s, RSS, select and recovery times, bytes/point after
//! `compact_now`): `TSDB_BENCH_FIGURES=1 TSDB_BENCH_SERIES=100000 cargo bench -p tsdb --bench append`

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

/// Generates the time-major batches of the data set, one at a time.
struct Gen {
    seed: u64,
    state: Vec<f64>,
}

impl Gen {
    fn new(n: usize) -> Gen {
        let mut g = Gen {
            seed: 42,
            state: Vec::new(),
        };
        g.state = (0..n).map(|_| (g.rnd() % 10_000) as f64 / 100.0).collect();
        g
    }

    fn rnd(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    /// Fills `out` with batch `p` (every series at the p-th timestamp).
    fn batch(&mut self, ids: &[model::SeriesId], p: usize, out: &mut Vec<Point>) {
        out.clear();
        for (i, id) in ids.iter().enumerate() {
            let v = match i % 10 {
                0..5 => {
                    let step = (self.rnd() % 201) as f64 - 100.0;
                    self.state[i] = ((self.state[i] * 100.0 + step).round()) / 100.0;
                    self.state[i]
                }
                5..8 => {
                    self.state[i] += (self.rnd() % 1000) as f64;
                    self.state[i]
                }
                _ => 4.0,
            };
            out.push(Point {
                series: *id,
                ts: START + p as i64 * STEP_MS,
                value: v,
            });
        }
    }
}

/// All batches of the data set (divan runs; the figures mode generates lazily).
fn batches(ids: &[model::SeriesId]) -> Vec<Vec<Point>> {
    let mut g = Gen::new(ids.len());
    (0..POINTS)
        .map(|p| {
            let mut b = Vec::new();
            g.batch(ids, p, &mut b);
            b
        })
        .collect()
}

fn proc_status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU time of the calling thread (user + system), from `/proc/thread-self/stat`, in
/// clock ticks of 10 ms: on a shared machine wall time measures the neighbours, CPU time
/// measures us.
fn thread_cpu() -> std::time::Duration {
    cpu_of("/proc/thread-self/stat")
}

/// CPU time of the whole process (every thread, the WAL committer included).
fn process_cpu() -> std::time::Duration {
    cpu_of("/proc/self/stat")
}

fn cpu_of(path: &str) -> std::time::Duration {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // fields after the parenthesised command name; utime and stime are fields 14 and 15
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // `rest` starts at field 3 (state): utime (14) and stime (15) are at 11 and 12
    let ticks = field(11) + field(12);
    std::time::Duration::from_millis(ticks * 10)
}

/// The figures at `TSDB_BENCH_SERIES` scale, printed one per line.
fn figures() {
    use std::time::{Duration, Instant};
    let n = series_count();
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(START + POINTS as i64 * STEP_MS)));
    let opts = || Options {
        maintenance_interval: None,
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts(), clock.clone()).unwrap();
    let ids: Vec<_> = names(n).iter().map(|k| db.resolve(k).unwrap()).collect();
    // the generator alone, to subtract its CPU time
    let cpu0 = thread_cpu();
    let mut g = Gen::new(n);
    let mut batch = Vec::with_capacity(n);
    for p in 0..POINTS {
        g.batch(&ids, p, &mut batch);
    }
    let gen_cpu = thread_cpu() - cpu0;
    let mut g = Gen::new(n);
    let mut in_append = Duration::ZERO;
    let cpu0 = thread_cpu();
    let pcpu0 = process_cpu();
    let mut last_seq = 0;
    for p in 0..POINTS {
        g.batch(&ids, p, &mut batch);
        let t = Instant::now();
        last_seq = db.append(&batch).unwrap().wal_seq;
        in_append += t.elapsed();
    }
    let append_cpu = (thread_cpu() - cpu0).saturating_sub(gen_cpu);
    db.wait_durable(last_seq).unwrap();
    let process_cpu = (process_cpu() - pcpu0).saturating_sub(gen_cpu);
    let total = (n * POINTS) as f64;
    println!("series {n}, points {total}");
    println!(
        "append: {:.2} M points/s per CPU second of the appending thread ({append_cpu:?}); {:.2} M points/s wall time inside append",
        total / append_cpu.as_secs_f64() / 1e6,
        total / in_append.as_secs_f64() / 1e6
    );
    println!(
        "append: {:.2} M points/s per CPU second of the whole process, WAL committer included ({process_cpu:?})",
        total / process_cpu.as_secs_f64() / 1e6
    );
    println!(
        "after append: RSS {}, peak {}, head bytes {}",
        proc_status("VmRSS"),
        proc_status("VmHWM"),
        db.stats().head_bytes
    );
    let end = START + POINTS as i64 * STEP_MS;
    let all = [Matcher::new(MatchOp::Regex, "__name__", "host.+").unwrap()];
    let t = Instant::now();
    let got: usize = db
        .select(&all, end - 3_600_000, end)
        .unwrap()
        .map(|s| s.unwrap().values.len())
        .sum();
    let d = t.elapsed();
    println!(
        "select all series last 1 h (head): {got} points in {d:?} = {:.2} M points/s",
        got as f64 / d.as_secs_f64() / 1e6
    );
    db.close().unwrap();
    drop(db);
    let t = Instant::now();
    let db = Db::open(dir.path(), opts(), clock.clone()).unwrap();
    println!("recovery with {total} points in the WAL: {:?}", t.elapsed());
    let t = Instant::now();
    let r = db.compact_now().unwrap();
    println!(
        "compact_now: {:?}, {} points sealed, {} blocks",
        t.elapsed(),
        r.points_sealed,
        r.blocks_written
    );
    let st = db.stats();
    let bytes_of = |suffix: &str| -> u64 {
        std::fs::read_dir(dir.path().join("blocks"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .map(|p| std::fs::metadata(p.join("data")).unwrap().len())
            .sum()
    };
    let raw = bytes_of(".raw");
    println!(
        "rollups written at seal: minute {:.3} B/pt, hour {:.3} B/pt (per raw point)",
        bytes_of(".1m") as f64 / total,
        bytes_of(".1h") as f64 / total
    );
    let series_log = std::fs::metadata(dir.path().join("series.log"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "on disk: raw blocks {:.3} B/pt, + series.log {:.3} B/pt, + rollup blocks {:.3} B/pt",
        raw as f64 / total,
        (raw + series_log) as f64 / total,
        (st.block_bytes + series_log) as f64 / total
    );
    let t = Instant::now();
    let got: usize = db
        .select(&all, end - 3_600_000, end)
        .unwrap()
        .map(|s| s.unwrap().values.len())
        .sum();
    let d = t.elapsed();
    println!(
        "select all series last 1 h (blocks): {got} points in {d:?} = {:.2} M points/s",
        got as f64 / d.as_secs_f64() / 1e6
    );
    let one = [Matcher::equal("__name__", "host0.cpu0.user")];
    let mut lat = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let s = db
            .select(&one, i64::MIN, i64::MAX)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(s.values.len(), POINTS);
        lat.push(t.elapsed());
    }
    lat.sort();
    println!("one series full range (blocks): median {:?}", lat[lat.len() / 2]);
    println!("peak RSS {}", proc_status("VmHWM"));
    compaction_figures((n / 10).min(1_000));
}

/// Bytes per point of a day of the data set's shape (`n` series, 10 s apart) sealed into
/// 2-hour blocks, then after compaction into one-day blocks.
fn compaction_figures(n: usize) {
    const DAY_POINTS: usize = 8_640;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(Timestamp(START + DAY_POINTS as i64 * STEP_MS)));
    let opts = |max| Options {
        maintenance_interval: None,
        max_compacted_block_ms: max,
        ..Options::default()
    };
    let db = Db::open(dir.path(), opts(0), clock.clone()).unwrap();
    let ids: Vec<_> = names(n).iter().map(|k| db.resolve(k).unwrap()).collect();
    let mut g = Gen::new(n);
    let mut batch = Vec::with_capacity(n);
    for p in 0..DAY_POINTS {
        g.batch(&ids, p, &mut batch);
        db.append(&batch).unwrap();
        if (p + 1) % 720 == 0 {
            db.compact_now().unwrap(); // one 2-hour window at a time
        }
    }
    db.compact_now().unwrap();
    let total = (n * DAY_POINTS) as f64;
    let bytes = |db: &Db| db.stats().block_bytes as f64 / total;
    let blocks_before = db.stats().blocks;
    let before = bytes(&db);
    db.close().unwrap();
    drop(db);
    let db = Db::open(dir.path(), opts(24 * 3_600_000), clock).unwrap();
    let t = std::time::Instant::now();
    let r = db.compact_now().unwrap();
    println!(
        "compaction, {n} series x 1 day at 10 s: {blocks_before} blocks {before:.3} B/pt -> {} blocks {:.3} B/pt (raw + rollups, {} merged in {:?})",
        db.stats().blocks,
        bytes(&db),
        r.blocks_merged,
        t.elapsed()
    );
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
    if std::env::var_os("TSDB_BENCH_FIGURES").is_some() {
        figures();
        return;
    }
    divan::main();
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines().filter(|l| l.starts_with("VmHWM")) {
            println!("peak RSS {line}");
        }
    }
}
