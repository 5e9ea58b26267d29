//! The PromQL differential test: the same data set is loaded into the real `roaster` binary and
//! into the real Prometheus 2.42 (Debian package); every query of the corpus
//! `tests/data/promql/corpus.txt`, then [`GENERATED_CASES`] seeded random queries
//! ([`generated_cases`]), are asked of both over HTTP (`/api/v1/query`, `/api/v1/query_range`)
//! and the answers compared; so are parameter-format cases and a few metadata requests
//! (`/api/v1/series`, `/api/v1/labels`, `/api/v1/label/<name>/values`).
//!
//! - **Data** ([`data_set`]): 44 series over one hour (`T0` = 2023-11-14T22:00:00Z to `T0`+1h)
//!   at 15 s — counters with resets, gauges with NaN and +Inf samples, classic histogram
//!   `_bucket`/`_sum`/`_count` series, UTF-8 label values, a label value with a newline,
//!   gaps longer and shorter than the 5 m lookback, series that start late or end early, and
//!   one series with irregular, sub-second timestamps (multiples of 125 ms, so `promtool`'s
//!   float seconds convert to the same milliseconds). Prometheus gets it as OpenMetrics through
//!   `promtool tsdb create-blocks-from openmetrics`; Roaster through its robot plane's JSON
//!   ingest with an `ingest` token. Values are written in shortest round-trip form in both.
//! - **Stale markers** ([`stale_set`]): OpenMetrics text cannot carry them, so three more series
//!   after `T0` + 1 h go to both servers through remote-write (Prometheus started with
//!   `--web.enable-remote-write-receiver`; its head takes them after the blocks), with the
//!   stale-marker NaN `0x7ff0000000000002`. Gaps without markers exercise the lookback.
//! - **Not in the differential set**: quoted UTF-8 metric names (`{"christmaspi.temperature.ham"}`:
//!   Prometheus 2.42 cannot parse them); they are pinned by the Roaster-only golden test
//!   [`roaster_only_quoted_utf8_metric_names`].
//! - **Corpus format**: a header `eval instant at <D>` or `eval range from <D> to <D> step <D>`
//!   (`<D>` a duration after `T0` such as `0`, `30m`, `17m30s`) applies to the query lines after
//!   it; `#` starts a comment line. Every non-empty query line is one case.
//! - **Comparison** ([`compare`]): same HTTP status, success/error status and `errorType`; same
//!   result type; the same set of series label sets (order compared only under a top-level
//!   `sort`/`sort_desc`, by value); the same timestamps; values equal within
//!   [`REL_TOLERANCE`] relative or [`ABS_TOLERANCE`] absolute, NaN equal to NaN, infinities
//!   equal by sign; values that are equal spelled the same (`1e+21`). Error messages are
//!   counted (word-for-word matches), not compared.
//! - **Ties in `topk`/`bottomk`**: Prometheus breaks them by Go map order, which changes from
//!   run to run; for a query that starts with `topk`/`bottomk`, when the chosen series differ,
//!   the values at each step must still agree. The generated queries use `topk`/`bottomk`
//!   only at the top for that reason, and no `exp` or `%` (Go's `math.Exp` and glibc's may
//!   differ in the last bit, which `%` turns into a different answer).
//! - **No known differences**: every difference from Prometheus 2.42 fails the test. The
//!   metric name is dropped as 2.42 drops it (Roaster's default; the Prometheus 3 behaviour
//!   behind `[query] delayed_name_removal` is pinned by the Roaster-only test
//!   [`roaster_only_delayed_name_removal`]), `avg_over_time` is 2.42's incremental mean bit
//!   for bit, and `/api/v1/series` honours `start`/`end`.
//! - **Metadata with `start`/`end`** ([`metadata_agrees`]): Roaster lists exactly the series
//!   with a sample in the range (and their label names and values), computed here from the
//!   data set ([`in_range`]); Prometheus 2.42 is coarser, so its answer must be a superset:
//!   `/api/v1/series` keeps a series when one of its *chunks* overlaps the range (the same
//!   answer unless a chunk straddles the range inside a gap, as `stale_gauge{s="marked"}`'s
//!   does in the head), and `/api/v1/labels` and `/label/<name>/values` keep every series
//!   of a *block* overlapping the range (one 2-hour block holds the whole first hour here).
//! - **Run time**: 3 to 6 s once the binary is built (both servers start in parallel; the
//!   data set is ~10,000 samples).
//!
//! When Prometheus or promtool is missing, the test says so and passes — unless
//! `ROASTER_REQUIRE_REAL_CLIENTS` is set (CI sets it), where that is a failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

const ADMIN_TOKEN: &str = "promql-differential-admin-token-0123456789";

/// The data set's first timestamp, unix seconds: 2023-11-14T22:00:00Z (a whole hour).
const T0: i64 = 1_699_999_200;
/// The regular scrape interval of the data set, seconds.
const SCRAPE: i64 = 15;
/// The data set spans `[T0, T0 + SPAN]`, seconds.
const SPAN: i64 = 3600;

/// How many generated queries ([`generated_cases`]) run after the corpus. To hunt further:
/// `PROMQL_DIFF_GENERATED=5000 PROMQL_DIFF_SEED=<u64> cargo test -p roaster --test
/// promql_differential` (a failure prints the query; add it to the corpus when fixed).
const GENERATED_CASES: usize = 1000;

/// Values agree when `|a - b| <= REL_TOLERANCE * max(|a|, |b|)` …
const REL_TOLERANCE: f64 = 1e-9;
/// … or when `|a - b| <= ABS_TOLERANCE` (results that should be 0 but carry rounding noise).
const ABS_TOLERANCE: f64 = 1e-12;

// ---------------------------------------------------------------------------------------------
// The data set

/// One series of the data set: name, labels (sorted by the writers), samples `(ms, value)`.
struct Series {
    name: &'static str,
    labels: Vec<(&'static str, String)>,
    samples: Vec<(i64, f64)>,
}

/// A small deterministic generator (xorshift64*), so the data set is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// An integer in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The regular scrape times in `[from_s, to_s]` after `T0`, as `(ms, index)`.
fn scrapes(from_s: i64, to_s: i64) -> impl Iterator<Item = (i64, i64)> {
    (0..=SPAN / SCRAPE)
        .map(|i| (i * SCRAPE, i))
        .filter(move |(s, _)| *s >= from_s && *s <= to_s)
        .map(|(s, i)| ((T0 + s) * 1000, i))
}

fn lbl(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// Rounds to two decimals, so values print as short decimals.
fn cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The whole data set (see the module doc).
fn data_set() -> Vec<Series> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::new();
    // Counters: 8 series; two of them reset.
    for instance in ["a:9090", "b:9090"] {
        for method in ["get", "post"] {
            for code in ["200", "500"] {
                let scale = if code == "200" { 10 } else { 2 };
                let mut v = 0.0;
                let mut samples = Vec::new();
                for (ms, i) in scrapes(0, SPAN) {
                    v += (rng.below(scale) + u64::from(method == "get")) as f64;
                    let reset_a = instance == "a:9090" && method == "get" && code == "200" && i == 160;
                    let reset_b = instance == "b:9090" && method == "post" && code == "500" && i == 100;
                    if reset_a || reset_b {
                        v = rng.below(3) as f64;
                    }
                    samples.push((ms, v));
                }
                out.push(Series {
                    name: "http_requests_total",
                    labels: lbl(&[
                        ("code", code),
                        ("instance", instance),
                        ("job", "api"),
                        ("method", method),
                    ]),
                    samples,
                });
            }
        }
    }
    // A classic histogram per instance: buckets, sum, count.
    let bounds = ["0.05", "0.1", "0.25", "0.5", "1", "+Inf"];
    for instance in ["a:9090", "b:9090"] {
        let mut counts = [0u64; 6];
        let mut sum = 0.0;
        let mut rows: Vec<(i64, [u64; 6], f64)> = Vec::new();
        for (ms, _) in scrapes(0, SPAN) {
            let n = rng.below(6) + 1;
            for _ in 0..n {
                let bucket = rng.below(6) as usize;
                for c in counts.iter_mut().skip(bucket) {
                    *c += 1;
                }
                sum += [0.03, 0.07, 0.2, 0.4, 0.8, 1.5][bucket];
            }
            rows.push((ms, counts, cents(sum)));
        }
        for (b, le) in bounds.iter().enumerate() {
            out.push(Series {
                name: "request_duration_seconds_bucket",
                labels: lbl(&[("instance", instance), ("job", "api"), ("le", le)]),
                samples: rows.iter().map(|(ms, c, _)| (*ms, c[b] as f64)).collect(),
            });
        }
        out.push(Series {
            name: "request_duration_seconds_sum",
            labels: lbl(&[("instance", instance), ("job", "api")]),
            samples: rows.iter().map(|(ms, _, s)| (*ms, *s)).collect(),
        });
        out.push(Series {
            name: "request_duration_seconds_count",
            labels: lbl(&[("instance", instance), ("job", "api")]),
            samples: rows.iter().map(|(ms, c, _)| (*ms, c[5] as f64)).collect(),
        });
    }
    // Gauges with UTF-8 label values; h2 has two NaN samples, h4 one +Inf.
    for (k, (host, city)) in [
        ("h1", "Zürich"),
        ("h2", "São Paulo"),
        ("h3", "Köln"),
        ("h4", "Oslo"),
    ]
    .into_iter()
    .enumerate()
    {
        let base = 15.0 + 4.0 * k as f64;
        let samples = scrapes(0, SPAN)
            .map(|(ms, i)| {
                let v = if host == "h2" && (i == 40 || i == 41) {
                    f64::NAN
                } else if host == "h4" && i == 200 {
                    f64::INFINITY
                } else {
                    cents(base + 5.0 * ((i as f64) / 20.0 + k as f64).sin() + rng.below(100) as f64 / 100.0)
                };
                (ms, v)
            })
            .collect();
        out.push(Series {
            name: "node_temperature_celsius",
            labels: lbl(&[("city", city), ("host", host)]),
            samples,
        });
    }
    // up: b is down from 30 m to 35 m.
    for instance in ["a:9090", "b:9090"] {
        let samples = scrapes(0, SPAN)
            .map(|(ms, i)| {
                (
                    ms,
                    if instance == "b:9090" && (120..140).contains(&i) {
                        0.0
                    } else {
                        1.0
                    },
                )
            })
            .collect();
        out.push(Series {
            name: "up",
            labels: lbl(&[("instance", instance), ("job", "api")]),
            samples,
        });
    }
    // Gaps: q1 has none from 20 m to 30 m (longer than the lookback), q2 from 20 m to 23 m.
    for (queue, gap) in [("q1", 1200..1800), ("q2", 1200..1380)] {
        let samples = scrapes(0, SPAN)
            .filter(|(ms, _)| !gap.contains(&(ms / 1000 - T0)))
            .map(|(ms, _)| (ms, rng.below(50) as f64))
            .collect();
        out.push(Series {
            name: "queue_depth",
            labels: lbl(&[("queue", queue)]),
            samples,
        });
    }
    // A series that ends early and one that starts late.
    out.push(Series {
        name: "early_gauge",
        labels: lbl(&[("kind", "early")]),
        samples: scrapes(0, 1200).map(|(ms, i)| (ms, i as f64 * 0.5)).collect(),
    });
    out.push(Series {
        name: "late_gauge",
        labels: lbl(&[("kind", "late")]),
        samples: scrapes(2400, SPAN)
            .map(|(ms, i)| (ms, 100.0 - i as f64))
            .collect(),
    });
    // Irregular timestamps: 10 s to 20 s apart, multiples of 125 ms.
    let mut t = (T0 * 1000) + 7_375;
    let mut samples = Vec::new();
    while t <= (T0 + SPAN) * 1000 {
        samples.push((t, cents(rng.below(1000) as f64 / 7.0)));
        t += 10_000 + 125 * rng.below(80) as i64;
    }
    out.push(Series {
        name: "jitter_gauge",
        labels: lbl(&[("src", "j")]),
        samples,
    });
    // Large values with integer steps.
    for (k, host) in ["h1", "h2", "h3"].into_iter().enumerate() {
        let mut v = 1.0e9 * (k + 1) as f64;
        let samples = scrapes(0, SPAN)
            .map(|(ms, _)| {
                v += rng.below(4096) as f64 - 2048.0;
                (ms, v)
            })
            .collect();
        out.push(Series {
            name: "memory_bytes",
            labels: lbl(&[("host", host)]),
            samples,
        });
    }
    // A sparse counter: changes rarely; s2 resets once.
    for service in ["s1", "s2"] {
        let mut v = 0.0;
        let samples = scrapes(0, SPAN)
            .map(|(ms, i)| {
                if i % 37 == 0 {
                    v += 1.0;
                }
                if service == "s2" && i == 150 {
                    v = 0.0;
                }
                (ms, v)
            })
            .collect();
        out.push(Series {
            name: "errors_total",
            labels: lbl(&[("service", service)]),
            samples,
        });
    }
    // A label value with a newline (regex `.` and newlines).
    out.push(Series {
        name: "multiline_info",
        labels: lbl(&[("text", "line1\nline2")]),
        samples: scrapes(0, SPAN).map(|(ms, _)| (ms, 1.0)).collect(),
    });
    // Info series for joins.
    for (host, version) in [("h1", "1.2.3"), ("h2", "1.2.4"), ("h3", "2.0.0")] {
        out.push(Series {
            name: "deploy_info",
            labels: lbl(&[("host", host), ("version", version)]),
            samples: scrapes(0, SPAN).map(|(ms, _)| (ms, 1.0)).collect(),
        });
    }
    out
}

/// A value as Prometheus' text formats and Roaster's JSON spell it.
fn value_text(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// The data set as OpenMetrics text for `promtool` (timestamps in seconds).
fn openmetrics(data: &[Series]) -> String {
    let mut out = String::new();
    for s in data {
        let labels: Vec<String> = s
            .labels
            .iter()
            .map(|(k, v)| {
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                format!("{k}=\"{v}\"")
            })
            .collect();
        for (ms, v) in &s.samples {
            let secs = format!("{}.{:03}", ms / 1000, ms % 1000);
            let _ = writeln!(
                out,
                "{}{{{}}} {} {secs}",
                s.name,
                labels.join(","),
                value_text(*v)
            );
        }
    }
    out.push_str("# EOF\n");
    out
}

/// The data set as Roaster's JSON ingest body.
fn ingest_json(data: &[Series]) -> String {
    let series: Vec<Value> = data
        .iter()
        .map(|s| {
            let labels: serde_json::Map<String, Value> = s
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), Value::from(v.clone())))
                .collect();
            let samples: Vec<Value> = s
                .samples
                .iter()
                .map(|(ms, v)| {
                    let v = if v.is_finite() {
                        Value::from(*v)
                    } else {
                        Value::from(value_text(*v))
                    };
                    Value::Array(vec![Value::from(*ms), v])
                })
                .collect();
            serde_json::json!({"name": s.name, "labels": labels, "samples": samples})
        })
        .collect();
    serde_json::json!({ "series": series }).to_string()
}

/// Prometheus' stale marker: a NaN with this exact bit pattern ends a series.
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;

/// Series with stale markers, after the main data set (`T0` + 1 h to `T0` + 2 h), sent to both
/// servers through remote-write (OpenMetrics cannot carry stale markers; Prometheus' head takes
/// them after the blocks `promtool` made). `stale_gauge{s="marked"}` is marked stale at
/// 1 h 20 m 15 s, resumes at 1 h 30 m and is marked stale again at 1 h 40 m 15 s;
/// `stale_gauge{s="unmarked"}` just stops at 1 h 20 m (the lookback keeps it 5 m longer);
/// `stale_total` is a counter marked stale at 1 h 30 m 15 s.
fn stale_set() -> Vec<Series> {
    let stale = f64::from_bits(STALE_NAN);
    let at = |s: i64| (T0 + s) * 1000;
    let mut marked = Vec::new();
    let mut unmarked = Vec::new();
    let mut counter = Vec::new();
    for k in 1..=(SPAN / SCRAPE) {
        let s = SPAN + k * SCRAPE;
        let v = (k % 7) as f64 + 0.5;
        if s <= SPAN + 1200 || (SPAN + 1800..=SPAN + 2400).contains(&s) {
            marked.push((at(s), v));
        } else if s == SPAN + 1215 || s == SPAN + 2415 {
            marked.push((at(s), stale));
        }
        if s <= SPAN + 1200 {
            unmarked.push((at(s), v * 2.0));
        }
        if s <= SPAN + 1800 {
            counter.push((at(s), (k * 3) as f64));
        } else if s == SPAN + 1815 {
            counter.push((at(s), stale));
        }
    }
    vec![
        Series {
            name: "stale_gauge",
            labels: lbl(&[("s", "marked")]),
            samples: marked,
        },
        Series {
            name: "stale_gauge",
            labels: lbl(&[("s", "unmarked")]),
            samples: unmarked,
        },
        Series {
            name: "stale_total",
            labels: lbl(&[("job", "api")]),
            samples: counter,
        },
    ]
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited protobuf field.
fn pb_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A remote-write 1.0 body: a protobuf `WriteRequest` in snappy's block format (written as
/// literals only, which every decoder accepts).
fn remote_write_body(data: &[Series]) -> Vec<u8> {
    let mut req = Vec::new();
    for s in data {
        let mut ts = Vec::new();
        let mut labels = vec![("__name__", s.name.to_string())];
        labels.extend(s.labels.iter().map(|(k, v)| (*k, v.clone())));
        labels.sort();
        for (k, v) in &labels {
            let mut l = Vec::new();
            pb_bytes(&mut l, 1, k.as_bytes());
            pb_bytes(&mut l, 2, v.as_bytes());
            pb_bytes(&mut ts, 1, &l);
        }
        for (ms, v) in &s.samples {
            let mut sample = vec![(1 << 3) | 1];
            sample.extend_from_slice(&v.to_bits().to_le_bytes());
            varint(&mut sample, 2 << 3);
            varint(&mut sample, *ms as u64);
            pb_bytes(&mut ts, 2, &sample);
        }
        pb_bytes(&mut req, 1, &ts);
    }
    let mut out = Vec::new();
    varint(&mut out, req.len() as u64);
    for chunk in req.chunks(65_536) {
        // literal with a two-byte length: tag 61 << 2, then len - 1 little-endian
        out.push(61 << 2);
        out.extend_from_slice(&((chunk.len() - 1) as u16).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// POSTs `data` as remote-write to `url`; panics unless the answer is a success.
fn remote_write(url: &str, token: Option<&str>, data: &[Series]) {
    let mut req = agent()
        .post(url)
        .header("Content-Type", "application/x-protobuf")
        .header("Content-Encoding", "snappy")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0");
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.send(&remote_write_body(data)[..]).unwrap();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    assert!(resp.status().is_success(), "{url}: {} {body}", resp.status());
}

// ---------------------------------------------------------------------------------------------
// The two servers

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A `roaster serve` child process on port 0 with the data set loaded, killed when dropped.
struct Roaster {
    child: Child,
    dir: tempfile::TempDir,
    human: String,
    robot: String,
    ingest_token: String,
}

impl Roaster {
    fn start() -> Roaster {
        Roaster::start_with(data_set())
    }

    /// Starts a server and loads `data` into it.
    fn start_with(series: Vec<Series>) -> Roaster {
        Roaster::start_with_config(series, "")
    }

    /// Starts a server with `extra` appended to its config file and loads `data` into it.
    fn start_with_config(series: Vec<Series>, extra: &str) -> Roaster {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = dir.path().join("roaster.toml");
        // The data set lies in 2023: keep it (retention) and accept it in any order (window).
        std::fs::write(
            &config,
            r#"
[server]
human_listen = "127.0.0.1:0"
robot_listen = "127.0.0.1:0"

[ingest]
graphite_tcp_listen = "127.0.0.1:0"
graphite_udp_listen = "127.0.0.1:0"
statsd_udp_listen = "127.0.0.1:0"
statsd_tcp_listen = "127.0.0.1:0"

[storage]
ooo_window_ms = 3153600000000
retention_raw_ms = 3153600000000
retention_minute_ms = 3153600000000
retention_hour_ms = 3153600000000
"#
            .to_owned()
                + extra,
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_roaster"))
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .env("ROASTER_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let listeners_file = data.join("listeners.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        let listeners = loop {
            if let Ok(text) = std::fs::read_to_string(&listeners_file)
                && let Ok(v) = serde_json::from_str::<Value>(&text)
            {
                break v;
            }
            assert!(
                Instant::now() < deadline,
                "roaster did not write {listeners_file:?}: {}",
                std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let human = listeners["human-http"].as_str().unwrap().to_string();
        let robot = listeners["robot-http"].as_str().unwrap().to_string();
        let mut roaster = Roaster {
            child,
            dir,
            human,
            robot,
            ingest_token: String::new(),
        };
        roaster.ingest_token = roaster.create_token("ingest");
        roaster.load(&series);
        roaster
    }

    /// Sends [`stale_set`] through remote-write and waits until it reads back.
    fn load_stale_set(&self) {
        let data = stale_set();
        remote_write(
            &format!("http://{}/api/v1/write", self.robot),
            Some(&self.ingest_token),
            &data,
        );
        let want = data
            .iter()
            .flat_map(|s| &s.samples)
            .filter(|(_, v)| v.to_bits() != STALE_NAN)
            .count();
        let query = r#"sum(count_over_time(stale_gauge[2h])) + sum(count_over_time(stale_total[2h]))"#;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.instant(query, T0 + 2 * SPAN);
            if got["data"]["result"][0]["value"][1].as_str() == Some(&want.to_string()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "roaster did not store the stale set: {got}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn create_token(&self, scope: &str) -> String {
        common::create_token(&self.dir.path().join("data"), scope, "promql-differential")
    }

    /// Sends `data` through the JSON ingest endpoint and waits until every sample reads back.
    fn load(&self, data: &[Series]) {
        let robot = &self.robot;
        let total: usize = data.iter().map(|s| s.samples.len()).sum();
        let token = &self.ingest_token;
        let mut resp = agent()
            .post(&format!("http://{robot}/api/v1/ingest"))
            .header("Authorization", &format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .send(ingest_json(data))
            .unwrap();
        let body = resp.body_mut().read_to_string().unwrap();
        assert_eq!(resp.status(), 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["accepted"], total, "{body}");
        // Ingest is queued: poll until the samples are all readable (counted from the raw
        // matrix: `sum(count_over_time(…))` over several names is an error, as in 2.42).
        let query = format!("{{__name__=~\".+\"}}[2h] @ {}", T0 + SPAN);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.instant(&query, T0 + SPAN);
            let held = got["data"]["result"].as_array().map(|series| {
                let points: usize = series
                    .iter()
                    .map(|s| s["values"].as_array().map_or(0, Vec::len))
                    .sum();
                (series.len(), points)
            });
            if held == Some((data.len(), total)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "roaster did not store the data set: {got}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn instant(&self, query: &str, at_s: i64) -> Value {
        let (_, v) = get(
            &self.human,
            Some(ADMIN_TOKEN),
            "/api/v1/query",
            &[("query", query), ("time", &at_s.to_string())],
        );
        v
    }
}

impl Drop for Roaster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus 2.42 child process over blocks built by promtool from the data set.
struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    addr: String,
}

impl Prometheus {
    fn start() -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let om = dir.path().join("data.om");
        let db = dir.path().join("db");
        std::fs::write(&om, openmetrics(&data_set())).unwrap();
        let out = Command::new("/usr/bin/promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&om)
            .arg(&db)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = dir.path().join("prometheus.yml");
        std::fs::write(&conf, "global: {}\n").unwrap();
        let mut child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!("--storage.tsdb.path={}", db.display()))
            .arg("--storage.tsdb.retention.time=100y")
            .arg("--web.listen-address=127.0.0.1:0")
            .arg("--web.enable-remote-write-receiver")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The log names the bound port ("Listening on" address=…) and says when it is ready;
        // the reader answers once it has both, or with the whole log if Prometheus exits.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut addr, mut ready, mut log) = (None, false, String::new());
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("msg=\"Listening on\"")
                    && let Some(a) = line.split("address=").nth(1)
                {
                    addr = Some(a.trim().to_string());
                }
                ready |= line.contains("ready to receive web requests");
                if log.len() < 20_000 {
                    log.push_str(&line);
                    log.push('\n');
                }
                if ready && let Some(a) = addr.take() {
                    let _ = tx.send(Ok(a));
                }
            }
            let _ = tx.send(Err(log));
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(addr)) => addr,
            other => {
                let _ = child.kill();
                panic!("prometheus did not become ready: {other:?}")
            }
        };
        Prometheus {
            child,
            _dir: dir,
            addr,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `path` with `params`; the status and the JSON body.
fn get(addr: &str, token: Option<&str>, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
    let mut req = agent().get(&format!("http://{addr}{path}"));
    for (k, v) in params {
        req = req.query(*k, *v);
    }
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.call().unwrap();
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap();
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} {params:?}: {e}: {body}"));
    (status, v)
}

// ---------------------------------------------------------------------------------------------
// The corpus

/// How a corpus query is evaluated (seconds after `T0`).
#[derive(Debug, Clone, Copy)]
enum Eval {
    Instant(i64),
    Range { from: i64, to: i64, step: i64 },
}

/// One corpus entry.
#[derive(Debug, Clone)]
struct Case {
    line: usize,
    eval: Eval,
    query: String,
}

/// Parses `0`, `30m`, `1h5m`, `17m30s`, `90s` into seconds.
fn duration_s(text: &str) -> i64 {
    if text == "0" {
        return 0;
    }
    let mut total = 0;
    let mut num = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().unwrap_or_else(|_| panic!("bad duration {text:?}"));
        num.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => panic!("bad duration unit in {text:?}"),
        };
    }
    assert!(num.is_empty(), "duration {text:?} lacks a unit");
    total
}

fn parse_corpus(text: &str) -> Vec<Case> {
    let mut eval = None;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["eval", "instant", "at", t] => eval = Some(Eval::Instant(duration_s(t))),
            ["eval", "range", "from", a, "to", b, "step", s] => {
                eval = Some(Eval::Range {
                    from: duration_s(a),
                    to: duration_s(b),
                    step: duration_s(s),
                })
            }
            _ => out.push(Case {
                line: i + 1,
                eval: eval.unwrap_or_else(|| panic!("corpus line {}: query before any eval header", i + 1)),
                query: line.to_string(),
            }),
        }
    }
    out
}

fn corpus() -> Vec<Case> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/promql/corpus.txt");
    parse_corpus(&std::fs::read_to_string(&path).unwrap())
}

/// Asks `addr` for `case`; the status and body.
fn ask(addr: &str, token: Option<&str>, case: &Case) -> (u16, Value) {
    match case.eval {
        Eval::Instant(t) => get(
            addr,
            token,
            "/api/v1/query",
            &[("query", &case.query), ("time", &(T0 + t).to_string())],
        ),
        Eval::Range { from, to, step } => get(
            addr,
            token,
            "/api/v1/query_range",
            &[
                ("query", &case.query),
                ("start", &(T0 + from).to_string()),
                ("end", &(T0 + to).to_string()),
                ("step", &step.to_string()),
            ],
        ),
    }
}

/// Random but reproducible queries from a small grammar over the data set, to reach
/// combinations nobody wrote down. Seeded, so a failure names a query that fails every run.
fn generated_cases(n: usize) -> Vec<Case> {
    const SELECTORS: &[&str] = &[
        "up",
        "http_requests_total",
        r#"http_requests_total{code="200"}"#,
        r#"http_requests_total{method=~"g.*"}"#,
        "node_temperature_celsius",
        "queue_depth",
        "memory_bytes",
        "errors_total",
        "jitter_gauge",
        "early_gauge",
        "late_gauge",
        "request_duration_seconds_count",
        "deploy_info",
        "stale_gauge",
        "stale_total",
        // two names whose other labels agree: 2.42's name dropping makes them collide
        r#"{__name__=~"request_duration_seconds_(sum|count)"}"#,
        r#"{__name__=~"up|deploy_info"}"#,
    ];
    const RANGE_FNS: &[&str] = &[
        "rate",
        "irate",
        "increase",
        "delta",
        "idelta",
        "deriv",
        "changes",
        "resets",
        "avg_over_time",
        "min_over_time",
        "max_over_time",
        "sum_over_time",
        "count_over_time",
        "last_over_time",
        "stddev_over_time",
        "stdvar_over_time",
    ];
    const RANGES: &[&str] = &["30s", "1m", "2m", "5m", "10m"];
    const INSTANT_FNS: &[&str] = &[
        "abs",
        "ceil",
        "floor",
        "round",
        "sqrt",
        "ln",
        "exp",
        "timestamp",
        "-",
    ];
    const AGGS: &[&str] = &["sum", "avg", "min", "max", "count", "group", "stddev", "stdvar"];
    const GROUPINGS: &[&str] = &[
        "",
        " by (instance)",
        " by (host)",
        " without (code)",
        " by (job, method)",
        " without (instance)",
    ];
    const OPS: &[&str] = &[
        "+", "-", "*", "/", ">", "<", "== bool", "> bool", "and", "or", "unless",
    ];
    const MATCHING: &[&str] = &[
        "",
        " on(instance)",
        " ignoring(code, method)",
        " on(host)",
        " on()",
    ];
    fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
        xs[rng.below(xs.len() as u64) as usize]
    }
    fn expr(rng: &mut Rng, depth: u32) -> String {
        let choice = if depth == 0 { rng.below(2) } else { rng.below(11) };
        match choice {
            0 => {
                let sel = pick(rng, SELECTORS);
                match rng.below(6) {
                    0 => format!("{sel} offset {}", pick(rng, &["1m", "5m30s", "-2m"])),
                    1 => format!("{sel} @ {}", T0 + rng.below(2 * SPAN as u64) as i64),
                    _ => sel.to_string(),
                }
            }
            7 => format!(
                "{}{}({}, {})",
                pick(rng, &["quantile", "quantile"]),
                pick(rng, GROUPINGS),
                pick(rng, &["1", "2", "0.3", "0.9"]),
                expr(rng, depth - 1)
            ),
            8 => format!(
                "histogram_quantile({}, {}(request_duration_seconds_bucket[{}]))",
                pick(rng, &["0.5", "0.9", "0.99"]),
                pick(rng, &["rate", "increase", "max_over_time"]),
                pick(rng, RANGES)
            ),
            9 => format!(
                "{}({}, {})",
                pick(rng, &["clamp_min", "clamp_max", "round"]),
                expr(rng, depth - 1),
                rng.below(40)
            ),
            10 => format!(
                "label_replace({}, \"x\", \"$1\", \"{}\", \"(.)(.*)\")",
                expr(rng, depth - 1),
                pick(rng, &["instance", "host", "code", "__name__"])
            ),
            1 => format!(
                "{}({}[{}])",
                pick(rng, RANGE_FNS),
                pick(rng, SELECTORS),
                pick(rng, RANGES)
            ),
            2 => {
                let f = pick(rng, INSTANT_FNS);
                format!("{f}({})", expr(rng, depth - 1))
            }
            3 => format!(
                "{}{}({})",
                pick(rng, AGGS),
                pick(rng, GROUPINGS),
                expr(rng, depth - 1)
            ),
            4 => format!(
                "({}) {}{} ({})",
                expr(rng, depth - 1),
                pick(rng, OPS),
                pick(rng, MATCHING),
                expr(rng, depth - 1)
            ),
            5 => format!(
                "({}) {} {}",
                expr(rng, depth - 1),
                pick(rng, &["+", "*", ">", "< bool", "/", "-"]),
                rng.below(50)
            ),
            _ => format!(
                "{}(({})[{}:{}])",
                pick(
                    rng,
                    &["max_over_time", "avg_over_time", "rate", "count_over_time"]
                ),
                expr(rng, depth - 1),
                pick(rng, &["5m", "10m"]),
                pick(rng, &["30s", "1m", ""])
            ),
        }
    }
    let seed = std::env::var("PROMQL_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_F0D1_FF00);
    let mut rng = Rng(seed.max(1));
    (0..n)
        .map(|i| {
            let mut query = expr(&mut rng, 3);
            if rng.below(8) == 0 {
                // top level only: ties are broken differently (see `compare`)
                query = format!(
                    "{}{}({}, {query})",
                    pick(&mut rng, &["topk", "bottomk"]),
                    pick(&mut rng, GROUPINGS),
                    1 + rng.below(3)
                );
            }
            let eval = if rng.below(2) == 0 {
                Eval::Instant(rng.below(2 * SPAN as u64 / 15) as i64 * 15 + rng.below(15) as i64)
            } else {
                let from = rng.below(SPAN as u64) as i64;
                Eval::Range {
                    from,
                    to: from + 600 + rng.below(SPAN as u64) as i64,
                    step: 15 + rng.below(120) as i64,
                }
            };
            Case {
                line: 100_000 + i,
                eval,
                query,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Comparison

fn parse_value(v: &Value) -> Option<f64> {
    match v.as_str()? {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        s => s.parse().ok(),
    }
}

fn values_agree(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    diff <= ABS_TOLERANCE || diff <= REL_TOLERANCE * a.abs().max(b.abs())
}

/// A `[t, "v"]` pair: the timestamp in ms and the value.
fn point(p: &Value) -> Option<(i64, f64)> {
    let t = p.get(0)?.as_f64()?;
    Some(((t * 1000.0).round() as i64, parse_value(p.get(1)?)?))
}

fn points_agree(what: &str, a: &[(i64, f64)], b: &[(i64, f64)]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{what}: {} points vs {} points", a.len(), b.len()));
    }
    for ((ta, va), (tb, vb)) in a.iter().zip(b) {
        if ta != tb {
            return Err(format!("{what}: timestamp {ta} vs {tb}"));
        }
        if !values_agree(*va, *vb) {
            return Err(format!("{what}: at {ta}: value {va} vs {vb}"));
        }
    }
    Ok(())
}

/// Every `[t, "v"]` pair of a result, keyed by the series' labels and `t`, as written.
fn spelled(result: &Value) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    let mut add = |labels: &Value, p: &Value| {
        if let (Some(t), Some(v)) = (p.get(0), p.get(1).and_then(Value::as_str)) {
            out.insert((labels.to_string(), t.to_string()), v.to_string());
        }
    };
    match result.as_array() {
        Some(items) if items.first().is_some_and(Value::is_object) => {
            for item in items {
                if let Some(values) = item["values"].as_array() {
                    values.iter().for_each(|p| add(&item["metric"], p));
                } else {
                    add(&item["metric"], &item["value"]);
                }
            }
        }
        Some(_) => add(&Value::Null, result),
        None => {}
    }
    out
}

/// Values that are equal must be spelled the same (`1e+21`, `0.1`, `NaN`, `+Inf` as Go's
/// `strconv.FormatFloat(v, 'f', -1, 64)` writes them), so clients parsing text see the same.
fn same_spelling(roaster: &Value, prometheus: &Value) -> Result<(), String> {
    let r = spelled(roaster);
    for (key, p) in spelled(prometheus) {
        if let Some(rv) = r.get(&key)
            && rv != &p
            && parse_value(&Value::from(rv.as_str())).map(f64::to_bits)
                == parse_value(&Value::from(p.as_str())).map(f64::to_bits)
        {
            return Err(format!("{key:?}: value spelled {rv:?} vs {p:?}"));
        }
    }
    Ok(())
}

/// The values of all series at each step, sorted, compared step by step.
fn values_per_step_agree(r: &[AnswerSeries], p: &[AnswerSeries]) -> Result<(), String> {
    let by_step = |series: &[AnswerSeries]| {
        let mut steps: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for (_, points) in series {
            for (t, v) in points {
                steps.entry(*t).or_default().push(*v);
            }
        }
        steps.values_mut().for_each(|v| v.sort_by(f64::total_cmp));
        steps
    };
    let (rs, ps) = (by_step(r), by_step(p));
    if rs.keys().ne(ps.keys()) {
        return Err("topk/bottomk: different steps".into());
    }
    for ((t, rv), pv) in rs.iter().zip(ps.values()) {
        let agree = rv.len() == pv.len() && rv.iter().zip(pv).all(|(a, b)| values_agree(*a, *b));
        if !agree {
            return Err(format!("topk/bottomk at {t}: values {rv:?} vs {pv:?}"));
        }
    }
    Ok(())
}

/// One series of an answer: its label set as canonical JSON, and its points `(ms, value)`.
type AnswerSeries = (String, Vec<(i64, f64)>);

/// A vector or matrix result as series, in answer order.
fn series_of(result: &Value, kind: &str) -> Result<Vec<AnswerSeries>, String> {
    let items = result.as_array().ok_or("result is not an array")?;
    items
        .iter()
        .map(|item| {
            let metric: BTreeMap<String, String> =
                serde_json::from_value(item["metric"].clone()).map_err(|e| format!("bad metric: {e}"))?;
            let key = serde_json::to_string(&metric).map_err(|e| e.to_string())?;
            let pts = if kind == "vector" {
                vec![point(&item["value"]).ok_or("bad value")?]
            } else {
                item["values"]
                    .as_array()
                    .ok_or("no values")?
                    .iter()
                    .map(|p| point(p).ok_or("bad value"))
                    .collect::<Result<_, _>>()?
            };
            Ok((key, pts))
        })
        .collect()
}

/// Compares Roaster's answer with Prometheus'; `Err` describes the first difference.
fn compare(query: &str, roaster: &(u16, Value), prometheus: &(u16, Value)) -> Result<(), String> {
    let (r, p) = (&roaster.1, &prometheus.1);
    if roaster.0 != prometheus.0 {
        return Err(format!(
            "http status: roaster {} vs prometheus {}",
            roaster.0, prometheus.0
        ));
    }
    if r["status"] != p["status"] {
        return Err(format!(
            "status: roaster {} {} vs prometheus {} {}",
            r["status"], r["error"], p["status"], p["error"]
        ));
    }
    if p["status"] == "error" {
        if r["errorType"] != p["errorType"] {
            return Err(format!(
                "errorType: roaster {} ({}) vs prometheus {} ({})",
                r["errorType"], r["error"], p["errorType"], p["error"]
            ));
        }
        return Ok(());
    }
    let kind = p["data"]["resultType"].as_str().unwrap_or_default();
    if r["data"]["resultType"] != p["data"]["resultType"] {
        return Err(format!(
            "resultType: roaster {} vs prometheus {kind}",
            r["data"]["resultType"]
        ));
    }
    let (rr, pr) = (&r["data"]["result"], &p["data"]["result"]);
    match kind {
        "scalar" => points_agree(
            "scalar",
            &[point(rr).ok_or("bad scalar")?],
            &[point(pr).ok_or("bad scalar")?],
        )
        .and_then(|()| same_spelling(rr, pr)),
        "string" => {
            if rr == pr {
                Ok(())
            } else {
                Err(format!("string: {rr} vs {pr}"))
            }
        }
        "vector" | "matrix" => {
            let rs = series_of(rr, kind)?;
            let ps = series_of(pr, kind)?;
            let ordered = query.starts_with("sort(") || query.starts_with("sort_desc(");
            if ordered && kind == "vector" {
                let rv: Vec<(i64, f64)> = rs.iter().map(|(_, p)| p[0]).collect();
                let pv: Vec<(i64, f64)> = ps.iter().map(|(_, p)| p[0]).collect();
                points_agree("sorted order", &rv, &pv)?;
            }
            let rm: BTreeMap<&String, &Vec<(i64, f64)>> = rs.iter().map(|(k, v)| (k, v)).collect();
            let pm: BTreeMap<&String, &Vec<(i64, f64)>> = ps.iter().map(|(k, v)| (k, v)).collect();
            if rm.len() != rs.len() {
                return Err("roaster answered one label set twice".into());
            }
            let rk: Vec<&&String> = rm.keys().collect();
            let pk: Vec<&&String> = pm.keys().collect();
            let strict = || -> Result<(), String> {
                if rk != pk {
                    let only_r: Vec<_> = rm.keys().filter(|k| !pm.contains_key(*k)).collect();
                    let only_p: Vec<_> = pm.keys().filter(|k| !rm.contains_key(*k)).collect();
                    return Err(format!(
                        "series: only in roaster {only_r:?}, only in prometheus {only_p:?}"
                    ));
                }
                for (k, pv) in &pm {
                    points_agree(k, rm[k], pv)?;
                }
                same_spelling(rr, pr)
            };
            match strict() {
                // Prometheus breaks topk/bottomk ties by Go map order (random from run to
                // run), so where the chosen series differ the values chosen must still agree
                Err(_) if query.starts_with("topk") || query.starts_with("bottomk") => {
                    values_per_step_agree(&rs, &ps)
                }
                other => other,
            }
        }
        other => Err(format!("unexpected result type {other:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Whether `program` can run here; if not, the test passes with a note unless clients are required.
fn have(program: &Path) -> bool {
    if program.exists() {
        return true;
    }
    let required = std::env::var("ROASTER_REQUIRE_REAL_CLIENTS")
        .map(|v| !v.is_empty() && v != "0" && v != "false")
        .unwrap_or(false);
    assert!(
        !required,
        "{program:?} is required (ROASTER_REQUIRE_REAL_CLIENTS) but missing"
    );
    eprintln!("skipping: {program:?} is not installed (scripts/test installs it)");
    false
}

#[test]
fn comparison_catches_every_kind_of_difference() {
    let ok = |result: Value| (200, serde_json::json!({"status": "success", "data": result}));
    let vector = |labels: Value, t: f64, v: &str| {
        ok(serde_json::json!({"resultType": "vector", "result": [{"metric": labels, "value": [t, v]}]}))
    };
    let base = vector(serde_json::json!({"a": "1"}), 1.5, "2");
    let bad = (
        400,
        serde_json::json!({"status": "error", "errorType": "bad_data", "error": "x"}),
    );
    let exec = (
        422,
        serde_json::json!({"status": "error", "errorType": "execution", "error": "y"}),
    );
    // (roaster's answer, prometheus' answer, agree)
    let cases = [
        (base.clone(), base.clone(), true),
        (
            vector(serde_json::json!({"a": "1"}), 1.5, "2.0000000000000004"),
            base.clone(),
            true,
        ),
        (
            vector(serde_json::json!({"a": "1"}), 1.5, "2.001"),
            base.clone(),
            false,
        ),
        (
            vector(serde_json::json!({"a": "2"}), 1.5, "2"),
            base.clone(),
            false,
        ),
        (
            vector(serde_json::json!({"a": "1"}), 1.501, "2"),
            base.clone(),
            false,
        ),
        (
            vector(serde_json::json!({}), 1.0, "NaN"),
            vector(serde_json::json!({}), 1.0, "NaN"),
            true,
        ),
        (
            vector(serde_json::json!({}), 1.0, "NaN"),
            vector(serde_json::json!({}), 1.0, "0"),
            false,
        ),
        (
            vector(serde_json::json!({}), 1.0, "+Inf"),
            vector(serde_json::json!({}), 1.0, "-Inf"),
            false,
        ),
        (
            vector(serde_json::json!({}), 1.0, "1e-13"),
            vector(serde_json::json!({}), 1.0, "0"),
            true,
        ),
        (
            ok(serde_json::json!({"resultType": "vector", "result": []})),
            base.clone(),
            false,
        ),
        (
            ok(serde_json::json!({"resultType": "scalar", "result": [1.5, "2"]})),
            base.clone(),
            false,
        ),
        (bad.clone(), bad.clone(), true),
        (bad.clone(), exec.clone(), false),
        ((422, bad.1.clone()), bad.clone(), false),
        (
            vector(serde_json::json!({}), 1.0, "1000000000000000000000"),
            vector(serde_json::json!({}), 1.0, "1e+21"),
            false,
        ),
        (base.clone(), exec.clone(), false),
    ];
    for (i, (r, p, want)) in cases.iter().enumerate() {
        assert_eq!(
            compare("q", r, p).is_ok(),
            *want,
            "case {i}: {:?}",
            compare("q", r, p)
        );
    }
}

#[test]
fn corpus_is_large_and_well_formed() {
    let cases = corpus();
    assert!(
        cases.len() >= 200,
        "corpus has {} queries, want at least 200",
        cases.len()
    );
    let mut seen = std::collections::HashSet::new();
    for c in &cases {
        assert!(
            seen.insert((c.query.clone(), format!("{:?}", c.eval))),
            "corpus line {}: duplicate case {}",
            c.line,
            c.query
        );
    }
}

#[test]
fn roaster_agrees_with_prometheus_on_the_corpus() {
    if !have(Path::new("/usr/bin/prometheus")) || !have(Path::new("/usr/bin/promtool")) {
        return;
    }
    let started = Instant::now();
    let (roaster, prometheus) = std::thread::scope(|s| {
        let p = s.spawn(Prometheus::start);
        let r = Roaster::start();
        r.load_stale_set();
        (r, p.join().unwrap())
    });
    remote_write(
        &format!("http://{}/api/v1/write", prometheus.addr),
        None,
        &stale_set(),
    );
    // The stale marker is in effect in Prometheus (else the lookback would still show it).
    let (_, v) = get(
        &prometheus.addr,
        None,
        "/api/v1/query",
        &[
            ("query", "stale_gauge"),
            ("time", &(T0 + SPAN + 1320).to_string()),
        ],
    );
    assert_eq!(
        v["data"]["result"].as_array().map(|a| a.len()),
        Some(1),
        "only the unmarked series at 1 h 22 m: {v}"
    );
    let mut cases = corpus();
    let generated = std::env::var("PROMQL_DIFF_GENERATED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(GENERATED_CASES);
    cases.extend(generated_cases(generated));
    // Both hold the whole data set (else agreement on empty answers would prove nothing).
    let total: usize = data_set().iter().map(|s| s.samples.len()).sum();
    let all = Case {
        line: 0,
        eval: Eval::Instant(SPAN),
        query: r#"{__name__=~".+"}[2h]"#.into(),
    };
    for (who, addr, token) in [
        ("roaster", &roaster.human, Some(ADMIN_TOKEN)),
        ("prometheus", &prometheus.addr, None),
    ] {
        let (_, v) = ask(addr, token, &all);
        let held: usize = series_of(&v["data"]["result"], "matrix")
            .unwrap_or_else(|e| panic!("{who}: {e}: {v}"))
            .iter()
            .map(|(_, points)| points.len())
            .sum();
        assert_eq!(held, total, "{who} does not hold the data set");
    }
    let mut agree = 0;
    let (mut non_empty, mut errors, mut same_message) = (0, 0, 0);
    let mut failures = Vec::new();
    for case in &cases {
        let r = ask(&roaster.human, Some(ADMIN_TOKEN), case);
        let p = ask(&prometheus.addr, None, case);
        if p.1["status"] == "error" {
            errors += 1;
            same_message += usize::from(r.1["error"] == p.1["error"]);
        } else if p.1["data"]["result"].as_array().is_none_or(|a| !a.is_empty()) {
            non_empty += 1;
        }
        match compare(&case.query, &r, &p) {
            Ok(()) => agree += 1,
            Err(e) => failures.push(format!(
                "line {} {:?} `{}`: {e}\n    roaster:    {}\n    prometheus: {}",
                case.line,
                case.eval,
                case.query,
                truncate(&r.1.to_string()),
                truncate(&p.1.to_string())
            )),
        }
    }
    // Parameter formats: RFC 3339 and fractional times, duration steps, bad parameters.
    let params: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "/api/v1/query",
            vec![("query", "up"), ("time", "2023-11-14T22:30:00Z")],
        ),
        (
            "/api/v1/query",
            vec![("query", "up"), ("time", "2023-11-14T23:30:00.5+01:00")],
        ),
        (
            "/api/v1/query",
            vec![("query", "jitter_gauge"), ("time", "1700001000.437")],
        ),
        (
            "/api/v1/query",
            vec![("query", "time()"), ("time", "1700001000.437")],
        ),
        ("/api/v1/query", vec![("query", "up"), ("time", "yesterday")]),
        ("/api/v1/query", vec![("time", "1700001000")]),
        (
            "/api/v1/query",
            vec![("query", "up"), ("time", "1700001000"), ("timeout", "1m")],
        ),
        (
            "/api/v1/query",
            vec![("query", "up"), ("time", "1700001000"), ("timeout", "soon")],
        ),
        (
            "/api/v1/query_range",
            vec![
                ("query", "up"),
                ("start", "2023-11-14T22:00:00Z"),
                ("end", "2023-11-14T22:30:00Z"),
                ("step", "90s"),
            ],
        ),
        (
            "/api/v1/query_range",
            vec![
                ("query", "rate(http_requests_total[5m])"),
                ("start", "1699999500.5"),
                ("end", "1700001000"),
                ("step", "1m30s"),
            ],
        ),
        (
            "/api/v1/query_range",
            vec![
                ("query", "up"),
                ("start", "1699999500"),
                ("end", "1700001000"),
                ("step", "37.5"),
            ],
        ),
        (
            "/api/v1/query_range",
            vec![
                ("query", "up"),
                ("start", "1700001000"),
                ("end", "1699999500"),
                ("step", "60"),
            ],
        ),
        (
            "/api/v1/query_range",
            vec![
                ("query", "up"),
                ("start", "1699999500"),
                ("end", "1700001000"),
                ("step", "0"),
            ],
        ),
        (
            "/api/v1/query_range",
            vec![
                ("query", "up"),
                ("start", "1699999500"),
                ("end", "1700001000"),
                ("step", "-15"),
            ],
        ),
        (
            "/api/v1/query_range",
            vec![("query", "up"), ("start", "1699999500"), ("end", "1700001000")],
        ),
        (
            "/api/v1/query_range",
            vec![
                ("query", "up"),
                ("start", "0"),
                ("end", "1700001000"),
                ("step", "1"),
            ],
        ),
    ];
    for (path, params) in &params {
        let (rs, r) = get(&roaster.human, Some(ADMIN_TOKEN), path, params);
        let (ps, p) = get(&prometheus.addr, None, path, params);
        match compare("", &(rs, r.clone()), &(ps, p.clone())) {
            Ok(()) => agree += 1,
            Err(e) => failures.push(format!(
                "{path} {params:?}: {e}\n    roaster:    {}\n    prometheus: {}",
                truncate(&r.to_string()),
                truncate(&p.to_string())
            )),
        }
    }
    // The metadata endpoints Grafana uses: answers compared as sorted sets (see
    // `metadata_agrees` for labels with a range).
    let (start, end) = ((T0 + 3000).to_string(), (T0 + SPAN).to_string());
    let gaps = r#"{__name__=~"queue_depth|early_gauge|late_gauge"}"#;
    // windows as (start, end) unix seconds: inside q1's gap; after early_gauge ends and
    // before late_gauge starts, edges on samples; one edge on a sample; fractional
    // seconds; after the blocks, in the stale set (Prometheus' head)
    let w: Vec<(String, String)> = [
        (22 * 60, 28 * 60),
        (20 * 60 + 15, 40 * 60 - 15),
        (20 * 60, 30 * 60),
        (30 * 60, 39 * 60),
        (60 * 60 + 1, 61 * 60),
        (SPAN + 1300, SPAN + 1700),
    ]
    .iter()
    .map(|(a, b)| ((T0 + a).to_string(), (T0 + b).to_string()))
    .collect();
    let w: Vec<(String, String)> = w
        .into_iter()
        .enumerate()
        .map(|(i, (a, b))| {
            if i == 3 {
                (format!("{a}.5"), format!("{b}.25"))
            } else {
                (a, b)
            }
        })
        .collect();
    let metadata: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("/api/v1/series", vec![("match[]", "up")]),
        (
            "/api/v1/series",
            vec![
                ("match[]", r#"http_requests_total{code="500"}"#),
                ("match[]", "up"),
            ],
        ),
        (
            "/api/v1/series",
            vec![
                ("match[]", r#"{__name__=~"queue_depth|early_gauge|late_gauge"}"#),
                ("start", &start),
                ("end", &end),
            ],
        ),
        ("/api/v1/series", vec![("match[]", r#"{city=~".+"}"#)]),
        // q1 has no sample from 20 m to 30 m, early_gauge ends at 20 m, late_gauge starts at 40 m
        (
            "/api/v1/series",
            vec![("match[]", gaps), ("start", &w[0].0), ("end", &w[0].1)],
        ),
        (
            "/api/v1/series",
            vec![("match[]", gaps), ("start", &w[1].0), ("end", &w[1].1)],
        ),
        (
            "/api/v1/series",
            vec![("match[]", gaps), ("start", &w[2].0), ("end", &w[2].1)],
        ),
        (
            "/api/v1/series",
            vec![("match[]", gaps), ("start", &w[3].0), ("end", &w[3].1)],
        ),
        (
            "/api/v1/series",
            vec![("match[]", gaps), ("start", &w[4].0), ("end", &w[4].1)],
        ),
        ("/api/v1/series", vec![("match[]", gaps), ("end", &w[0].1)]),
        ("/api/v1/series", vec![("match[]", gaps), ("start", &w[2].0)]),
        (
            "/api/v1/series",
            vec![("match[]", "stale_gauge"), ("start", &w[5].0), ("end", &w[5].1)],
        ),
        (
            "/api/v1/series",
            vec![
                ("match[]", r#"{__name__=~".+"}"#),
                ("start", &w[5].0),
                ("end", &w[5].1),
            ],
        ),
        ("/api/v1/labels", vec![("start", &w[1].0), ("end", &w[1].1)]),
        (
            "/api/v1/labels",
            vec![("match[]", gaps), ("start", &w[0].0), ("end", &w[0].1)],
        ),
        (
            "/api/v1/label/kind/values",
            vec![("start", &w[0].0), ("end", &w[0].1)],
        ),
        (
            "/api/v1/label/queue/values",
            vec![("match[]", gaps), ("start", &w[1].0), ("end", &w[1].1)],
        ),
        (
            "/api/v1/label/__name__/values",
            vec![("start", &w[5].0), ("end", &w[5].1)],
        ),
        ("/api/v1/labels", vec![]),
        ("/api/v1/labels", vec![("match[]", "up")]),
        (
            "/api/v1/labels",
            vec![
                ("match[]", "request_duration_seconds_bucket"),
                ("match[]", "deploy_info"),
            ],
        ),
        ("/api/v1/label/__name__/values", vec![]),
        ("/api/v1/label/job/values", vec![]),
        ("/api/v1/label/city/values", vec![]),
        ("/api/v1/label/le/values", vec![]),
        ("/api/v1/label/host/values", vec![("match[]", "memory_bytes")]),
        ("/api/v1/label/nolabel/values", vec![]),
    ];
    let data: Vec<Series> = data_set().into_iter().chain(stale_set()).collect();
    for (path, params) in &metadata {
        let (_, r) = get(&roaster.human, Some(ADMIN_TOKEN), path, params);
        let (_, p) = get(&prometheus.addr, None, path, params);
        // with a range: the truth from the data set — the series the match[]s select (all
        // time, an answer compared on its own above) that have a sample in the range
        let ranged = params.iter().any(|(k, _)| *k == "start" || *k == "end");
        let truth = ranged.then(|| {
            let secs = |k: &str, default: i64| {
                params.iter().find(|(n, _)| *n == k).map_or(default, |(_, v)| {
                    (v.parse::<f64>().unwrap() * 1000.0).round() as i64
                })
            };
            let (from, to) = (secs("start", i64::MIN), secs("end", i64::MAX));
            let mut q: Vec<(&str, &str)> = params.iter().filter(|(k, _)| *k == "match[]").copied().collect();
            if q.is_empty() {
                q.push(("match[]", r#"{__name__=~".+"}"#));
            }
            let all = get(&prometheus.addr, None, "/api/v1/series", &q).1;
            (
                in_range(&all, &data, from, to, false),
                in_range(&all, &data, from, to, true),
            )
        });
        match metadata_agrees(path, &r, &p, truth.as_ref()) {
            Ok(()) => agree += 1,
            Err(e) => failures.push(format!(
                "{path} {params:?}: {e}\n    roaster:    {}\n    prometheus: {}",
                truncate(&r.to_string()),
                truncate(&p.to_string())
            )),
        }
    }
    let total_cases = cases.len() + params.len() + metadata.len();
    eprintln!(
        "promql differential: {} cases ({non_empty} non-empty query answers, {errors} errors of which {same_message} word for word), {agree} agree ({:.1} %), {} failures, {:.1} s",
        total_cases,
        100.0 * agree as f64 / total_cases as f64,
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} differences:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// One series' labels, `__name__` included.
type LabelMap = BTreeMap<String, String>;

/// The items of a `/api/v1/series` answer (`all`) that have a sample of `data` in
/// `[from, to]` (ms), as label maps; with `straddling`, those that have none in it but some
/// before and after it instead.
fn in_range(all: &Value, data: &[Series], from: i64, to: i64, straddling: bool) -> Vec<LabelMap> {
    let labels_of = |s: &Series| -> BTreeMap<String, String> {
        let mut m: BTreeMap<String, String> =
            s.labels.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        m.insert("__name__".into(), s.name.into());
        m
    };
    all["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no /series answer: {all}"))
        .iter()
        .map(|item| {
            item.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect::<BTreeMap<String, String>>()
        })
        .filter(|item| {
            let times = || {
                data.iter()
                    .filter(|s| labels_of(s) == *item)
                    .flat_map(|s| s.samples.iter().map(|(t, _)| *t))
            };
            let inside = times().any(|t| (from..=to).contains(&t));
            if straddling {
                !inside && times().any(|t| t < from) && times().any(|t| t > to)
            } else {
                inside
            }
        })
        .collect()
}

/// How a metadata answer of Roaster (`r`) must relate to Prometheus' (`p`), both compared as
/// sorted sets with the same `status`. Without a range (`truth` is `None`): equal. With a
/// range, `truth` is the series with a sample in it, from the data set: Roaster must answer
/// exactly those (their label names or values for `/labels` and `/label/<name>/values`), and
/// Prometheus may only add what its coarser granularity adds (a superset: for `/series` a
/// series whose chunk straddles the range, for the label look-ups every series of a block
/// overlapping it).
fn metadata_agrees(
    path: &str,
    r: &Value,
    p: &Value,
    truth: Option<&(Vec<LabelMap>, Vec<LabelMap>)>,
) -> Result<(), String> {
    let sorted = |v: &Value| {
        let mut items: Vec<String> = v["data"]
            .as_array()
            .map(|a| a.iter().map(|x| x.to_string()).collect())
            .unwrap_or_default();
        items.sort();
        items
    };
    if r["status"] != p["status"] {
        return Err(format!("status {} vs {}", r["status"], p["status"]));
    }
    let (ri, pi) = (sorted(r), sorted(p));
    let Some((truth, straddling)) = truth else {
        return if ri == pi {
            Ok(())
        } else {
            Err("different answers".into())
        };
    };
    let mut want = std::collections::BTreeSet::new();
    for labels in truth {
        match path
            .strip_prefix("/api/v1/label/")
            .and_then(|n| n.strip_suffix("/values"))
        {
            Some(name) => {
                if let Some(v) = labels.get(name) {
                    want.insert(Value::from(v.as_str()).to_string());
                }
            }
            None if path == "/api/v1/labels" => {
                want.extend(labels.keys().map(|k| Value::from(k.as_str()).to_string()));
            }
            None => {
                want.insert(serde_json::to_value(labels).unwrap().to_string());
            }
        }
    }
    let want: Vec<String> = want.into_iter().collect();
    if ri != want {
        return Err(format!("Roaster is not the truth from the data set {want:?}"));
    }
    if let Some(missing) = ri.iter().find(|x| !pi.contains(x)) {
        return Err(format!("{missing} is not in Prometheus' answer"));
    }
    if path == "/api/v1/series" {
        let straddling: Vec<String> = straddling
            .iter()
            .map(|l| serde_json::to_value(l).unwrap().to_string())
            .collect();
        if let Some(extra) = pi.iter().find(|x| !ri.contains(x) && !straddling.contains(x)) {
            return Err(format!(
                "Prometheus lists {extra}, which has no sample in the range and none on both sides"
            ));
        }
    }
    Ok(())
}

/// `[query] delayed_name_removal = true`: Prometheus 3's lazy name drop. The queries that
/// Prometheus 2.42 (and Roaster by default) refuse with "vector cannot contain metrics with
/// the same labelset" answer what the same query decomposed per name answers.
#[test]
fn roaster_only_delayed_name_removal() {
    let roaster = Roaster::start_with_config(data_set(), "[query]\ndelayed_name_removal = true\n");
    let at = T0 + 37 * 60 + 30;
    // (query, the same per name, what Roaster answers: label set → value)
    type Pin<'a> = (&'a str, &'a str, &'a [(&'a str, f64)]);
    let cases: &[Pin<'_>] = &[
        (
            r#"sum(rate({__name__=~"request_duration_seconds_sum|request_duration_seconds_count"}[5m]))"#,
            "sum(rate(request_duration_seconds_sum[5m])) + sum(rate(request_duration_seconds_count[5m]))",
            &[("{}", 0.743_033_333_333_333_4)],
        ),
        (
            r#"sum by (instance) (avg_over_time({__name__=~"request_duration_seconds_sum|request_duration_seconds_count"}[10m]))"#,
            "sum by (instance) (avg_over_time(request_duration_seconds_sum[10m])) + sum by (instance) (avg_over_time(request_duration_seconds_count[10m]))",
            &[
                (r#"{"instance":"a:9090"}"#, 598.788_536_585_365_8),
                (r#"{"instance":"b:9090"}"#, 682.180_975_609_756_2),
            ],
        ),
    ];
    let default = Roaster::start();
    for (query, per_name, want) in cases {
        let refused = default.instant(query, at);
        assert_eq!(
            refused["error"], "vector cannot contain metrics with the same labelset",
            "by default as Prometheus 2.42: {refused}"
        );
        let got = roaster.instant(query, at);
        assert_eq!(got["status"], "success", "{query}: {got}");
        let got = series_of(&got["data"]["result"], "vector").unwrap();
        let decomposed = roaster.instant(per_name, at);
        let decomposed = series_of(&decomposed["data"]["result"], "vector").unwrap();
        assert_eq!(got.len(), want.len(), "{query}: {got:?}");
        for ((labels, points), (want_labels, want_value)) in got.iter().zip(want.iter()) {
            assert_eq!(labels, want_labels, "{query}");
            assert_eq!(points.len(), 1, "{query}");
            assert_eq!(points[0].0, at * 1000, "{query}");
            assert!(
                values_agree(points[0].1, *want_value),
                "{query}: {} vs {want_value}",
                points[0].1
            );
            let same = decomposed.iter().find(|(l, _)| l == labels).unwrap();
            assert!(values_agree(points[0].1, same.1[0].1), "{query} vs {per_name}");
        }
    }
}

/// Roaster-only golden answers for quoted UTF-8 metric names (Graphite paths), which
/// Prometheus 2.42 cannot parse, so they stay out of the differential corpus.
#[test]
fn roaster_only_quoted_utf8_metric_names() {
    let mut data = data_set();
    for (room, base, step, modulo) in [("kitchen", 20.0, 0.25, 8), ("cellar", 10.0, 0.5, 4)] {
        data.push(Series {
            name: "christmaspi.temperature.ham",
            labels: lbl(&[("room", room)]),
            samples: scrapes(0, SPAN)
                .map(|(ms, i)| (ms, base + step * (i % modulo) as f64))
                .collect(),
        });
    }
    data.push(Series {
        name: "christmaspi.power.total",
        labels: Vec::new(),
        samples: scrapes(0, SPAN).map(|(ms, i)| (ms, 3.0 * i as f64)).collect(),
    });
    data.push(Series {
        name: "servers.web-01.cpu.load",
        labels: Vec::new(),
        samples: scrapes(0, SPAN).map(|(ms, _)| (ms, 1.5)).collect(),
    });
    let roaster = Roaster::start_with(data);
    let kitchen = r#"{"__name__":"christmaspi.temperature.ham","room":"kitchen"}"#;
    let cellar = r#"{"__name__":"christmaspi.temperature.ham","room":"cellar"}"#;
    // (query at T0 + 10 m, the expected series: label set → value)
    let cases: &[(&str, &[(&str, f64)])] = &[
        (
            r#"{"christmaspi.temperature.ham", room="kitchen"}"#,
            &[(kitchen, 20.0)],
        ),
        (
            r#"{"christmaspi.temperature.ham"}"#,
            &[(cellar, 10.0), (kitchen, 20.0)],
        ),
        (
            r#"{"christmaspi.temperature.ham"} offset 15s"#,
            &[(cellar, 11.5), (kitchen, 21.75)],
        ),
        (r#"sum({"christmaspi.temperature.ham"})"#, &[("{}", 30.0)]),
        (r#"rate({"christmaspi.power.total"}[5m])"#, &[("{}", 0.2)]),
        (
            r#"{__name__=~"christmaspi\\..*", room="cellar"}"#,
            &[(cellar, 10.0)],
        ),
        (
            r#"max_over_time({"christmaspi.temperature.ham", room="kitchen"}[2m])"#,
            &[(r#"{"room":"kitchen"}"#, 21.75)],
        ),
        (r#"{"servers.web-01.cpu.load"} * 2"#, &[("{}", 3.0)]),
        (
            r#"label_replace({"servers.web-01.cpu.load"}, "host", "$1", "__name__", "servers\\.([^.]+)\\..*")"#,
            &[(r#"{"__name__":"servers.web-01.cpu.load","host":"web-01"}"#, 1.5)],
        ),
        (
            r#"count by (__name__) ({__name__=~"christmaspi\\..+"})"#,
            &[
                (r#"{"__name__":"christmaspi.power.total"}"#, 1.0),
                (r#"{"__name__":"christmaspi.temperature.ham"}"#, 2.0),
            ],
        ),
    ];
    let at = T0 + 600;
    for (query, want) in cases {
        let got = roaster.instant(query, at);
        assert_eq!(got["status"], "success", "{query}: {got}");
        let mut got = series_of(&got["data"]["result"], "vector").unwrap();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let got: Vec<(String, i64, f64)> = got.into_iter().map(|(l, p)| (l, p[0].0, p[0].1)).collect();
        let want: Vec<(String, i64, f64)> =
            want.iter().map(|(l, v)| (l.to_string(), at * 1000, *v)).collect();
        assert_eq!(got, want, "{query}");
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 600 {
        return s.to_string();
    }
    let mut end = 600;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
