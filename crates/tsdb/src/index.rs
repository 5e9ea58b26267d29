//! The series registry and inverted index.
//!
//! Series ids are dense (`0..n`, in creation order) and never change: creation is logged
//! to the WAL and checkpointed to `series.log`. The inverted index maps label name → value →
//! ascending posting list of ids; the metric name is indexed under `__name__`. Matchers are
//! resolved against the value lists of their label only (a regex scans the distinct values of
//! one label, never all series).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use model::{METRIC_NAME_LABEL, MatchOp, Matcher, SeriesId, SeriesKey};

use crate::error::DbError;

/// Series keys by id plus the inverted index.
#[derive(Debug, Default)]
pub(crate) struct Index {
    keys: Vec<SeriesKey>,
    by_key: foldhash::HashMap<SeriesKey, SeriesId>,
    postings: foldhash::HashMap<String, BTreeMap<String, Vec<u64>>>,
}

impl Index {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn lookup(&self, key: &SeriesKey) -> Option<SeriesId> {
        self.by_key.get(key).copied()
    }

    pub fn key(&self, id: SeriesId) -> Option<&SeriesKey> {
        usize::try_from(id.0).ok().and_then(|i| self.keys.get(i))
    }

    /// Adds `key` with the next id; the caller logs it.
    pub fn insert(&mut self, key: SeriesKey) -> SeriesId {
        let id = SeriesId(self.keys.len() as u64);
        self.add_postings(&key, id.0);
        self.by_key.insert(key.clone(), id);
        self.keys.push(key);
        id
    }

    /// Adds `key` under a known id during recovery. Ids must arrive densely and in order;
    /// anything else is a corrupt registry.
    pub fn insert_recovered(&mut self, id: SeriesId, key: SeriesKey) -> Result<(), String> {
        if id.0 < self.keys.len() as u64 {
            return match self.key(id) {
                Some(k) if *k == key => Ok(()),
                _ => Err(format!("series id {} recorded twice with different keys", id.0)),
            };
        }
        if id.0 != self.keys.len() as u64 {
            return Err(format!(
                "series id {} recorded but the next expected id is {}",
                id.0,
                self.keys.len()
            ));
        }
        if self.by_key.contains_key(&key) {
            return Err(format!("series {key} recorded under two ids"));
        }
        self.insert(key);
        Ok(())
    }

    fn add_postings(&mut self, key: &SeriesKey, id: u64) {
        self.postings
            .entry(METRIC_NAME_LABEL.to_owned())
            .or_default()
            .entry(key.name().to_owned())
            .or_default()
            .push(id);
        for l in key.labels() {
            self.postings
                .entry(l.name.clone())
                .or_default()
                .entry(l.value.clone())
                .or_default()
                .push(id);
        }
    }

    pub fn count_for_name(&self, name: &str) -> usize {
        self.postings
            .get(METRIC_NAME_LABEL)
            .and_then(|v| v.get(name))
            .map_or(0, Vec::len)
    }

    /// Ids of the series that `m` rejects or accepts among those carrying the label, as the
    /// union of the posting lists of the values for which `m.matches(v) == accept`.
    fn union_where(&self, m: &Matcher, accept: bool) -> Vec<u64> {
        let Some(values) = self.postings.get(&m.name) else {
            return Vec::new();
        };
        let lists: Vec<&Vec<u64>> = values
            .iter()
            .filter(|(v, _)| m.matches(v) == accept)
            .map(|(_, ids)| ids)
            .collect();
        match lists.as_slice() {
            [] => Vec::new(),
            [one] => (*one).clone(),
            _ => {
                let mut all: Vec<u64> = lists.into_iter().flatten().copied().collect();
                all.sort_unstable();
                all.dedup();
                all
            }
        }
    }

    /// The posting list of the series that `m` accepts among those carrying the label:
    /// borrowed for an equality matcher (the common case: no copy of a long list), built by
    /// [`Index::union_where`] otherwise.
    fn accepted(&self, m: &Matcher) -> Cow<'_, [u64]> {
        if m.op == MatchOp::Equal {
            let list = self.postings.get(&m.name).and_then(|v| v.get(&m.value));
            return Cow::Borrowed(list.map_or(&[][..], Vec::as_slice));
        }
        Cow::Owned(self.union_where(m, true))
    }

    /// Ids matching all `matchers`, ascending. With `require_positive`, a selector whose
    /// every matcher matches the empty value is [`DbError::EmptySelector`]; without it, such a
    /// selector (or an empty one) selects every series. The positive matchers' lists are
    /// intersected shortest first (`usage_user{host="h1",cpu="c1"}` starts from the host's
    /// hundred series, not the metric's ten thousand).
    pub fn select_ids(&self, matchers: &[Matcher], require_positive: bool) -> Result<Vec<u64>, DbError> {
        let mut lists: Vec<Cow<'_, [u64]>> = matchers
            .iter()
            .filter(|m| !m.matches_empty())
            .map(|m| self.accepted(m))
            .collect();
        lists.sort_by_key(|l| l.len());
        let mut result = match lists.split_first() {
            Some((first, rest)) => {
                let mut r = first.to_vec();
                for l in rest {
                    if r.is_empty() {
                        break;
                    }
                    r = intersect(&r, l);
                }
                r
            }
            None if require_positive => return Err(DbError::EmptySelector),
            None => (0..self.keys.len() as u64).collect(),
        };
        for m in matchers.iter().filter(|m| m.matches_empty()) {
            if result.is_empty() {
                break;
            }
            let reject = self.union_where(m, false);
            result = subtract(&result, &reject);
        }
        Ok(result)
    }

    /// Sorts ids by their series key.
    pub fn sort_by_key(&self, ids: &mut [u64]) {
        ids.sort_unstable_by(|a, b| {
            let ka = usize::try_from(*a).ok().and_then(|i| self.keys.get(i));
            let kb = usize::try_from(*b).ok().and_then(|i| self.keys.get(i));
            ka.cmp(&kb)
        });
    }

    pub fn label_names(&self, matchers: &[Matcher], limit: usize) -> Vec<String> {
        if matchers.is_empty() {
            let mut names: Vec<String> = self.postings.keys().cloned().collect();
            names.sort();
            names.truncate(limit);
            return names;
        }
        let Ok(ids) = self.select_ids(matchers, false) else {
            return Vec::new();
        };
        let mut names = BTreeSet::new();
        for id in ids {
            if let Some(k) = self.key(SeriesId(id)) {
                names.insert(METRIC_NAME_LABEL);
                for l in k.labels() {
                    names.insert(l.name.as_str());
                }
            }
        }
        names.into_iter().take(limit).map(str::to_owned).collect()
    }

    pub fn label_values(&self, name: &str, matchers: &[Matcher], limit: usize) -> Vec<String> {
        if matchers.is_empty() {
            return self
                .postings
                .get(name)
                .map(|v| v.keys().take(limit).cloned().collect())
                .unwrap_or_default();
        }
        let Ok(ids) = self.select_ids(matchers, false) else {
            return Vec::new();
        };
        let mut values = BTreeSet::new();
        for id in ids {
            if let Some(v) = self.key(SeriesId(id)).and_then(|k| k.get(name)) {
                values.insert(v);
            }
        }
        values.into_iter().take(limit).map(str::to_owned).collect()
    }

    /// Label names (`__name__` included) carried by the series `ids`, sorted, at most `limit`.
    pub fn label_names_of(&self, ids: &[u64], limit: usize) -> Vec<String> {
        let mut names = BTreeSet::new();
        for id in ids {
            if let Some(k) = self.key(SeriesId(*id)) {
                names.insert(METRIC_NAME_LABEL);
                for l in k.labels() {
                    names.insert(l.name.as_str());
                }
            }
        }
        names.into_iter().take(limit).map(str::to_owned).collect()
    }

    /// Values of label `name` among the series `ids`, sorted, at most `limit`.
    pub fn label_values_of(&self, name: &str, ids: &[u64], limit: usize) -> Vec<String> {
        let mut values = BTreeSet::new();
        for id in ids {
            if let Some(v) = self.key(SeriesId(*id)).and_then(|k| k.get(name)) {
                values.insert(v);
            }
        }
        values.into_iter().take(limit).map(str::to_owned).collect()
    }

    /// All keys in id order, for checkpointing.
    pub fn keys(&self) -> &[SeriesKey] {
        &self.keys
    }
}

/// Ascending `a ∩ b` of two ascending lists. A short `a` against a long `b` searches `b`
/// (galloping forward from the last hit) instead of walking all of it.
fn intersect(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    if a.len().saturating_mul(16) < b.len() {
        let mut rest = b;
        for x in a {
            // gallop: the first `bound` (1, 2, 4, …) whose element is ≥ x brackets the answer,
            // so a short list of neighbouring ids (one host's series, created together) costs
            // a step or two per id instead of a binary search over all of `rest`
            let mut bound = 1;
            while rest.get(bound - 1).is_some_and(|y| y < x) {
                bound *= 2;
            }
            let lo = bound / 2;
            let window = rest.get(lo..bound.min(rest.len())).unwrap_or(&[]);
            let at = lo + window.partition_point(|y| y < x);
            rest = rest.get(at..).unwrap_or(&[]);
            if rest.first() == Some(x) {
                out.push(*x);
            }
        }
        return out;
    }
    let (mut i, mut j) = (0, 0);
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        match x.cmp(y) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(*x);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

fn subtract(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for x in a {
        while b.get(j).is_some_and(|y| y < x) {
            j += 1;
        }
        if b.get(j) != Some(x) {
            out.push(*x);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::Label;

    fn key(name: &str, labels: &[(&str, &str)]) -> SeriesKey {
        SeriesKey::new(name, labels.iter().map(|(k, v)| Label::new(*k, *v)).collect()).unwrap()
    }

    #[test]
    fn matchers_select_through_postings() {
        let mut ix = Index::default();
        ix.insert(key("up", &[("job", "a"), ("env", "prod")]));
        ix.insert(key("up", &[("job", "b")]));
        ix.insert(key("cpu", &[("job", "a")]));
        let m = |op, n: &str, v: &str| Matcher::new(op, n, v).unwrap();
        let cases: Vec<(Vec<Matcher>, Vec<u64>)> = vec![
            (vec![m(MatchOp::Equal, "__name__", "up")], vec![0, 1]),
            (
                vec![m(MatchOp::Equal, "__name__", "up"), m(MatchOp::Equal, "env", "")],
                vec![1],
            ),
            (
                vec![
                    m(MatchOp::Equal, "__name__", "up"),
                    m(MatchOp::NotEqual, "env", "prod"),
                ],
                vec![1],
            ),
            (vec![m(MatchOp::Regex, "job", "a|b")], vec![0, 1, 2]),
            (
                vec![
                    m(MatchOp::Regex, "__name__", ".+"),
                    m(MatchOp::NotRegex, "job", "a"),
                ],
                vec![1],
            ),
            (vec![m(MatchOp::Regex, "job", "c.*")], vec![]),
        ];
        for (ms, want) in cases {
            assert_eq!(ix.select_ids(&ms, true).unwrap(), want, "{ms:?}");
        }
        assert!(matches!(
            ix.select_ids(&[m(MatchOp::NotEqual, "job", "a")], true),
            Err(DbError::EmptySelector)
        ));
        assert_eq!(ix.count_for_name("up"), 2);
        assert_eq!(ix.label_values("job", &[], 10), vec!["a", "b"]);
        assert_eq!(ix.label_names(&[], 10), vec!["__name__", "env", "job"]);
        assert_eq!(
            ix.label_names(&[m(MatchOp::Equal, "__name__", "cpu")], 10),
            vec!["__name__", "job"]
        );
    }

    proptest::proptest! {
        /// Both intersection paths (walk, and search when one list is 16x longer) equal the
        /// set intersection.
        #[test]
        fn intersect_is_the_set_intersection(
            a in proptest::collection::btree_set(0u64..2_000, 0..40),
            b in proptest::collection::btree_set(0u64..2_000, 0..1_500),
            run in 0u64..2_000,
        ) {
            let (a, b): (Vec<u64>, Vec<u64>) = (a.into_iter().collect(), b.into_iter().collect());
            let want: Vec<u64> = a.iter().filter(|x| b.binary_search(x).is_ok()).copied().collect();
            proptest::prop_assert_eq!(intersect(&a, &b), want.clone());
            proptest::prop_assert_eq!(intersect(&b, &a), want);
            // a run of neighbouring ids (one host's series) against a long list
            let a: Vec<u64> = (run..run + 30).collect();
            let want: Vec<u64> = a.iter().filter(|x| b.binary_search(x).is_ok()).copied().collect();
            proptest::prop_assert_eq!(intersect(&a, &b), want);
        }
    }
}
