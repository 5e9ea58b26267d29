//! Rollup-served `*_over_time` against the raw path, over the real storage engine: random
//! data in several block windows, sealed, reopened, overwritten out of order (in the head
//! and then sealed again), with NaN and stale markers. Every query is asked with
//! `[query] use_rollups = true` and `false` through `TsdbReader`; min/max/count/last must
//! agree exactly, sum/avg within 1e-12 relative. A fixed case checks the hour rollups are
//! actually used for the peer benchmark's query shape.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use model::{Label, ManualClock, Matcher, Point, SeriesKey, Timestamp};
use query::eval::Steps;
use query::{QueryLimits, QueryValue, SeriesReader, Windows, evaluate_instant, evaluate_range};
use server::adapters::TsdbReader;
use tsdb::{Db, FsyncPolicy, Options};

const HOUR: i64 = 3_600_000;
const MIN: i64 = 60_000;
/// Two days after an hour boundary, so all data is old enough to seal.
const NOW: i64 = 1_700_000_000_000 / HOUR * HOUR + 48 * HOUR;
const BASE: i64 = NOW - 24 * HOUR;
const STALE: u64 = 0x7ff0_0000_0000_0002;
const REL: f64 = 1e-12;

fn open(dir: &Path) -> Arc<Db> {
    let opts = Options {
        fsync: FsyncPolicy::EveryBatch,
        maintenance_interval: None,
        ..Options::default()
    };
    Db::open(dir, opts, Arc::new(ManualClock::new(Timestamp(NOW)))).unwrap()
}

fn key(i: usize) -> SeriesKey {
    SeriesKey::new("m", vec![Label::new("i", i.to_string())]).unwrap()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// A value; stale markers only when `stale` (a raw block holding one is read raw).
    fn value(&mut self, stale: bool) -> f64 {
        match self.below(60) {
            0 => f64::NAN,
            1 if stale => f64::from_bits(STALE),
            2 => f64::INFINITY,
            _ => (self.below(20_000) as f64 - 10_000.0) / 100.0,
        }
    }
}

/// A batch of samples: `n` per series at random 10 s slots within 5 hours from BASE.
fn batch(rng: &mut Rng, db: &Db, series: usize, n: usize) -> Vec<Point> {
    let mut pts = Vec::new();
    for s in 0..series {
        let id = db.resolve(&key(s)).unwrap();
        for _ in 0..n {
            pts.push(Point {
                series: id,
                ts: BASE + rng.below(5 * 360) as i64 * 10_000,
                value: rng.value(s == 0),
            });
        }
    }
    pts
}

fn agree(a: f64, b: f64, exact: bool) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if exact || a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= 1e-9 || (a - b).abs() <= REL * a.abs().max(b.abs())
}

fn check_instant(reader: &dyn SeriesReader, q: &str, t: i64, exact: bool) {
    let raw = QueryLimits {
        use_rollups: false,
        ..QueryLimits::default()
    };
    let want = evaluate_instant(reader, q, t, &raw).unwrap();
    let got = evaluate_instant(reader, q, t, &QueryLimits::default()).unwrap();
    match (&want, &got) {
        (QueryValue::Vector(w), QueryValue::Vector(g)) => {
            assert_eq!(w.len(), g.len(), "{q} at {t}: {want:?} vs {got:?}");
            for (a, b) in w.iter().zip(g) {
                assert_eq!(a.labels, b.labels, "{q} at {t}");
                assert!(agree(a.v, b.v, exact), "{q} at {t}: {} vs {}", a.v, b.v);
            }
        }
        _ => panic!("{q}: {want:?} vs {got:?}"),
    }
}

fn check_range(reader: &dyn SeriesReader, q: &str, steps: Steps, exact: bool) {
    let raw = QueryLimits {
        use_rollups: false,
        ..QueryLimits::default()
    };
    let want = evaluate_range(reader, q, steps, &raw).unwrap();
    let got = evaluate_range(reader, q, steps, &QueryLimits::default()).unwrap();
    assert_eq!(want.len(), got.len(), "{q}");
    for (a, b) in want.iter().zip(&got) {
        assert_eq!(a.labels, b.labels, "{q}");
        assert_eq!(a.ts, b.ts, "{q}");
        for (x, y) in a.vals.iter().zip(&b.vals) {
            assert!(agree(*x, *y, exact), "{q}: {x} vs {y}");
        }
    }
}

const FUNCS: [&str; 6] = [
    "sum_over_time",
    "count_over_time",
    "min_over_time",
    "max_over_time",
    "last_over_time",
    "avg_over_time",
];

fn check_all(reader: &dyn SeriesReader, rng: &mut Rng) {
    for f in FUNCS {
        let exact = !matches!(f, "sum_over_time" | "avg_over_time");
        for range in ["1h", "2h", "3h", "5m", "30m"] {
            for q in [format!("{f}(m[{range}])"), format!("max({f}(m[{range}]))")] {
                let hour = BASE + rng.below(6) as i64 * HOUR;
                for t in [
                    hour,
                    hour + 1000,
                    hour + 3_591_000,
                    hour + rng.below(HOUR as u64) as i64,
                ] {
                    check_instant(reader, &q, t, exact);
                }
                let step = [MIN, HOUR, 5 * MIN][rng.below(3) as usize];
                let start = BASE + rng.below(60) as i64 * MIN;
                check_range(
                    reader,
                    &q,
                    Steps {
                        start,
                        end: start + 5 * HOUR,
                        step,
                    },
                    exact,
                );
            }
        }
    }
}

#[test]
fn rollup_and_raw_answers_agree_through_seals_restarts_and_overwrites() {
    let mut buckets = 0;
    let counting = |db: &Arc<Db>| Counting {
        inner: TsdbReader::new(Arc::clone(db)),
        buckets: AtomicUsize::new(0),
        raw: AtomicUsize::new(0),
    };
    for seed in 1..=6u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let dir = tempfile::tempdir().unwrap();
        let series = 1 + rng.below(3) as usize;
        let db = open(dir.path());
        let pts = batch(&mut rng, &db, series, 300);
        db.append(&pts).unwrap();
        check_all(&TsdbReader::new(Arc::clone(&db)), &mut rng);
        db.compact_now().unwrap();
        let r = counting(&db);
        check_all(&r, &mut rng);
        buckets += r.buckets.load(Ordering::Relaxed);
        drop(r);
        // out-of-order overwrites land in the head over sealed buckets
        let pts = batch(&mut rng, &db, series, 40);
        db.append(&pts).unwrap();
        check_all(&TsdbReader::new(Arc::clone(&db)), &mut rng);
        db.close().unwrap();
        drop(db);
        let db = open(dir.path());
        check_all(&TsdbReader::new(Arc::clone(&db)), &mut rng);
        db.compact_now().unwrap();
        let r = counting(&db);
        check_all(&r, &mut rng);
        buckets += r.buckets.load(Ordering::Relaxed);
        db.close().unwrap();
    }
    assert!(
        buckets > 100,
        "the rollup path was hardly used: {buckets} buckets"
    );
}

/// Counts the buckets a reader hands over.
struct Counting {
    inner: TsdbReader,
    buckets: AtomicUsize,
    raw: AtomicUsize,
}

impl SeriesReader for Counting {
    fn select(
        &self,
        m: &[Matcher],
        s: i64,
        e: i64,
        v: &mut query::Visit<'_>,
    ) -> Result<(), query::QueryError> {
        self.inner.select(m, s, e, v)
    }
    fn select_summaries(
        &self,
        m: &[Matcher],
        w: &Windows,
        v: &mut query::SummaryVisit<'_>,
    ) -> Result<(), query::QueryError> {
        self.inner.select_summaries(m, w, &mut |k, b, ts, vals| {
            self.buckets.fetch_add(b.len(), Ordering::Relaxed);
            self.raw.fetch_add(ts.len(), Ordering::Relaxed);
            v(k, b, ts, vals)
        })
    }
    fn series(&self, m: &[Matcher], s: i64, e: i64, l: usize) -> Result<Vec<SeriesKey>, query::QueryError> {
        self.inner.series(m, s, e, l)
    }
    fn label_names(&self, m: &[Matcher], s: i64, e: i64, l: usize) -> Result<Vec<String>, query::QueryError> {
        self.inner.label_names(m, s, e, l)
    }
    fn label_values(
        &self,
        n: &str,
        m: &[Matcher],
        s: i64,
        e: i64,
        l: usize,
    ) -> Result<Vec<String>, query::QueryError> {
        self.inner.label_values(n, m, s, e, l)
    }
}

/// The peer benchmark's shape: 360 points 10 s apart from an hour boundary, sealed, asked
/// at the last sample + 1 s over `[1h]`: one stored hour bucket per series and no raw
/// sample; after an out-of-order write into that hour the bucket is no longer used (the
/// head holds a sample of it) and the answer still agrees.
#[test]
fn benchmark_shape_reads_one_hour_rollup_per_series() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let ids: Vec<_> = (0..5).map(|s| db.resolve(&key(s)).unwrap()).collect();
    let start = BASE + HOUR;
    let mut pts = Vec::new();
    for (s, id) in ids.iter().enumerate() {
        for i in 0..360i64 {
            pts.push(Point {
                series: *id,
                ts: start + i * 10_000,
                value: ((s as i64 * 7 + i * 13) % 1000) as f64 / 100.0,
            });
        }
    }
    db.append(&pts).unwrap();
    db.compact_now().unwrap();
    let reader = Counting {
        inner: TsdbReader::new(Arc::clone(&db)),
        buckets: AtomicUsize::new(0),
        raw: AtomicUsize::new(0),
    };
    let t = start + 3_591_000;
    let q = "sum(avg_over_time(m[1h]))";
    let raw = QueryLimits {
        use_rollups: false,
        ..QueryLimits::default()
    };
    let want = evaluate_instant(&reader, q, t, &raw).unwrap();
    let got = evaluate_instant(&reader, q, t, &QueryLimits::default()).unwrap();
    assert_eq!(reader.buckets.load(Ordering::Relaxed), 5);
    assert_eq!(reader.raw.load(Ordering::Relaxed), 0);
    let (QueryValue::Vector(w), QueryValue::Vector(g)) = (&want, &got) else {
        panic!("{want:?} {got:?}")
    };
    assert!(agree(w[0].v, g[0].v, false), "{want:?} vs {got:?}");
    // an overwrite in the head: that series' bucket is read raw
    db.append(&[Point {
        series: ids[0],
        ts: start + 50_000,
        value: 1000.0,
    }])
    .unwrap();
    reader.buckets.store(0, Ordering::Relaxed);
    reader.raw.store(0, Ordering::Relaxed);
    check_instant(&reader.inner, q, t, false);
    let _ = evaluate_instant(&reader, q, t, &QueryLimits::default()).unwrap();
    assert_eq!(reader.buckets.load(Ordering::Relaxed), 4);
    assert_eq!(reader.raw.load(Ordering::Relaxed), 360);
    db.close().unwrap();
}
