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
    let mut out = String::new();
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(payload) {
        collect_strings(&value, &mut out, max_bytes);
    }
    out
}

fn collect_strings(value: &serde_json::Value, out: &mut String, max_bytes: usize) {
    match value {
        serde_json::Value::String(s) => {
            if out.len() >= max_bytes {
                return;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            let room = max_bytes.saturating_sub(out.len());
            let mut cut = s.len().min(room);
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push_str(&s[..cut]);
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_strings(item, out, max_bytes);
            }
        }
        serde_json::Value::Object(map) => {
            for item in map.values() {
                collect_strings(item, out, max_bytes);
            }
        }
        serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {}
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
