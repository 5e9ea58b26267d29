//! The engine against an in-memory model (a `BTreeMap` per series, last write wins) over
//! random sequences of in-order appends, out-of-order appends, durable waits, restarts and
//! crashes. After every step, `select` over every series must equal the model.
//!
//! Crashes: `Db::crash_for_test` drops what was never handed to the OS, but bytes the
//! committer already wrote may survive. So after a crash the engine must equal the durable
//! model plus some PREFIX of the batches appended since the last durable wait (the WAL is
//! ordered); the test finds that prefix or fails.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use model::{Label, ManualClock, Matcher, Point, SeriesId, SeriesKey, Timestamp};
use proptest::prelude::*;
use tsdb::{Db, FsyncPolicy, Options};

const NOW: i64 = 1_700_000_000_000;
const WINDOW: i64 = 1_000_000;
const SERIES: usize = 3;

type State = Vec<BTreeMap<i64, u64>>;

#[derive(Debug, Clone)]
enum Op {
    /// Samples `(series, ts offset from NOW, value bits)`; `durable` waits for the fsync.
    Append {
        points: Vec<(usize, i64, u64)>,
        durable: bool,
    },
    Restart,
    Crash,
    /// `compact_now`: seal everything into blocks, checkpoint the WAL, compact blocks.
    Seal,
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop_oneof![
        (0u32..100).prop_map(|v| f64::from(v).to_bits()),
        any::<u64>(),
        Just(f64::NAN.to_bits()),
        Just((-0.0f64).to_bits()),
    ];
    let point = (0..SERIES, -1_200_000i64..200_000, value);
    prop_oneof![
        6 => (proptest::collection::vec(point, 0..40), any::<bool>())
            .prop_map(|(points, durable)| Op::Append { points, durable }),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
        1 => Just(Op::Seal),
    ]
}

fn keys() -> Vec<SeriesKey> {
    (0..SERIES)
        .map(|i| SeriesKey::new("m", vec![Label::new("i", i.to_string())]).unwrap())
        .collect()
}

fn read_all(db: &Db) -> State {
    let mut out = vec![BTreeMap::new(); SERIES];
    for s in db
        .select(&[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX)
        .unwrap()
    {
        let s = s.unwrap();
        let i: usize = s.key.get("i").unwrap().parse().unwrap();
        assert!(s.timestamps.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
        out[i] = s
            .timestamps
            .iter()
            .zip(&s.values)
            .map(|(t, v)| (*t, v.to_bits()))
            .collect();
    }
    // The id-order walk and the visiting form read exactly the same series and samples.
    let mut by_id = vec![BTreeMap::new(); SERIES];
    db.select_in_id_order(&[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX)
        .unwrap()
        .visit(
            |e| e,
            |key, ts, vals| {
                let i: usize = key.get("i").unwrap().parse().unwrap();
                by_id[i] = ts.iter().zip(vals).map(|(t, v)| (*t, v.to_bits())).collect();
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(by_id, out, "select_in_id_order + visit disagree with select");
    out
}

fn apply(state: &mut State, batch: &[(usize, i64, u64)]) {
    for (i, t, v) in batch {
        state[*i].insert(*t, *v);
    }
}

fn open(dir: &std::path::Path, fsync: FsyncPolicy) -> (Arc<Db>, Vec<SeriesId>) {
    let opts = Options {
        fsync,
        ooo_window_ms: WINDOW,
        head_chunk_points: 8,
        // small blocks, so that samples spread over several windows
        block_duration_ms: 100_000,
        // compaction ranges of 4 windows, so seals backfill into compacted blocks
        max_compacted_block_ms: 400_000,
        max_ooo_points_per_series: 5,
        maintenance_interval: None,
        ..Options::default()
    };
    let clock = Arc::new(ManualClock::new(Timestamp(NOW)));
    let db = Db::open(dir, opts, clock).unwrap();
    let ids = keys().iter().map(|k| db.resolve(k).unwrap()).collect();
    (db, ids)
}

fn run(ops: Vec<Op>, every_batch: bool) {
    let fsync = if every_batch {
        FsyncPolicy::EveryBatch
    } else {
        FsyncPolicy::Interval(Duration::from_millis(2))
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut db, ids) = open(dir.path(), fsync);
    let mut durable: State = vec![BTreeMap::new(); SERIES];
    let mut unacked: Vec<Vec<(usize, i64, u64)>> = Vec::new();
    let mut full = durable.clone();
    for op in ops {
        match op {
            Op::Append {
                points,
                durable: wait,
            } => {
                let newest = full.iter().filter_map(|m| m.keys().next_back()).max().copied();
                let cutoff = newest.map_or(NOW, |n| n.max(NOW)) - WINDOW;
                let accepted: Vec<_> = points
                    .iter()
                    .map(|(i, off, v)| (*i, NOW + off, *v))
                    .filter(|(_, t, _)| *t >= cutoff)
                    .collect();
                let batch: Vec<Point> = points
                    .iter()
                    .map(|(i, off, v)| Point {
                        series: ids[*i],
                        ts: NOW + off,
                        value: f64::from_bits(*v),
                    })
                    .collect();
                let r = db.append(&batch).unwrap();
                assert_eq!(r.accepted, accepted.len());
                assert_eq!(r.too_old, points.len() - accepted.len());
                apply(&mut full, &accepted);
                unacked.push(accepted);
                if wait {
                    db.wait_durable(r.wal_seq).unwrap();
                    for b in unacked.drain(..) {
                        apply(&mut durable, &b);
                    }
                }
            }
            Op::Seal => {
                db.compact_now().unwrap();
                // sealing fsyncs the WAL and writes blocks: everything is durable
                durable = full.clone();
                unacked.clear();
            }
            Op::Restart => {
                db.close().unwrap();
                drop(db);
                let (d, again) = open(dir.path(), fsync);
                assert_eq!(again, ids, "series ids are stable across restarts");
                db = d;
                durable = full.clone();
                unacked.clear();
            }
            Op::Crash => {
                db.crash_for_test();
                drop(db);
                let (d, again) = open(dir.path(), fsync);
                assert_eq!(again, ids, "series ids are stable across crashes");
                db = d;
                let got = read_all(&db);
                let mut candidate = durable.clone();
                let mut found = got == candidate;
                for b in &unacked {
                    if found {
                        break;
                    }
                    apply(&mut candidate, b);
                    found = got == candidate;
                }
                assert!(
                    found,
                    "after a crash the engine holds the durable data plus a prefix of later batches"
                );
                durable = got;
                full = durable.clone();
                unacked.clear();
            }
        }
        assert_eq!(read_all(&db), full);
    }
    db.close().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn engine_matches_model(ops in proptest::collection::vec(op(), 1..25), every_batch in any::<bool>()) {
        run(ops, every_batch);
    }
}

#[test]
fn out_of_order_and_overwrites_table() {
    // (writes as (series, offset, value), expected per series 0)
    type Case = (Vec<(usize, i64, u64)>, Vec<(i64, f64)>);
    let cases: Vec<Case> = vec![
        (vec![(0, 10, 1), (0, 5, 2), (0, 10, 3)], vec![(5, 2.0), (10, 3.0)]),
        (vec![(0, 0, 1), (0, -WINDOW - 1, 2)], vec![(0, 1.0)]),
    ];
    for (writes, want) in cases {
        let ops = vec![Op::Append {
            points: writes
                .iter()
                .map(|(i, t, v)| (*i, *t, f64::from(*v as u32).to_bits()))
                .collect(),
            durable: true,
        }];
        run(ops.clone(), true);
        let dir = tempfile::tempdir().unwrap();
        let (db, ids) = open(dir.path(), FsyncPolicy::EveryBatch);
        let batch: Vec<Point> = writes
            .iter()
            .map(|(i, t, v)| Point {
                series: ids[*i],
                ts: NOW + t,
                value: f64::from(*v as u32),
            })
            .collect();
        db.append(&batch).unwrap();
        let got: Vec<(i64, f64)> = db
            .select(&[Matcher::equal("i", "0")], i64::MIN, i64::MAX)
            .unwrap()
            .flat_map(|s| {
                let s = s.unwrap();
                s.timestamps
                    .into_iter()
                    .map(|t| t - NOW)
                    .zip(s.values)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(got, want);
    }
}
