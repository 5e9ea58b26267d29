//! An in-memory [`SeriesReader`]: the reference implementation the golden tests and the
//! benchmark run against. Series are kept sorted by key; samples sorted by time, one per
//! timestamp (a later write at the same timestamp replaces the earlier one).
//!
//! With [`MemReader::with_buckets`] it also answers
//! [`SeriesReader::select_summaries`] with epoch-aligned buckets computed from its samples
//! (as the storage's rollups are), so the evaluator's bucket path can be tested against the
//! raw path without the storage engine. Shards ([`SeriesReader::select_shard`]) are
//! contiguous runs of the matching series in key order, as the storage's are.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use model::{Matcher, SeriesKey};

use crate::{Bucket, QueryError, SeriesReader, SummaryVisit, Windows, matches_all};

/// Samples of one series, sorted by time.
#[derive(Debug, Clone, Default)]
struct Samples {
    ts: Vec<i64>,
    vals: Vec<f64>,
}

/// Series held in memory.
#[derive(Debug, Clone, Default)]
pub struct MemReader {
    series: BTreeMap<SeriesKey, Samples>,
    /// Bucket width for `select_summaries`; 0 = hand everything over raw.
    bucket_ms: i64,
}

impl MemReader {
    /// An empty store.
    pub fn new() -> MemReader {
        MemReader::default()
    }

    /// Adds one sample, keeping the series sorted by time.
    pub fn add(&mut self, key: &SeriesKey, ts: i64, value: f64) {
        let s = self.series.entry(key.clone()).or_default();
        match s.ts.binary_search(&ts) {
            Ok(i) => {
                if let Some(v) = s.vals.get_mut(i) {
                    *v = value;
                }
            }
            Err(i) => {
                s.ts.insert(i, ts);
                s.vals.insert(i, value);
            }
        }
    }

    /// Adds a whole series of samples already sorted by time (appends after existing ones
    /// when they are later, otherwise inserts one by one).
    pub fn add_sorted(&mut self, key: &SeriesKey, ts: &[i64], vals: &[f64]) {
        let s = self.series.entry(key.clone()).or_default();
        let later = match (s.ts.last(), ts.first()) {
            (Some(last), Some(first)) => first > last,
            _ => true,
        };
        let sorted = ts.windows(2).all(|w| w[0] < w[1]);
        if later && sorted && ts.len() == vals.len() {
            s.ts.extend_from_slice(ts);
            s.vals.extend_from_slice(vals);
        } else {
            for (t, v) in ts.iter().zip(vals) {
                self.add(key, *t, *v);
            }
        }
    }

    /// Makes [`SeriesReader::select_summaries`] summarise samples in epoch-aligned buckets
    /// of `bucket_ms` (0 turns summaries off).
    pub fn with_buckets(mut self, bucket_ms: i64) -> MemReader {
        self.bucket_ms = bucket_ms.max(0);
        self
    }

    /// Removes every series.
    pub fn clear(&mut self) {
        self.series.clear();
    }

    /// Number of series held.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether no series is held.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    fn window(s: &Samples, start: i64, end: i64) -> (&[i64], &[f64]) {
        let lo = s.ts.partition_point(|t| *t < start);
        let hi = s.ts.partition_point(|t| *t <= end).max(lo);
        (s.ts.get(lo..hi).unwrap_or(&[]), s.vals.get(lo..hi).unwrap_or(&[]))
    }

    fn matching<'a>(
        &'a self,
        matchers: &'a [Matcher],
        start: i64,
        end: i64,
    ) -> impl Iterator<Item = (&'a SeriesKey, &'a [i64], &'a [f64])> + 'a {
        self.series.iter().filter_map(move |(k, s)| {
            if !matches_all(k, matchers) {
                return None;
            }
            let (ts, vals) = MemReader::window(s, start, end);
            (!ts.is_empty()).then_some((k, ts, vals))
        })
    }
}

/// Splits `ts`/`vals` (sorted) into the clean buckets of width `bucket_ms` and the samples
/// outside them, skipping stale markers inside buckets as storage rollups do.
fn summarise(
    ts: &[i64],
    vals: &[f64],
    bucket_ms: i64,
    windows: &Windows,
    buckets: &mut Vec<Bucket>,
    raw_ts: &mut Vec<i64>,
    raw_vals: &mut Vec<f64>,
) {
    buckets.clear();
    raw_ts.clear();
    raw_vals.clear();
    let mut i = 0;
    while i < ts.len() {
        let Some(&t0) = ts.get(i) else { break };
        let start = t0.div_euclid(bucket_ms).saturating_mul(bucket_ms);
        let end = start.saturating_add(bucket_ms);
        let j = i + ts.get(i..).map_or(0, |r| r.partition_point(|t| *t < end));
        let (bts, bvals) = (ts.get(i..j).unwrap_or(&[]), vals.get(i..j).unwrap_or(&[]));
        let mut b: Option<Bucket> = None;
        for (&t, &v) in bts.iter().zip(bvals) {
            if crate::eval::is_stale(v) {
                continue;
            }
            b = Some(match b {
                None => Bucket {
                    start,
                    last_ts: t,
                    min: v,
                    max: v,
                    sum: v,
                    count: 1,
                    last: v,
                },
                Some(b) => Bucket {
                    start,
                    last_ts: t,
                    min: b.min.min(v),
                    max: b.max.max(v),
                    sum: b.sum + v,
                    count: b.count + 1,
                    last: v,
                },
            });
        }
        match b {
            Some(b) if windows.is_clean(b.start, b.last_ts) => {
                buckets.push(b);
                // stale markers after the last sample stay raw (the evaluator drops them)
                for (&t, &v) in bts.iter().zip(bvals) {
                    if t > b.last_ts {
                        raw_ts.push(t);
                        raw_vals.push(v);
                    }
                }
            }
            _ => {
                raw_ts.extend_from_slice(bts);
                raw_vals.extend_from_slice(bvals);
            }
        }
        i = j.max(i + 1);
    }
}

impl MemReader {
    /// Part `shard` of `shards` of the matching series: a contiguous run in key order.
    fn part<'a>(
        &'a self,
        matchers: &'a [Matcher],
        start: i64,
        end: i64,
        shard: usize,
        shards: usize,
    ) -> Vec<(&'a SeriesKey, &'a [i64], &'a [f64])> {
        let all: Vec<_> = self.matching(matchers, start, end).collect();
        let shards = shards.max(1);
        let at = |k: usize| all.len().saturating_mul(k.min(shards)) / shards;
        all.get(at(shard)..at(shard.saturating_add(1)))
            .unwrap_or_default()
            .to_vec()
    }

    fn summaries_of(
        &self,
        matchers: &[Matcher],
        windows: &Windows,
        shard: usize,
        shards: usize,
        visit: &mut SummaryVisit<'_>,
    ) -> Result<(), QueryError> {
        let Some((start, end)) = windows.span() else {
            return Ok(());
        };
        let (mut buckets, mut raw_ts, mut raw_vals) = (Vec::new(), Vec::new(), Vec::new());
        for (k, ts, vals) in self.part(matchers, start, end, shard, shards) {
            if self.bucket_ms == 0 {
                visit(k, &[], ts, vals)?;
                continue;
            }
            summarise(
                ts,
                vals,
                self.bucket_ms,
                windows,
                &mut buckets,
                &mut raw_ts,
                &mut raw_vals,
            );
            visit(k, &buckets, &raw_ts, &raw_vals)?;
        }
        Ok(())
    }
}

impl SeriesReader for MemReader {
    fn select_summaries(
        &self,
        matchers: &[Matcher],
        windows: &Windows,
        visit: &mut SummaryVisit<'_>,
    ) -> Result<(), QueryError> {
        self.summaries_of(matchers, windows, 0, 1, visit)
    }

    fn select_summaries_shard(
        &self,
        matchers: &[Matcher],
        windows: &Windows,
        shard: usize,
        shards: usize,
        visit: &mut SummaryVisit<'_>,
    ) -> Result<(), QueryError> {
        self.summaries_of(matchers, windows, shard, shards, visit)
    }

    fn select_shard(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        shard: usize,
        shards: usize,
        visit: &mut crate::Visit<'_>,
    ) -> Result<(), QueryError> {
        for (k, ts, vals) in self.part(matchers, start_ms, end_ms, shard, shards) {
            visit(k, ts, vals)?;
        }
        Ok(())
    }

    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        visit: &mut crate::Visit<'_>,
    ) -> Result<(), QueryError> {
        for (k, ts, vals) in self.matching(matchers, start_ms, end_ms) {
            visit(k, ts, vals)?;
        }
        Ok(())
    }

    fn series(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<SeriesKey>, QueryError> {
        Ok(self
            .matching(matchers, start_ms, end_ms)
            .take(limit)
            .map(|(k, _, _)| k.clone())
            .collect())
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, QueryError> {
        let mut names = BTreeSet::new();
        for (k, _, _) in self.matching(matchers, start_ms, end_ms) {
            names.insert(model::METRIC_NAME_LABEL.to_owned());
            for l in k.labels() {
                names.insert(l.name.clone());
            }
        }
        Ok(names.into_iter().take(limit).collect())
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, QueryError> {
        let mut values = BTreeSet::new();
        for (k, _, _) in self.matching(matchers, start_ms, end_ms) {
            if let Some(v) = k.get(name) {
                values.insert(v.to_owned());
            }
        }
        Ok(values.into_iter().take(limit).collect())
    }
}
