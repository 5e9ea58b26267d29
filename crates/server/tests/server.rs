//! End-to-end tests of the composed server, in process: every listener on port 0, a fresh
//! data directory per test, real sockets and real HTTP.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use model::Clock as _;
use server::config::Config;
use server::tokens::{Scope, TokenStore};

mod common;

use common::ADMIN;
use server::Server;

/// The shared harness ([`common::Harness`]) with this file's config and helpers.
struct TestServer(common::Harness);

impl std::ops::Deref for TestServer {
    type Target = common::Harness;
    fn deref(&self) -> &common::Harness {
        &self.0
    }
}

impl std::ops::DerefMut for TestServer {
    fn deref_mut(&mut self) -> &mut common::Harness {
        &mut self.0
    }
}

fn config(data_dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.human_listen = "127.0.0.1:0".into();
    c.server.robot_listen = "127.0.0.1:0".into();
    c.server.data_dir = data_dir.to_string_lossy().into_owned();
    c.server.readiness_probe_cache_ms = 0;
    c.server.shutdown_timeout_ms = 10_000;
    c.ingest.graphite_tcp_listen = "127.0.0.1:0".into();
    c.ingest.graphite_udp_listen = "127.0.0.1:0".into();
    c.ingest.statsd_udp_listen = "127.0.0.1:0".into();
    c.ingest.statsd_tcp_listen = "127.0.0.1:0".into();
    c.ingest.statsd_flush_interval_ms = 200;
    c
}

impl TestServer {
    fn start() -> TestServer {
        TestServer(common::Harness::start(
            config,
            std::sync::Arc::new(model::SystemClock),
        ))
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr("human-http"))
    }

    fn token(&self, scope: Scope) -> String {
        let store = TokenStore::open(&self.data()).unwrap();
        let now = model::SystemClock.now().millis();
        store
            .create(&format!("t-{}-{now}", scope.as_str()), scope, now)
            .unwrap()
            .token
    }

    fn graphite(&self, lines: &str) {
        let mut s = TcpStream::connect(self.addr("graphite-tcp")).unwrap();
        s.write_all(lines.as_bytes()).unwrap();
    }

    /// Export lines for `selector`, parsed.
    fn export(&self, selector: &str, extra: &str) -> Vec<serde_json::Value> {
        let (status, body) = http(
            "GET",
            &format!(
                "{}?match[]={}{extra}",
                self.url("/api/v1/export"),
                urlencode(selector)
            ),
            Some(ADMIN),
            None,
        );
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Polls the export until `n` series are there (ingest is asynchronous).
    fn wait_series(&self, selector: &str, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.export(selector, "");
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn shutdown(self) {
        self.0.shutdown();
    }
}

/// Unix seconds an hour ago: recent enough for storage's out-of-order window.
fn base_s() -> i64 {
    model::SystemClock.now().millis() / 1000 - 3600
}

use common::{agent, urlencode};

/// `secs` as RFC 3339 (UTC), via the civil-from-days algorithm.
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One request; returns status and body.
fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let r = common::request(method, url, token, body);
    (r.status, r.body)
}

#[test]
fn token_scopes_table() {
    let t = TestServer::start();
    let ingest = t.token(Scope::Ingest);
    let read = t.token(Scope::Read);
    let bad = "rst_admin_0000";
    // (method, path, body, token, expected status)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, u16);
    let cases: Vec<Case> = vec![
        ("GET", "/healthz", None, None, 200),
        ("GET", "/readyz", None, None, 200),
        ("GET", "/metrics", None, None, 401),
        ("GET", "/metrics", None, Some(bad), 401),
        ("GET", "/metrics", None, Some(&ingest), 403),
        ("GET", "/metrics", None, Some(&read), 200),
        ("GET", "/api/v1/switches", None, Some(&ingest), 403),
        ("GET", "/api/v1/switches", None, Some(&read), 200),
        ("GET", "/api/v1/ingest/rejections", None, Some(&read), 200),
        ("GET", "/api/v1/query?query=1%2B1", None, Some(&ingest), 403),
        ("GET", "/api/v1/query?query=1%2B1", None, Some(&read), 200),
        ("GET", "/api/v1/labels", None, Some(&read), 200),
        ("GET", "/api/v1/status/buildinfo", None, Some(&read), 200),
        (
            "PUT",
            "/api/v1/switches/graphite-udp",
            Some(r#"{"state":"paused"}"#),
            Some(&read),
            403,
        ),
        (
            "PUT",
            "/api/v1/switches/graphite-udp",
            Some(r#"{"state":"paused"}"#),
            Some(&ingest),
            403,
        ),
        (
            "PUT",
            "/api/v1/switches/graphite-udp",
            Some(r#"{"state":"paused"}"#),
            Some(ADMIN),
            200,
        ),
        ("POST", "/api/v1/admin/compact", None, Some(&read), 403),
        ("GET", "/no/such/thing", None, Some(&read), 404),
    ];
    for (method, path, body, token, want) in cases {
        let (status, text) = http(method, &t.url(path), token, body);
        assert_eq!(status, want, "{method} {path} with {token:?}: {text}");
    }
    // The robot plane takes the ingest token and refuses the read token.
    let robot = format!("http://{}/api/v1/ingest", t.addr("robot-http"));
    let now_ms = model::SystemClock.now().millis();
    let body = format!(
        r#"{{"series":[{{"name":"robot.json","labels":{{"via":"json"}},"samples":[[{now_ms},1.5]]}}]}}"#
    );
    let (status, text) = http("POST", &robot, Some(&read), Some(&body));
    assert_eq!(status, 401, "read token on the robot plane: {text}");
    let (status, text) = http("POST", &robot, Some(&ingest), Some(&body));
    assert_eq!(status, 200, "ingest token on the robot plane: {text}");
    let got = t.wait_series(r#"{__name__="robot.json"}"#, 1);
    assert_eq!(got[0]["metric"]["via"], "json");
    assert_eq!(got[0]["values"][0], 1.5);
    t.shutdown();
}

#[test]
fn switches_api_and_persistence_across_restart() {
    let mut t = TestServer::start();
    let (status, body) = http("GET", &t.url("/api/v1/switches"), Some(ADMIN), None);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v["switches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for want in [
        "graphite-tcp",
        "graphite-udp",
        "statsd-udp",
        "statsd-tcp",
        "remote-write",
        "influx",
        "json",
        "compaction",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // (name, body, expected status)
    let cases = [
        ("graphite-tcp", r#"{"state":"paused"}"#, 200),
        ("statsd-udp", r#"{"state":"blackholed"}"#, 200),
        ("compaction", r#"{"state":"paused"}"#, 200),
        ("compaction", r#"{"state":"blackholed"}"#, 400),
        ("no-such-source", r#"{"state":"open"}"#, 404),
        ("json", r#"{"state":"sideways"}"#, 400),
        ("json", r#"not json"#, 400),
    ];
    for (name, body, want) in cases {
        let (status, text) = http(
            "PUT",
            &t.url(&format!("/api/v1/switches/{name}")),
            Some(ADMIN),
            Some(body),
        );
        assert_eq!(status, want, "{name} {body}: {text}");
    }
    // Compaction paused: on-demand compaction says so.
    let (status, _) = http("POST", &t.url("/api/v1/admin/compact"), Some(ADMIN), None);
    assert_eq!(status, 409);
    // ... and the engine's background maintenance stops too.
    let (_, metrics) = http("GET", &t.url("/metrics"), Some(ADMIN), None);
    assert!(
        metrics.contains("roaster_tsdb_maintenance_paused 1\n"),
        "{metrics}"
    );

    t.restart();
    let (_, body) = http("GET", &t.url("/api/v1/switches"), Some(ADMIN), None);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let state = |n: &str| {
        v["switches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == n)
            .map(|s| s["state"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(state("graphite-tcp"), "paused");
    assert_eq!(state("statsd-udp"), "blackholed");
    assert_eq!(state("compaction"), "paused");
    assert_eq!(state("json"), "open");
    let (_, metrics) = http("GET", &t.url("/metrics"), Some(ADMIN), None);
    assert!(
        metrics.contains("roaster_tsdb_maintenance_paused 1\n"),
        "the paused compaction switch pauses maintenance again after a restart"
    );
    assert!(
        metrics.contains("graphite-tcp"),
        "switches are visible in /metrics"
    );
    t.shutdown();
}

#[test]
fn readyz_reports_reasons() {
    let t = TestServer::start();
    let (status, body) = http("GET", &t.url("/readyz"), None, None);
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    // Take the data directory away: the probe cannot create its file.
    let moved = t.data().with_file_name("moved");
    std::fs::rename(t.data(), &moved).unwrap();
    let (status, body) = http("GET", &t.url("/readyz"), None, None);
    assert_eq!(status, 503);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "not_ready");
    assert!(
        v["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "storage_not_writable"),
        "{body}"
    );
    std::fs::rename(&moved, t.data()).unwrap();
    let (status, _) = http("GET", &t.url("/readyz"), None, None);
    assert_eq!(status, 200);
    t.shutdown();
}

#[test]
fn metrics_cover_every_crate() {
    let t = TestServer::start();
    t.graphite(&format!("m.one 1 {}\n", base_s()));
    t.wait_series(r#"{__name__="m.one"}"#, 1);
    let (status, text) = http("GET", &t.url("/metrics"), Some(ADMIN), None);
    assert_eq!(status, 200);
    for family in [
        "roaster_ingest_",
        "roaster_tsdb_",
        "roaster_human_request_duration_seconds_bucket",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(text.contains(family), "{family} missing from /metrics");
    }
    t.shutdown();
}

#[test]
fn export_round_trip_after_graphite_write() {
    let t = TestServer::start();
    let base = base_s();
    let mut lines = String::new();
    for i in 0..10 {
        lines.push_str(&format!("host1.cpu0.x {}.5 {}\n", i, base + i * 10));
        lines.push_str(&format!("host2.cpu0.x {} {}\n", i * 2, base + i * 10));
    }
    lines.push_str(&format!("tagged.metric;dc=eu;host=a 42 {base}\n"));
    t.graphite(&lines);
    let got = t.wait_series(r#"{__name__=~"host.+"}"#, 2);
    assert_eq!(got.len(), 2, "{got:?}");
    let h1 = got
        .iter()
        .find(|s| s["metric"]["__name__"] == "host1.cpu0.x")
        .unwrap();
    assert_eq!(h1["timestamps"].as_array().unwrap().len(), 10);
    assert_eq!(h1["timestamps"][0], base * 1000);
    assert_eq!(h1["values"][3], 3.5);

    let tagged = t.wait_series(r#"{__name__="tagged.metric"}"#, 1);
    assert_eq!(tagged[0]["metric"]["dc"], "eu");
    assert_eq!(tagged[0]["metric"]["host"], "a");

    // (query suffix, points expected for host1)
    let windows = [
        (format!("&start={}&end={}", base + 20, base + 40), 3),
        (format!("&start={}", rfc3339(base)), 10),
        (format!("&end={}", base), 1),
    ];
    for (extra, want) in windows {
        let got = t.export(r#"{__name__="host1.cpu0.x"}"#, &extra);
        assert_eq!(got[0]["values"].as_array().unwrap().len(), want, "{extra}");
    }
    // Two selectors that overlap export each series once.
    let url = format!(
        "{}?match[]={}&match[]={}",
        t.url("/api/v1/export"),
        urlencode(r#"{__name__=~"host.+"}"#),
        urlencode(r#"{__name__="host1.cpu0.x"}"#)
    );
    let (_, body) = http("GET", &url, Some(ADMIN), None);
    assert_eq!(body.lines().count(), 2);
    // Bad requests.
    for bad in [
        "",
        "?match[]=%7B",
        "?match[]=up&start=yesterday",
        "?match[]=%7Ba%3D~%22.*%22%7D",
    ] {
        let (status, _) = http(
            "GET",
            &format!("{}{bad}", t.url("/api/v1/export")),
            Some(ADMIN),
            None,
        );
        assert_eq!(status, 400, "{bad}");
    }
    t.shutdown();
}

#[test]
fn prometheus_api_over_storage() {
    let t = TestServer::start();
    let now = model::SystemClock.now().millis() / 1000;
    t.graphite(&format!("q.metric 2 {}\nq.metric 4 {}\n", now - 20, now - 10));
    t.wait_series(r#"{__name__="q.metric"}"#, 1);
    let q = urlencode(r#"sum(count_over_time({__name__="q.metric"}[5m]))"#);
    let (status, body) = http(
        "GET",
        &t.url(&format!("/api/v1/query?query={q}&time={now}")),
        Some(ADMIN),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["result"][0]["value"][1], "2", "{body}");
    // The same as a form POST.
    let resp = agent()
        .post(&t.url("/api/v1/query"))
        .header("Authorization", &format!("Bearer {ADMIN}"))
        .send_form([
            ("query", r#"sum(count_over_time({__name__="q.metric"}[5m]))"#),
            ("time", &now.to_string()),
        ])
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (status, body) = http("GET", &t.url("/api/v1/label/__name__/values"), Some(ADMIN), None);
    assert_eq!(status, 200);
    assert!(body.contains("q.metric"), "{body}");
    t.shutdown();
}

#[test]
fn admin_compact_and_snapshot() {
    let t = TestServer::start();
    let base = base_s();
    t.graphite(&format!("c.metric 1 {base}\nc.metric 2 {}\n", base + 10));
    t.wait_series(r#"{__name__="c.metric"}"#, 1);
    let (status, body) = http("POST", &t.url("/api/v1/admin/compact"), Some(ADMIN), None);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "success");
    let got = t.export(r#"{__name__="c.metric"}"#, "");
    assert_eq!(
        got[0]["values"].as_array().unwrap().len(),
        2,
        "data readable after compaction"
    );

    let dest = t.data().with_file_name("snap");
    let body = serde_json::json!({ "dest": dest }).to_string();
    let (status, text) = http("POST", &t.url("/api/v1/admin/snapshot"), Some(ADMIN), Some(&body));
    assert_eq!(status, 200, "{text}");
    assert!(dest.join("tsdb").is_dir());
    assert!(dest.join("tokens.json").is_file());
    let (status, _) = http(
        "POST",
        &t.url("/api/v1/admin/snapshot"),
        Some(ADMIN),
        Some(r#"{"dest":"relative/path"}"#),
    );
    assert_eq!(status, 400);
    t.shutdown();
}

#[test]
fn first_start_generates_one_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = dir.path().join("data");
    let s = rt.block_on(Server::start(config(&data))).unwrap();
    let token = s.admin_token.clone().unwrap();
    assert!(token.starts_with("rst_admin_"));
    let url = format!("http://{}/api/v1/switches", s.addrs.human().unwrap());
    assert_eq!(http("GET", &url, Some(&token), None).0, 200);
    rt.block_on(s.shutdown()).unwrap();
    // Second start: the admin exists, nothing is generated or shown.
    let s = rt.block_on(Server::start(config(&data))).unwrap();
    assert_eq!(s.admin_token, None);
    let listeners: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("listeners.json")).unwrap()).unwrap();
    for l in [
        "human-http",
        "robot-http",
        "graphite-tcp",
        "graphite-udp",
        "statsd-udp",
        "statsd-tcp",
    ] {
        assert!(
            listeners[l].is_string(),
            "{l} missing from listeners.json: {listeners}"
        );
    }
    rt.block_on(s.shutdown()).unwrap();
    assert!(!data.join("listeners.json").exists(), "removed at shutdown");
}

/// The human plane answers promptly while robots flood Graphite TCP.
#[test]
fn human_plane_stays_fast_under_a_graphite_flood() {
    let t = TestServer::start();
    let addr = t.addr("graphite-tcp");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let addr = addr.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let mut sent = 0u64;
                let mut ts = base_s();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut buf = String::with_capacity(64 << 10);
                    for i in 0..1000 {
                        buf.push_str(&format!("flood{w}.host{}.x {} {ts}\n", i % 500, i));
                    }
                    ts += 1;
                    if s.write_all(buf.as_bytes()).is_err() {
                        break;
                    }
                    sent += 1000;
                }
                sent
            })
        })
        .collect();
    let read = t.token(Scope::Read);
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let t0 = Instant::now();
        let (status, _) = http("GET", &t.url("/api/v1/switches"), Some(&read), None);
        latencies.push(t0.elapsed());
        assert_eq!(status, 200);
        // A storage read through the query API, under the same flood.
        let t0 = Instant::now();
        let q = urlencode(r#"count_over_time({__name__="flood0.host1.x"}[2h])"#);
        let (status, body) = http(
            "GET",
            &t.url(&format!("/api/v1/query?query={q}")),
            Some(&read),
            None,
        );
        latencies.push(t0.elapsed());
        assert_eq!(status, 200, "{body}");
        let (status, _) = http("GET", &t.url("/healthz"), None, None);
        assert_eq!(status, 200);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "human plane under flood: {} requests, p50 {:?}, p99 {:?}; {sent} graphite lines sent",
        latencies.len(),
        latencies[latencies.len() / 2],
        p99
    );
    assert!(p99 < Duration::from_millis(500), "p99 {p99:?}");
    t.shutdown();
}
