//! Series identity: a metric name plus a sorted label set.

use std::fmt;

/// The pseudo-label that carries the metric name in selectors and exports.
pub const METRIC_NAME_LABEL: &str = "__name__";

/// A storage-assigned number for a series, stable across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesId(pub u64);

/// One label: a name and a value, both UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Label {
    /// The label name; never `__name__` (the metric name lives in [`SeriesKey::name`]).
    pub name: String,
    /// The label value; never empty (an empty value means "no such label", as in Prometheus).
    pub value: String,
}

impl Label {
    /// A label from anything string-like.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Label {
        Label {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// Why a [`SeriesKey`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The metric name was empty.
    #[error("metric name is empty")]
    EmptyName,
    /// A label name was empty.
    #[error("label name is empty")]
    EmptyLabelName,
    /// The same label name appeared twice.
    #[error("label {0:?} appears more than once")]
    DuplicateLabel(String),
    /// A string contained a NUL byte, which the persisted formats reserve as a separator.
    #[error("names and values may not contain NUL bytes")]
    Nul,
}

/// A series: metric name plus labels sorted by name, no duplicates, no empty values.
///
/// Build it with [`SeriesKey::new`], which sorts, drops empty-valued labels and rejects
/// duplicates; the fields are private so a key is always canonical and two equal series
/// always compare equal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    name: String,
    labels: Vec<Label>,
}

impl SeriesKey {
    /// Canonicalises and validates a series key. A `__name__` label, if given, is rejected as a
    /// duplicate of the name unless it equals it, in which case it is dropped.
    pub fn new(name: impl Into<String>, labels: Vec<Label>) -> Result<SeriesKey, KeyError> {
        let name = name.into();
        if name.is_empty() {
            return Err(KeyError::EmptyName);
        }
        if name.contains('\0') {
            return Err(KeyError::Nul);
        }
        let mut labels: Vec<Label> = labels.into_iter().filter(|l| !l.value.is_empty()).collect();
        for l in &labels {
            if l.name.is_empty() {
                return Err(KeyError::EmptyLabelName);
            }
            if l.name.contains('\0') || l.value.contains('\0') {
                return Err(KeyError::Nul);
            }
            if l.name == METRIC_NAME_LABEL && l.value != name {
                return Err(KeyError::DuplicateLabel(l.name.clone()));
            }
        }
        labels.retain(|l| l.name != METRIC_NAME_LABEL);
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        for w in labels.windows(2) {
            if w[0].name == w[1].name {
                return Err(KeyError::DuplicateLabel(w[0].name.clone()));
            }
        }
        Ok(SeriesKey { name, labels })
    }

    /// A series with no labels.
    pub fn from_name(name: impl Into<String>) -> Result<SeriesKey, KeyError> {
        SeriesKey::new(name, Vec::new())
    }

    /// The metric name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The labels, sorted by name.
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }

    /// The value of a label; `__name__` answers the metric name.
    pub fn get(&self, label: &str) -> Option<&str> {
        if label == METRIC_NAME_LABEL {
            return Some(&self.name);
        }
        self.labels
            .binary_search_by(|l| l.name.as_str().cmp(label))
            .ok()
            .map(|i| self.labels[i].value.as_str())
    }

    /// The canonical byte form: `name \0 (label \0 value \0)*`. Stable: persisted formats
    /// and hashes use it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.name.as_bytes());
        out.push(0);
        for l in &self.labels {
            out.extend_from_slice(l.name.as_bytes());
            out.push(0);
            out.extend_from_slice(l.value.as_bytes());
            out.push(0);
        }
    }

    /// Parses the canonical byte form written by [`SeriesKey::encode`].
    pub fn decode(bytes: &[u8]) -> Option<SeriesKey> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split('\0');
        let name = parts.next()?.to_owned();
        let mut labels = Vec::new();
        loop {
            let n = parts.next()?;
            if n.is_empty() {
                // the trailing separator: nothing may follow it
                return parts
                    .next()
                    .is_none()
                    .then(|| SeriesKey::new(name, labels).ok())
                    .flatten();
            }
            let v = parts.next()?;
            labels.push(Label::new(n, v));
        }
    }
}

impl fmt::Display for SeriesKey {
    /// Prometheus notation: `name{a="1",b="2"}`, quoting the name when it is not a
    /// classic identifier (`{"christmaspi.temperature.ham"}`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let classic =
            self.name.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            });
        if classic {
            write!(f, "{}{{", self.name)?;
        } else {
            write!(f, "{{{:?}", self.name)?;
            if !self.labels.is_empty() {
                write!(f, ",")?;
            }
        }
        for (i, l) in self.labels.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{}={:?}", l.name, l.value)?;
        }
        write!(f, "}}")
    }
}

/// One sample of a resolved series: what ingest hands to storage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// The series, resolved by storage.
    pub series: SeriesId,
    /// UTC milliseconds.
    pub ts: i64,
    /// The value; any f64 bit pattern, NaN included (Prometheus' stale marker is a NaN).
    pub value: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_canonical() {
        let a = SeriesKey::new("m", vec![Label::new("b", "2"), Label::new("a", "1")]).unwrap();
        let b = SeriesKey::new(
            "m",
            vec![Label::new("a", "1"), Label::new("b", "2"), Label::new("c", "")],
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.get("a"), Some("1"));
        assert_eq!(a.get("__name__"), Some("m"));
        assert_eq!(a.to_string(), r#"m{a="1",b="2"}"#);
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert_eq!(SeriesKey::from_name(""), Err(KeyError::EmptyName));
        assert!(matches!(
            SeriesKey::new("m", vec![Label::new("a", "1"), Label::new("a", "2")]),
            Err(KeyError::DuplicateLabel(_))
        ));
        assert_eq!(SeriesKey::from_name("a\0b"), Err(KeyError::Nul));
    }

    #[test]
    fn graphite_paths_display_quoted() {
        let k = SeriesKey::from_name("christmaspi.temperature.ham").unwrap();
        assert_eq!(k.to_string(), r#"{"christmaspi.temperature.ham"}"#);
    }

    proptest::proptest! {
        #[test]
        fn encode_decode_round_trips(name in "[^\0]{1,20}", labels in proptest::collection::btree_map("[^\0]{1,8}", "[^\0]{1,8}", 0..5)) {
            let labels: Vec<Label> = labels.into_iter().filter(|(k, _)| k != METRIC_NAME_LABEL).map(|(k, v)| Label::new(k, v)).collect();
            let key = SeriesKey::new(name, labels).unwrap();
            let mut buf = Vec::new();
            key.encode(&mut buf);
            proptest::prop_assert_eq!(SeriesKey::decode(&buf), Some(key));
        }
    }
}
