//! Compaction: merge several blocks of one resolution into one block.
//!
//! Design constraints and invariants:
//! - Series are merged in ascending id order (a k-way merge of the inputs' sorted indexes);
//!   memory is bounded by one series at a time, not by the blocks.
//! - **Last write wins** for raw samples: where several inputs hold the same series and
//!   timestamp, the sample from the input with the highest `seq` survives (on equal `seq`, the
//!   later input in the argument list).
//! - Rollup blocks combine points of the same bucket ([`crate::rollup::RollupPoint::combine`]):
//!   inputs are assumed to roll up disjoint samples.
//! - A series present in only one input is copied byte for byte (its checksum was verified on
//!   read), so compaction of mostly disjoint blocks costs little CPU.
//! - Inputs are only read; deleting them after the output is in place is the caller's job.

use std::path::Path;

use model::SeriesId;

use crate::block::{BlockError, BlockMeta, BlockOptions, BlockReader, BlockWriter};
use crate::rollup::{Resolution, merge_rollups};

/// Merges `inputs` into a new block at `out_dir` with id and seq `seq` (normally above every
/// input's seq). All inputs must share one resolution.
pub fn compact(inputs: &[&BlockReader], out_dir: &Path, seq: u64) -> Result<BlockMeta, BlockError> {
    let resolution = match inputs.first() {
        Some(b) => b.meta().resolution,
        None => Resolution::Raw,
    };
    if inputs.iter().any(|b| b.meta().resolution != resolution) {
        return Err(BlockError::Invalid(
            "cannot compact blocks of different resolutions".into(),
        ));
    }
    // Oldest first, so that later inputs overwrite earlier ones.
    let mut order: Vec<&BlockReader> = inputs.to_vec();
    order.sort_by_key(|b| b.meta().seq);

    let mut ids: Vec<u64> = order.iter().flat_map(|b| b.series_ids().map(|s| s.0)).collect();
    ids.sort_unstable();
    ids.dedup();

    let mut w = BlockWriter::create(
        out_dir,
        BlockOptions {
            id: seq,
            resolution,
            seq,
        },
    )?;
    // Records of inputs sharing the output's base are copied verbatim; pick the base of the
    // input holding the most series.
    if let Some(b) = order.iter().max_by_key(|b| b.meta().series) {
        w.set_ts_base(b.ts_base());
    }
    let base = w.ts_base();
    let mut record = Vec::new();
    let (mut ts, mut vals) = (Vec::new(), Vec::new());
    let (mut acc_t, mut acc_v, mut tmp_t, mut tmp_v) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut acc_r, mut part_r, mut tmp_r) = (Vec::new(), Vec::new(), Vec::new());
    for id in ids.into_iter().map(SeriesId) {
        let holders: Vec<&BlockReader> = order.iter().copied().filter(|b| b.contains(id)).collect();
        if let [only] = holders.as_slice()
            && Some(only.ts_base()) == base
        {
            if let Some((min_t, max_t, count)) = only.raw_record(id, &mut record)? {
                w.add_record(id, &record, min_t, max_t, count)?;
            }
            continue;
        }
        if resolution == Resolution::Raw {
            acc_t.clear();
            acc_v.clear();
            for b in holders {
                ts.clear();
                vals.clear();
                b.read(id, i64::MIN, i64::MAX, &mut ts, &mut vals)?;
                merge_last_write_wins(&acc_t, &acc_v, &ts, &vals, &mut tmp_t, &mut tmp_v);
                std::mem::swap(&mut acc_t, &mut tmp_t);
                std::mem::swap(&mut acc_v, &mut tmp_v);
            }
            w.add_series(id, &acc_t, &acc_v)?;
        } else {
            acc_r.clear();
            for b in holders {
                part_r.clear();
                b.read_rollup(id, i64::MIN, i64::MAX, &mut part_r)?;
                tmp_r.clear();
                merge_rollups(&acc_r, &part_r, &mut tmp_r);
                std::mem::swap(&mut acc_r, &mut tmp_r);
            }
            w.add_rollup_series(id, &acc_r)?;
        }
    }
    w.finish()
}

/// Merges two sorted sample runs into `out_t`/`out_v` (cleared first); on equal timestamps
/// the sample from `new_*` wins.
pub fn merge_last_write_wins(
    old_t: &[i64],
    old_v: &[f64],
    new_t: &[i64],
    new_v: &[f64],
    out_t: &mut Vec<i64>,
    out_v: &mut Vec<f64>,
) {
    out_t.clear();
    out_v.clear();
    out_t.reserve(old_t.len() + new_t.len());
    out_v.reserve(old_t.len() + new_t.len());
    let (mut i, mut j) = (0, 0);
    loop {
        match (old_t.get(i), new_t.get(j)) {
            (Some(&a), Some(&b)) if a < b => {
                out_t.push(a);
                out_v.extend(old_v.get(i).copied());
                i += 1;
            }
            (Some(&a), Some(&b)) => {
                if a == b {
                    i += 1;
                }
                out_t.push(b);
                out_v.extend(new_v.get(j).copied());
                j += 1;
            }
            (Some(&a), None) => {
                out_t.push(a);
                out_v.extend(old_v.get(i).copied());
                i += 1;
            }
            (None, Some(&b)) => {
                out_t.push(b);
                out_v.extend(new_v.get(j).copied());
                j += 1;
            }
            (None, None) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollup::RollupPoint;

    /// A block in a test: its seq and, per series id, (ts, value) samples.
    type BlockSpec<'a> = (u64, &'a [(u64, &'a [(i64, f64)])]);
    /// (case, input blocks, expected series of the output)
    type Case<'a> = (&'a str, &'a [BlockSpec<'a>], &'a [(u64, &'a [(i64, f64)])]);

    fn write(dir: &Path, name: &str, (seq, series): BlockSpec<'_>) -> BlockReader {
        let path = dir.join(name);
        let mut w = BlockWriter::create(
            &path,
            BlockOptions {
                id: seq,
                resolution: Resolution::Raw,
                seq,
            },
        )
        .unwrap();
        for (id, samples) in series {
            let ts: Vec<i64> = samples.iter().map(|s| s.0).collect();
            let vals: Vec<f64> = samples.iter().map(|s| s.1).collect();
            w.add_series(SeriesId(*id), &ts, &vals).unwrap();
        }
        w.finish().unwrap();
        BlockReader::open(&path).unwrap()
    }

    #[test]
    fn last_write_wins_table() {
        #[rustfmt::skip]
        let table: &[Case<'_>] = &[
            ("disjoint series are copied",
                &[(1, &[(1, &[(10, 1.0)])]), (2, &[(2, &[(10, 2.0)])])],
                &[(1, &[(10, 1.0)]), (2, &[(10, 2.0)])]),
            ("disjoint series, different base times",
                &[(1, &[(1, &[(10, 1.0)]), (3, &[(-7, 3.0)])]), (2, &[(2, &[(500, 2.0), (600, 2.5)])])],
                &[(1, &[(10, 1.0)]), (2, &[(500, 2.0), (600, 2.5)]), (3, &[(-7, 3.0)])]),
            ("interleaved samples merge in time order",
                &[(1, &[(1, &[(10, 1.0), (30, 3.0)])]), (2, &[(1, &[(20, 2.0), (40, 4.0)])])],
                &[(1, &[(10, 1.0), (20, 2.0), (30, 3.0), (40, 4.0)])]),
            ("equal timestamp: higher seq wins",
                &[(1, &[(1, &[(10, 1.0), (20, 1.0)])]), (2, &[(1, &[(20, 9.0)])])],
                &[(1, &[(10, 1.0), (20, 9.0)])]),
            ("higher seq wins even when listed first",
                &[(5, &[(1, &[(20, 5.0)])]), (3, &[(1, &[(20, 3.0)])])],
                &[(1, &[(20, 5.0)])]),
            ("three blocks, backfill in the middle",
                &[(1, &[(1, &[(0, 0.0), (100, 1.0)])]), (2, &[(1, &[(50, 0.5)])]), (3, &[(1, &[(100, 7.0)])])],
                &[(1, &[(0, 0.0), (50, 0.5), (100, 7.0)])]),
        ];
        for (name, blocks, want) in table {
            let dir = tempfile::tempdir().unwrap();
            let readers: Vec<BlockReader> = blocks
                .iter()
                .enumerate()
                .map(|(i, b)| write(dir.path(), &format!("in{i}"), *b))
                .collect();
            let refs: Vec<&BlockReader> = readers.iter().collect();
            let out = dir.path().join("out");
            let meta = compact(&refs, &out, 100).unwrap();
            let r = BlockReader::open(&out).unwrap();
            assert_eq!(r.meta(), &meta, "{name}");
            let ids: Vec<u64> = r.series_ids().map(|s| s.0).collect();
            assert_eq!(ids, want.iter().map(|w| w.0).collect::<Vec<_>>(), "{name}");
            for (id, samples) in *want {
                let (mut ts, mut vals) = (Vec::new(), Vec::new());
                r.read(SeriesId(*id), i64::MIN, i64::MAX, &mut ts, &mut vals)
                    .unwrap();
                let got: Vec<(i64, f64)> = ts.into_iter().zip(vals).collect();
                assert_eq!(&got, samples, "{name}: series {id}");
            }
        }
    }

    #[test]
    fn rollup_blocks_combine_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let p = |ts, v: f64, count, last_ts| RollupPoint {
            ts,
            min: v,
            max: v,
            sum: v * count as f64,
            count,
            last: v,
            last_ts,
        };
        let mut readers = Vec::new();
        for (i, pts) in [
            vec![p(0, 1.0, 2, 50_000)],
            vec![p(0, 3.0, 1, 10_000), p(60_000, 4.0, 1, 60_000)],
        ]
        .into_iter()
        .enumerate()
        {
            let path = dir.path().join(format!("r{i}"));
            let opts = BlockOptions {
                id: i as u64,
                resolution: Resolution::Minute,
                seq: i as u64,
            };
            let mut w = BlockWriter::create(&path, opts).unwrap();
            w.add_rollup_series(SeriesId(7), &pts).unwrap();
            w.finish().unwrap();
            readers.push(BlockReader::open(&path).unwrap());
        }
        let out = dir.path().join("out");
        compact(&readers.iter().collect::<Vec<_>>(), &out, 9).unwrap();
        let mut got = Vec::new();
        BlockReader::open(&out)
            .unwrap()
            .read_rollup(SeriesId(7), i64::MIN, i64::MAX, &mut got)
            .unwrap();
        let first = RollupPoint {
            ts: 0,
            min: 1.0,
            max: 3.0,
            sum: 5.0,
            count: 3,
            last: 1.0,
            last_ts: 50_000,
        };
        assert_eq!(got, vec![first, p(60_000, 4.0, 1, 60_000)]);
    }

    #[test]
    fn mixed_resolutions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let raw = write(dir.path(), "raw", (1, &[]));
        let path = dir.path().join("minute");
        BlockWriter::create(
            &path,
            BlockOptions {
                id: 2,
                resolution: Resolution::Minute,
                seq: 2,
            },
        )
        .unwrap()
        .finish()
        .unwrap();
        let minute = BlockReader::open(&path).unwrap();
        assert!(matches!(
            compact(&[&raw, &minute], &dir.path().join("out"), 3),
            Err(BlockError::Invalid(_))
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Compaction equals a model: a BTreeMap per series where later (higher seq) writes
        /// replace earlier ones.
        #[test]
        fn compaction_matches_a_last_write_wins_model(
            blocks in proptest::collection::vec(
                proptest::collection::btree_map(
                    1u64..6,
                    proptest::collection::btree_map(-50i64..50, -1000i32..1000, 0..20),
                    0..5,
                ),
                1..5,
            ),
            seqs in proptest::collection::vec(0u64..4, 5),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut model: std::collections::BTreeMap<u64, std::collections::BTreeMap<i64, f64>> = Default::default();
            let mut readers = Vec::new();
            let mut order: Vec<(u64, usize)> = Vec::new();
            for (i, block) in blocks.iter().enumerate() {
                // Distinct seqs keep the model's order unambiguous.
                let seq = seqs[i] * 10 + i as u64;
                order.push((seq, i));
                let path = dir.path().join(format!("b{i}"));
                let mut w = BlockWriter::create(&path, BlockOptions { id: i as u64, resolution: Resolution::Raw, seq }).unwrap();
                for (id, samples) in block {
                    let ts: Vec<i64> = samples.keys().copied().collect();
                    let vals: Vec<f64> = samples.values().map(|&v| f64::from(v) / 100.0).collect();
                    w.add_series(SeriesId(*id), &ts, &vals).unwrap();
                }
                w.finish().unwrap();
                readers.push(BlockReader::open(&path).unwrap());
            }
            order.sort();
            for (_, i) in order {
                for (id, samples) in &blocks[i] {
                    let m = model.entry(*id).or_default();
                    for (t, v) in samples {
                        m.insert(*t, f64::from(*v) / 100.0);
                    }
                }
            }
            model.retain(|_, m| !m.is_empty());
            let out = dir.path().join("out");
            let meta = compact(&readers.iter().collect::<Vec<_>>(), &out, 1000).unwrap();
            let r = BlockReader::open(&out).unwrap();
            proptest::prop_assert_eq!(meta.series, model.len() as u64);
            proptest::prop_assert_eq!(r.series_ids().map(|s| s.0).collect::<Vec<_>>(), model.keys().copied().collect::<Vec<_>>());
            for (id, m) in &model {
                let (mut ts, mut vals) = (Vec::new(), Vec::new());
                r.read(SeriesId(*id), i64::MIN, i64::MAX, &mut ts, &mut vals).unwrap();
                let got: Vec<(i64, f64)> = ts.into_iter().zip(vals).collect();
                let want: Vec<(i64, f64)> = m.iter().map(|(t, v)| (*t, *v)).collect();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }
}
