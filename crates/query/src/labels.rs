//! Label sets as the evaluator sees them: name/value pairs sorted by name, with the metric
//! name as the ordinary label `__name__`, and no empty values (an empty value means "no such
//! label", as in Prometheus).

use std::fmt;

use model::{METRIC_NAME_LABEL, SeriesKey};

/// A sorted, duplicate-free label set, `__name__` included.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// The empty label set.
    pub fn new() -> Labels {
        Labels(Vec::new())
    }

    /// The labels of a stored series, its name as `__name__`.
    pub fn from_key(key: &SeriesKey) -> Labels {
        let mut v = Vec::with_capacity(key.labels().len() + 1);
        v.push((METRIC_NAME_LABEL.to_owned(), key.name().to_owned()));
        for l in key.labels() {
            v.push((l.name.clone(), l.value.clone()));
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Labels(v)
    }

    /// Builds a set from pairs in any order; later duplicates win, empty values are dropped.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Labels {
        let mut out = Labels::new();
        for (k, v) in pairs {
            out.set(&k, &v);
        }
        out
    }

    /// The pairs, sorted by name.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// The value of a label, `""` when absent.
    pub fn get(&self, name: &str) -> &str {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            Ok(i) => self.0.get(i).map_or("", |(_, v)| v.as_str()),
            Err(_) => "",
        }
    }

    /// Sets a label; an empty value removes it.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            Ok(i) => {
                if value.is_empty() {
                    self.0.remove(i);
                } else if let Some(slot) = self.0.get_mut(i) {
                    slot.1 = value.to_owned();
                }
            }
            Err(i) => {
                if !value.is_empty() {
                    self.0.insert(i, (name.to_owned(), value.to_owned()));
                }
            }
        }
    }

    /// Removes a label if present.
    pub fn remove(&mut self, name: &str) {
        if let Ok(i) = self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            self.0.remove(i);
        }
    }

    /// Removes the metric name.
    pub fn drop_name(&mut self) {
        self.remove(METRIC_NAME_LABEL);
    }

    /// Keeps only the named labels (`by`).
    pub fn keep_only(&self, names: &[String]) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|(k, _)| names.iter().any(|n| n == k))
                .cloned()
                .collect(),
        )
    }

    /// Drops the named labels and the metric name (`without`, `ignoring`).
    pub fn without(&self, names: &[String]) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|(k, _)| k != METRIC_NAME_LABEL && !names.iter().any(|n| n == k))
                .cloned()
                .collect(),
        )
    }

    /// Drops the named labels, keeping the metric name unless it is named.
    pub fn without_keep_name(&self, names: &[String]) -> Labels {
        Labels(
            self.0
                .iter()
                .filter(|(k, _)| !names.iter().any(|n| n == k))
                .cloned()
                .collect(),
        )
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Labels {
    /// Prometheus notation, `name{a="1"}`, as the test files write it; a name that is not
    /// a classic identifier is quoted inside the braces (`{"a.b", x="1"}`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.get(METRIC_NAME_LABEL);
        let classic = name
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        let mut first = true;
        if classic {
            write!(f, "{name}{{")?;
        } else {
            write!(f, "{{{name:?}")?;
            first = false;
        }
        for (k, v) in &self.0 {
            if k == METRIC_NAME_LABEL {
                continue;
            }
            if !first {
                write!(f, ", ")?;
            }
            first = false;
            write!(f, "{k}={v:?}")?;
        }
        write!(f, "}}")
    }
}
