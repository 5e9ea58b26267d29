//! Golden tests: every `tests/data/*.txt` file is a script in Prometheus' own
//! `promql/testdata/*.test` format, run against the in-memory reader.
//!
//! ```text
//! load 10s                              # samples every 10 s, starting at 0
//!   metric{a="1"} 0+1x5 _ stale 7 NaN   # 0 1 2 3 4 5, a gap, a stale marker, 7, NaN
//! eval instant at 1m sum(metric)        # expected results follow, indented
//!   {} 5
//! eval range from 0 to 1m step 30s metric
//!   metric{a="1"} 0 3 _
//! eval_fail instant at 0 foo(
//! eval_ordered instant at 1m sort(metric)
//! clear
//! delayed_name_removal on               # Prometheus 3's lazy name drop from here on (off: 2.42)
//! ```
//! Values compare with a relative tolerance of 1e-6 (Prometheus' `defaultEpsilon`), NaN
//! equals NaN. Results are compared as sets unless the command is `eval_ordered`.

use model::{MatchOp, SeriesKey};
use query::eval::{QueryValue, Steps};
use query::time::{format_value, parse_duration};
use query::{Labels, MemReader, QueryLimits, evaluate_instant, evaluate_range, parse_selector};

const STALE: f64 = f64::from_bits(0x7ff0_0000_0000_0002);

/// Result rows: labels (`None` for a scalar) and one optional value per step.
type Rows = Vec<(Option<Labels>, Vec<Option<f64>>)>;

#[derive(Debug)]
enum Cmd {
    Load {
        interval: i64,
        series: Vec<(SeriesKey, Vec<Option<f64>>)>,
    },
    Clear,
    /// `delayed_name_removal on|off`: [`QueryLimits::delayed_name_removal`] from here on.
    DelayedNameRemoval(bool),
    Eval {
        line: usize,
        kind: Kind,
        at: EvalAt,
        expr: String,
        expect: Vec<(Option<Labels>, Vec<Option<f64>>)>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Eval,
    Ordered,
    Fail,
}

#[derive(Debug, Clone, Copy)]
enum EvalAt {
    Instant(i64),
    Range(Steps),
}

fn dur(s: &str) -> i64 {
    parse_duration(s).unwrap_or_else(|| panic!("bad duration {s:?}"))
}

/// Splits `metric{a="b"} rest` into the series part and the rest.
fn split_series(line: &str) -> (&str, &str) {
    let mut in_quote = false;
    let mut escaped = false;
    let mut depth = 0;
    for (i, c) in line.char_indices() {
        if in_quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quote = false;
            }
            continue;
        }
        match c {
            '"' => in_quote = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return (&line[..=i], line[i + 1..].trim());
                }
            }
            c if c.is_whitespace() && depth == 0 => return (&line[..i], line[i..].trim()),
            _ => {}
        }
    }
    (line, "")
}

fn parse_labels(s: &str) -> Labels {
    if s.trim() == "{}" {
        return Labels::new();
    }
    let matchers = parse_selector(s).unwrap_or_else(|e| panic!("bad series {s:?}: {e}"));
    Labels::from_pairs(matchers.into_iter().map(|m| {
        assert_eq!(m.op, MatchOp::Equal, "series {s:?} must use = only");
        (m.name, m.value)
    }))
}

fn key_of(l: &Labels) -> SeriesKey {
    let name = l.get("__name__").to_owned();
    let labels = l
        .pairs()
        .iter()
        .filter(|(k, _)| k != "__name__")
        .map(|(k, v)| model::Label::new(k.clone(), v.clone()))
        .collect();
    SeriesKey::new(name, labels).unwrap()
}

fn parse_number(s: &str) -> f64 {
    match s {
        "stale" => STALE,
        "NaN" => f64::NAN,
        "Inf" | "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s.parse().unwrap_or_else(|_| panic!("bad number {s:?}")),
    }
}

/// Expands `1 2 _ 0+10x3 1-1x2 _x2 stale 5x2` into one optional value per step.
fn parse_values(s: &str) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for item in s.split_whitespace() {
        if item == "_" {
            out.push(None);
            continue;
        }
        if let Some((base, times)) = item.split_once('x') {
            let n: usize = times.parse().unwrap_or_else(|_| panic!("bad repeat {item:?}"));
            if base == "_" {
                out.extend(std::iter::repeat_n(None, n));
                continue;
            }
            // base is `start`, `start+inc` or `start-inc` (start may itself be negative)
            let split = base
                .char_indices()
                .skip(1)
                .find(|(i, c)| (*c == '+' || *c == '-') && !base[..*i].ends_with('e'))
                .map(|(i, _)| i);
            let (start, inc) = match split {
                Some(i) => (parse_number(&base[..i]), parse_number(&base[i..])),
                None => (parse_number(base), 0.0),
            };
            for k in 0..=n {
                out.push(Some(start + inc * k as f64));
            }
            continue;
        }
        out.push(Some(parse_number(item)));
    }
    out
}

/// Parses a script; with `strict = false` (foreign files) a command this harness cannot
/// read is skipped instead of failing the test.
fn parse_script(text: &str, strict: bool) -> Vec<Cmd> {
    let lines: Vec<&str> = text.lines().collect();
    let mut cmds = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        let lineno = i + 1;
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut body = Vec::new();
        while i < lines.len() && lines[i].starts_with(char::is_whitespace) && !lines[i].trim().is_empty() {
            if !lines[i].trim().starts_with('#') {
                body.push(lines[i].trim());
            }
            i += 1;
        }
        if strict {
            cmds.push(parse_command(line, &body, lineno));
        } else if let Ok(cmd) = std::panic::catch_unwind(|| parse_command(line, &body, lineno)) {
            cmds.push(cmd);
        }
    }
    cmds
}

fn parse_command(line: &str, body: &[&str], lineno: usize) -> Cmd {
    {
        if let Some(rest) = line.strip_prefix("load ") {
            let interval = dur(rest.trim());
            let series = body
                .iter()
                .map(|l| {
                    let (s, v) = split_series(l);
                    (key_of(&parse_labels(s)), parse_values(v))
                })
                .collect();
            Cmd::Load { interval, series }
        } else if line == "clear" {
            Cmd::Clear
        } else if let Some(v) = line.strip_prefix("delayed_name_removal ") {
            Cmd::DelayedNameRemoval(match v.trim() {
                "on" => true,
                "off" => false,
                other => panic!("line {lineno}: delayed_name_removal {other:?}, want on or off"),
            })
        } else if line.starts_with("eval") {
            let (head, rest) = line.split_once(' ').unwrap();
            let kind = match head {
                "eval" | "eval_warn" | "eval_info" => Kind::Eval,
                "eval_ordered" => Kind::Ordered,
                "eval_fail" => Kind::Fail,
                other => panic!("line {lineno}: unknown command {other}"),
            };
            let (at, expr) = if let Some(r) = rest.strip_prefix("instant at ") {
                let (t, expr) = r.split_once(' ').unwrap();
                (EvalAt::Instant(dur(t)), expr)
            } else if let Some(r) = rest.strip_prefix("range from ") {
                let parts: Vec<&str> = r.splitn(6, ' ').collect();
                assert!(
                    parts.len() == 6 && parts[1] == "to" && parts[3] == "step",
                    "line {lineno}: bad range"
                );
                let steps = Steps {
                    start: dur(parts[0]),
                    end: dur(parts[2]),
                    step: dur(parts[4]),
                };
                (EvalAt::Range(steps), parts[5])
            } else {
                panic!("line {lineno}: bad eval {rest:?}")
            };
            let expect = body
                .iter()
                .filter(|l| !l.starts_with("expect"))
                .map(|l| {
                    let first = l.chars().next().unwrap_or(' ');
                    if first.is_ascii_digit()
                        || first == '-'
                        || l.starts_with("NaN")
                        || l.starts_with("Inf")
                        || l.starts_with("+Inf")
                    {
                        (None, parse_values(l))
                    } else {
                        let (s, v) = split_series(l);
                        (Some(parse_labels(s)), parse_values(v))
                    }
                })
                .collect();
            Cmd::Eval {
                line: lineno,
                kind,
                at,
                expr: expr.to_owned(),
                expect,
            }
        } else {
            panic!("line {lineno}: unknown command {line:?}");
        }
    }
}

fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || diff < f64::MIN_POSITIVE {
        return diff < 1e-6 * f64::MIN_POSITIVE;
    }
    diff / (a.abs() + b.abs()).min(f64::MAX) < 1e-6
}

fn show(v: &[Option<f64>]) -> String {
    v.iter()
        .map(|x| x.map_or("_".to_owned(), format_value))
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_file(name: &str, text: &str, strict: bool, failures: &mut Vec<String>) -> usize {
    let mut reader = MemReader::new();
    let mut limits = QueryLimits::default();
    let mut evals = 0;
    for cmd in parse_script(text, strict) {
        match cmd {
            Cmd::Clear => reader.clear(),
            Cmd::DelayedNameRemoval(on) => limits.delayed_name_removal = on,
            Cmd::Load { interval, series } => {
                for (key, vals) in series {
                    for (i, v) in vals.into_iter().enumerate() {
                        if let Some(v) = v {
                            reader.add(&key, i as i64 * interval, v);
                        }
                    }
                }
            }
            Cmd::Eval {
                line,
                kind,
                at,
                expr,
                expect,
            } => {
                evals += 1;
                let here = format!("{name}:{line}: {expr}");
                let got: Result<Rows, String> = match at {
                    EvalAt::Instant(t) => evaluate_instant(&reader, &expr, t, &limits)
                        .map(|v| match v {
                            QueryValue::Scalar { v, .. } => vec![(None, vec![Some(v)])],
                            QueryValue::String { .. } => vec![],
                            QueryValue::Vector(s) => {
                                s.into_iter().map(|s| (Some(s.labels), vec![Some(s.v)])).collect()
                            }
                            QueryValue::Matrix(m) => m
                                .into_iter()
                                .map(|s| (Some(s.labels), s.vals.into_iter().map(Some).collect()))
                                .collect(),
                        })
                        .map_err(|e| e.to_string()),
                    EvalAt::Range(steps) => evaluate_range(&reader, &expr, steps, &limits)
                        .map(|m| {
                            m.into_iter()
                                .map(|s| {
                                    let mut pts = vec![None; steps.len()];
                                    for (t, v) in s.ts.iter().zip(&s.vals) {
                                        pts[((t - steps.start) / steps.step) as usize] = Some(*v);
                                    }
                                    (Some(s.labels), pts)
                                })
                                .collect()
                        })
                        .map_err(|e| e.to_string()),
                };
                match (kind, got) {
                    (Kind::Fail, Ok(v)) => failures.push(format!("{here}\n  expected an error, got {v:?}")),
                    (Kind::Fail, Err(_)) => {}
                    (_, Err(e)) => failures.push(format!("{here}\n  error: {e}")),
                    (_, Ok(got)) => {
                        let mut problems = Vec::new();
                        let scalar_expected = expect.iter().all(|(l, _)| l.is_none());
                        if got.len() != expect.len() {
                            problems.push(format!("expected {} results, got {}", expect.len(), got.len()));
                        }
                        for (pos, (el, ev)) in expect.iter().enumerate() {
                            let found = if scalar_expected || kind == Kind::Ordered {
                                got.get(pos)
                            } else {
                                got.iter().find(|(gl, _)| gl == el)
                            };
                            match found {
                                None => problems.push(format!(
                                    "missing {} {}",
                                    el.as_ref().map_or("scalar".into(), |l| l.to_string()),
                                    show(ev)
                                )),
                                Some((gl, gv)) => {
                                    if kind == Kind::Ordered && gl != el {
                                        problems
                                            .push(format!("at position {pos} expected {el:?}, got {gl:?}"));
                                    }
                                    let same = gv.len() == ev.len()
                                        && gv.iter().zip(ev).all(|(a, b)| match (a, b) {
                                            (Some(a), Some(b)) => close(*a, *b),
                                            (None, None) => true,
                                            _ => false,
                                        });
                                    if !same {
                                        problems.push(format!(
                                            "{}: expected {}, got {}",
                                            el.as_ref().map_or("scalar".into(), |l| l.to_string()),
                                            show(ev),
                                            show(gv)
                                        ));
                                    }
                                }
                            }
                        }
                        if !problems.is_empty() {
                            let all: Vec<String> = got
                                .iter()
                                .map(|(l, v)| {
                                    format!(
                                        "{} {}",
                                        l.as_ref().map_or("scalar".into(), |l| l.to_string()),
                                        show(v)
                                    )
                                })
                                .collect();
                            failures.push(format!(
                                "{here}\n  {}\n  got: {}",
                                problems.join("\n  "),
                                all.join(" | ")
                            ));
                        }
                    }
                }
            }
        }
    }
    evals
}

#[test]
fn golden_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let mut failures = Vec::new();
    let mut evals = 0;
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
    {
        let text = std::fs::read_to_string(path).unwrap();
        evals += run_file(
            &path.file_name().unwrap().to_string_lossy(),
            &text,
            true,
            &mut failures,
        );
    }
    assert!(evals > 0, "no golden evals found in {}", dir.display());
    assert!(
        failures.is_empty(),
        "{} of {evals} evals failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn value_expansion() {
    let cases: &[(&str, &str)] = &[
        ("1 2 _ 3", "1 2 _ 3"),
        ("0+10x3", "0 10 20 30"),
        ("10-2x2", "10 8 6"),
        ("-1+1x2", "-1 0 1"),
        ("_x2 5x1", "_ _ 5 5"),
        ("NaN Inf -Inf", "NaN +Inf -Inf"),
    ];
    for (input, want) in cases {
        assert_eq!(show(&parse_values(input)), *want, "{input}");
    }
}

/// Runs foreign scripts (for example Prometheus' own `promql/testdata`) from the directory
/// in `PROMQL_TEST_DIR`, skipping commands this harness cannot read, and prints every
/// disagreement. Not part of the suite's verdict: the differential test is.
#[test]
fn foreign_scripts_when_asked() {
    let Ok(dir) = std::env::var("PROMQL_TEST_DIR") else {
        return;
    };
    std::panic::set_hook(Box::new(|_| {}));
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    let mut failures = Vec::new();
    let mut evals = 0;
    for path in &entries {
        let text = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        evals += run_file(&name, &text, false, &mut failures);
    }
    let _ = std::panic::take_hook();
    println!(
        "{} of {evals} foreign evals disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
