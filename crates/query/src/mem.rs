//! An in-memory [`SeriesReader`]: the reference implementation the golden tests and the
//! benchmark run against. Series are kept sorted by key; samples sorted by time, one per
//! timestamp (a later write at the same timestamp replaces the earlier one).

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use model::{Matcher, SeriesKey};

use crate::{QueryError, SeriesReader, matches_all};

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

impl SeriesReader for MemReader {
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
