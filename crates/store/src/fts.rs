//! Full-text helpers: the text an event contributes to the index, and the translation of a
//! user's words into a search expression that cannot be malformed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::{QueryLimits, StoreError};

/// Labels as indexed text: `name=value` pairs separated by spaces.
pub(crate) fn labels_text(labels: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (name, value) in labels {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "{name}={value}");
    }
    out
}

/// The string values inside a JSON payload, separated by spaces, at most `max_bytes` long
/// (cut on a character boundary). Keys, numbers and booleans are not indexed; a payload that
/// is not valid JSON contributes nothing (validated events always hold valid JSON).
pub(crate) fn payload_text(payload: &str, max_bytes: usize) -> String {
    use serde::de::DeserializeSeed as _;
    let mut out = String::new();
    // Streamed: no JSON tree is built, only the string values are copied out.
    let mut de = serde_json::Deserializer::from_str(payload);
    let ok = Collector {
        out: &mut out,
        max_bytes,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end())
    .is_ok();
    if !ok {
        out.clear();
    }
    out
}

/// Appends every string value it visits (not keys) to `out`, within `max_bytes`.
struct Collector<'a> {
    out: &'a mut String,
    max_bytes: usize,
}

impl Collector<'_> {
    fn push(&mut self, s: &str) {
        if self.out.len() >= self.max_bytes {
            return;
        }
        if !self.out.is_empty() {
            self.out.push(' ');
        }
        let room = self.max_bytes.saturating_sub(self.out.len());
        let mut cut = s.len().min(room);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.out.push_str(&s[..cut]);
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Collector<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Collector<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: serde::de::Error>(mut self, v: &str) -> Result<(), E> {
        self.push(v);
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Collector {
                out: &mut *self.out,
                max_bytes: self.max_bytes,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            map.next_value_seed(Collector {
                out: &mut *self.out,
                max_bytes: self.max_bytes,
            })?;
        }
        Ok(())
    }
}

/// Translates whitespace-separated words into an FTS5 expression: each word becomes a quoted
/// phrase (so `chef.run` matches the adjacent tokens `chef run`), a trailing `*` makes it a
/// prefix query, and all words must match. Nothing the user types is interpreted as FTS5
/// syntax. Returns `None` when there are no words.
pub(crate) fn match_expression(q: &str, limits: &QueryLimits) -> Result<Option<String>, StoreError> {
    if q.len() > limits.max_search_bytes {
        return Err(StoreError::InvalidQuery(format!(
            "search text is {} bytes, more than the limit of {}",
            q.len(),
            limits.max_search_bytes
        )));
    }
    let mut expr = String::new();
    let mut words = 0;
    for word in q.split_whitespace() {
        let (body, prefix) = match word.strip_suffix('*') {
            Some(body) if !body.is_empty() => (body, true),
            _ => (word, false),
        };
        // A word with no letters or digits tokenizes to nothing and would match nothing.
        if !body.chars().any(char::is_alphanumeric) {
            continue;
        }
        words += 1;
        if words > limits.max_search_words {
            return Err(StoreError::InvalidQuery(format!(
                "more than {} search words",
                limits.max_search_words
            )));
        }
        if !expr.is_empty() {
            expr.push(' ');
        }
        expr.push('"');
        expr.push_str(&body.replace('"', "\"\""));
        expr.push('"');
        if prefix {
            expr.push('*');
        }
    }
    Ok((!expr.is_empty()).then_some(expr))
}

/// The full-text condition of a query: the user's words, searched in the text columns only,
/// and, when the query names a host or service, that value as a phrase in its own column.
/// The host and service phrases only narrow the candidates (`web-01` also matches
/// `web-01-b`); the exact comparison stays in SQL.
pub(crate) fn full_expression(words: &str, host: Option<&str>, service: Option<&str>) -> String {
    let mut expr = format!("{{kind subject summary labels payload}} : ({words})");
    for (column, value) in [("host", host), ("service", service)] {
        if let Some(value) = value.filter(|v| v.chars().any(char::is_alphanumeric)) {
            let _ = write!(expr, " AND {column} : \"{}\"", value.replace('"', "\"\""));
        }
    }
    expr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_expression_table() {
        let limits = QueryLimits {
            max_search_words: 3,
            ..QueryLimits::default()
        };
        let cases: &[(&str, Option<&str>)] = &[
            ("", None),
            ("   ", None),
            ("nginx", Some(r#""nginx""#)),
            ("chef.run web1", Some(r#""chef.run" "web1""#)),
            ("ngi*", Some(r#""ngi"*"#)),
            ("*", None),
            ("say \"hi\"", Some(r#""say" """hi""""#)),
            ("NEAR( OR AND", Some(r#""NEAR(" "OR" "AND""#)),
            ("-- ;; !!", None),
        ];
        for (q, want) in cases {
            let got = match_expression(q, &limits).unwrap();
            assert_eq!(got.as_deref(), *want, "{q}");
        }
        assert!(match_expression("a b c d", &limits).is_err());
        assert!(match_expression(&"x".repeat(2000), &limits).is_err());
    }

    #[test]
    fn full_expression_table() {
        let cases: &[(Option<&str>, Option<&str>, &str)] = &[
            (None, None, r#"{kind subject summary labels payload} : ("a")"#),
            (
                Some("web-01"),
                None,
                r#"{kind subject summary labels payload} : ("a") AND host : "web-01""#,
            ),
            (
                Some("--"),
                Some("db\"x"),
                r#"{kind subject summary labels payload} : ("a") AND service : "db""x""#,
            ),
        ];
        for (host, service, want) in cases {
            assert_eq!(full_expression(r#""a""#, *host, *service), *want);
        }
    }

    #[test]
    fn payload_text_table() {
        let cases: &[(&str, usize, &str)] = &[
            (
                r#"{"a":"one","b":["two",3,true,{"c":"three"}]}"#,
                100,
                "one two three",
            ),
            (r#""just a string""#, 100, "just a string"),
            (r#"42"#, 100, ""),
            (r#"{"a":"héllo"}"#, 2, "h"),
            (r#"not json"#, 100, ""),
        ];
        for (payload, max, want) in cases {
            assert_eq!(payload_text(payload, *max), *want, "{payload}");
        }
    }
}
