//! Small query API requests tried on the request's worker (`human_inline_query_budget_us`):
//! the same data in three real servers, with a large budget, with a 1 µs budget (every
//! attempt that reads a series overruns and is run again under `block_in_place`) and with the
//! path turned off, must give byte-identical answers, over GET and form POST; the
//! `roaster_human_inline_queries_total` counters show which path answered.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use model::Clock as _;
use server::config::Config;

mod common;

use common::{ADMIN, Harness, agent, request, urlencode};

fn base(data_dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.human_listen = "127.0.0.1:0".into();
    c.server.robot_listen = "127.0.0.1:0".into();
    c.server.data_dir = data_dir.to_string_lossy().into_owned();
    c.server.shutdown_timeout_ms = 10_000;
    // two workers, as a multi-core deployment has: `block_in_place` runs for real
    c.server.human_worker_threads = 2;
    c.ingest.graphite_tcp_listen = "127.0.0.1:0".into();
    c.ingest.graphite_udp_listen = "off".into();
    c.ingest.statsd_udp_listen = "off".into();
    c.ingest.statsd_tcp_listen = "off".into();
    c
}

/// The largest budget, so that an unoptimised build on a busy machine stays within it.
fn large_budget(d: &Path) -> Config {
    let mut c = base(d);
    c.server.human_inline_query_budget_us = 10_000;
    c
}

fn tiny_budget(d: &Path) -> Config {
    let mut c = base(d);
    c.server.human_inline_query_budget_us = 1;
    c
}

fn no_inline(d: &Path) -> Config {
    let mut c = base(d);
    c.server.human_inline_query_budget_us = 0;
    c
}

fn url(h: &Harness, path: &str) -> String {
    format!("http://{}{path}", h.addr("human-http"))
}

/// Writes the same points into `h` and waits until a query sees all of them.
fn load(h: &Harness, now: i64) {
    let mut lines = String::new();
    for i in 0..30 {
        let t = now - 300 + i * 10;
        lines.push_str(&format!("il.cpu {}.25 {t}\nil.mem {} {t}\n", i % 7, 1000 + i * 3));
        lines.push_str(&format!("il.host{}.load 0.{i} {t}\n", i % 3));
    }
    TcpStream::connect(h.addr("graphite-tcp"))
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let q = urlencode(r#"count({__name__=~"il.+"})"#);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = request(
            "GET",
            &url(h, &format!("/api/v1/query?query={q}&time={now}")),
            Some(ADMIN),
            None,
        );
        let n = r.json()["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_owned);
        if n.as_deref() == Some("5") {
            return;
        }
        assert!(Instant::now() < deadline, "data never arrived: {}", r.body);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every answer `h` gives to the query set, as (status, body) in order.
fn answers(h: &Harness, now: i64) -> Vec<(u16, String)> {
    let (s, e) = (now - 400, now);
    let range = |q: &str, extra: &str| {
        format!(
            "/api/v1/query_range?query={}&start={s}&end={e}&step=10s{extra}",
            urlencode(q)
        )
    };
    let instant = |q: &str| format!("/api/v1/query?query={}&time={}", urlencode(q), now - 5);
    let paths = [
        range(r#"{__name__="il.cpu"}"#, ""),
        range(r#"{__name__="il.cpu"} * 2 + on() {__name__="il.mem"}"#, ""),
        range(r#"{__name__="il.host1.load"} > 0.1"#, ""),
        range(r#"{__name__="il.nothing"}"#, ""),
        range("42", ""),
        range(r#"sum({__name__=~"il.host.+"})"#, ""),
        range(r#"{__name__="il.cpu""#, ""),
        range(r#"{__name__="il.cpu"}"#, "&timeout=0s"),
        format!(
            "/api/v1/query_range?query={}&start={s}&end={e}&step=0",
            urlencode("up")
        ),
        instant(r#"{__name__="il.mem"}"#),
        instant(r#"{__name__="il.mem"} offset 1m"#),
        instant(r#"{__name__="il.cpu"} - {__name__="il.cpu"}"#),
    ];
    let mut out: Vec<(u16, String)> = paths
        .iter()
        .map(|p| {
            let r = request("GET", &url(h, p), Some(ADMIN), None);
            (r.status, r.body)
        })
        .collect();
    // the same query as a form POST
    let mut resp = agent()
        .post(&url(h, "/api/v1/query_range"))
        .header("Authorization", &format!("Bearer {ADMIN}"))
        .send_form([
            ("query", r#"{__name__="il.mem"}"#),
            ("start", &s.to_string()),
            ("end", &e.to_string()),
            ("step", "30"),
        ])
        .unwrap();
    out.push((resp.status().as_u16(), resp.body_mut().read_to_string().unwrap()));
    out
}

/// `roaster_human_inline_queries_total` by outcome: (answered, handed over).
fn inline_counts(h: &Harness) -> (f64, f64) {
    let r = request("GET", &url(h, "/metrics"), Some(ADMIN), None);
    assert_eq!(r.status, 200);
    let get = |outcome: &str| {
        let prefix = format!("roaster_human_inline_queries_total{{outcome=\"{outcome}\"}} ");
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
            .parse::<f64>()
            .unwrap()
    };
    (get("answered"), get("handed_over"))
}

#[test]
fn small_queries_answer_the_same_on_the_worker_and_off_it() {
    let clock = std::sync::Arc::new(model::SystemClock);
    let now = clock.now().millis() / 1000;
    let servers: Vec<Harness> = [large_budget, tiny_budget, no_inline]
        .into_iter()
        .map(|c| Harness::start(c, clock.clone()))
        .collect();
    for h in &servers {
        load(h, now);
    }
    let want = answers(&servers[2], now);
    assert_eq!(want[0].0, 200, "{}", want[0].1);
    assert!(want[0].1.contains(r#""values":[["#), "{}", want[0].1);
    assert_eq!(want[6].0, 400, "a parse error: {}", want[6].1);
    assert_eq!(want[7].0, 503, "a zero timeout parameter: {}", want[7].1);
    assert!(want[7].1.contains(r#""errorType":"timeout""#), "{}", want[7].1);
    for h in &servers[..2] {
        let got = answers(h, now);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "answer {i}");
        }
    }
    let (answered, handed_over) = inline_counts(&servers[0]);
    assert!(answered >= 8.0, "large budget: {answered} answered on the worker");
    // only the request whose own `timeout=0s` ran out (it runs out again off the worker)
    assert_eq!(handed_over, 1.0, "large budget: nothing this small overruns");
    let (_, handed_over) = inline_counts(&servers[1]);
    assert!(handed_over >= 6.0, "1 µs budget: {handed_over} handed over");
    assert_eq!(inline_counts(&servers[2]), (0.0, 0.0), "turned off");
    for h in servers {
        h.shutdown();
    }
}
