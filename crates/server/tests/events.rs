//! End-to-end tests of events over HTTP: a real server in process, every listener on port 0,
//! a fresh data directory per test, real sockets, a real `events.db`.

use std::path::Path;
use std::time::Duration;

use model::Clock as _;
use server::config::Config;
use server::tokens::{Scope, TokenStore};
use server::{Server, StartOptions};

mod common;

use common::ADMIN;

/// The shared harness ([`common::Harness`]) with an ingest and a read token.
struct TestServer {
    h: common::Harness,
    ingest: String,
    read: String,
}

impl std::ops::Deref for TestServer {
    type Target = common::Harness;
    fn deref(&self) -> &common::Harness {
        &self.h
    }
}

impl std::ops::DerefMut for TestServer {
    fn deref_mut(&mut self) -> &mut common::Harness {
        &mut self.h
    }
}

fn config(data_dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.human_listen = "127.0.0.1:0".into();
    c.server.robot_listen = "127.0.0.1:0".into();
    c.server.data_dir = data_dir.to_string_lossy().into_owned();
    c.server.shutdown_timeout_ms = 10_000;
    for l in [
        &mut c.ingest.graphite_tcp_listen,
        &mut c.ingest.graphite_udp_listen,
        &mut c.ingest.statsd_udp_listen,
        &mut c.ingest.statsd_tcp_listen,
    ] {
        *l = "off".into();
    }
    c
}

impl TestServer {
    fn start() -> TestServer {
        let h = common::Harness::start(config, std::sync::Arc::new(model::SystemClock));
        let store = TokenStore::open(&h.data()).unwrap();
        let now = model::SystemClock.now().millis();
        let ingest = store.create("deployer", Scope::Ingest, now).unwrap().token;
        let read = store.create("reader", Scope::Read, now).unwrap().token;
        TestServer { h, ingest, read }
    }

    fn human(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr("human-http"))
    }

    fn robot(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr("robot-http"))
    }

    /// POSTs a body to the robot plane with the ingest token.
    fn post(&self, body: &str) -> (u16, serde_json::Value) {
        let (status, text, _) = http(
            "POST",
            &self.robot("/api/v1/events"),
            Some(&self.ingest),
            Some(body),
        );
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// GETs a human-plane path with the read token.
    fn get(&self, path_and_query: &str) -> (u16, serde_json::Value) {
        let (status, text, _) = http("GET", &self.human(path_and_query), Some(&self.read), None);
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// The ids of one search page, and its cursor.
    fn ids(&self, query: &str) -> (Vec<String>, Option<String>) {
        let (status, v) = self.get(&format!("/api/v1/events?{query}"));
        assert_eq!(status, 200, "{query}: {v}");
        let ids = v["data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        (ids, v["data"]["next_cursor"].as_str().map(str::to_owned))
    }

    fn set_switch(&self, state: &str) {
        let (status, text, _) = http(
            "PUT",
            &self.human("/api/v1/switches/events"),
            Some(ADMIN),
            Some(&format!(r#"{{"state":"{state}"}}"#)),
        );
        assert_eq!(status, 200, "{text}");
    }

    fn metric(&self, line_prefix: &str) -> f64 {
        let (status, text, _) = http("GET", &self.human("/metrics"), Some(&self.read), None);
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(line_prefix).and_then(|r| r.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{line_prefix} not in /metrics"))
    }

    fn shutdown(self) {
        self.h.shutdown();
    }
}

/// One request; returns status, body and the `Retry-After` header.
fn http(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String, Option<String>) {
    let r = common::request(method, url, token, body);
    (r.status, r.body, r.retry_after)
}

fn now_ms() -> i64 {
    model::SystemClock.now().millis()
}

fn event(id: &str, t: i64, kind: &str, host: &str, summary: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "time": t, "kind": kind, "host": host, "summary": summary})
}

#[test]
fn batch_results_and_idempotent_resend() {
    let t = TestServer::start();
    let t0 = now_ms() - 60_000;
    let batch = serde_json::json!([
        event("e-1", t0, "deploy.finished", "web1", "deployed shop 1.2"),
        {"id": "e-2", "kind": "Not A Verb", "summary": "x"},
        {"id": "e-3", "kind": "chef.run", "summary": "two\nlines"},
        event("e-4", t0 + 1, "chef.run", "db1", "chef applied base"),
        {"kind": "package.installed", "host": "web2", "summary": "nginx 1.27", "labels": {"team": "web"}},
        {"id": "e-6", "kind": "deploy.started", "summary": "s", "source": "forged"},
        event("e-1", t0, "deploy.finished", "web1", "same id again in one batch"),
        "not an object",
        {"id": "e-9", "kind": "audit.api", "summary": "a forged audit event"},
    ]);
    let (status, v) = t.post(&batch.to_string());
    assert_eq!(status, 200, "{v}");
    // (index, status, reason)
    let want: &[(usize, &str, Option<&str>)] = &[
        (0, "stored", None),
        (1, "rejected", Some("bad_kind")),
        (2, "rejected", Some("not_one_line")),
        (3, "stored", None),
        (4, "stored", None),
        (5, "rejected", Some("bad_json")),
        (6, "duplicate", None),
        (7, "rejected", Some("bad_json")),
        (8, "rejected", Some("reserved_kind")),
    ];
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), want.len());
    for (i, status, reason) in want {
        let r = &results[*i];
        assert_eq!(r["index"], *i);
        assert_eq!(r["status"], *status, "item {i}: {r}");
        assert_eq!(r["reason"].as_str(), *reason, "item {i}: {r}");
    }
    assert_eq!(
        (
            v["stored"].as_u64(),
            v["duplicates"].as_u64(),
            v["rejected"].as_u64()
        ),
        (Some(3), Some(1), Some(5))
    );
    // The server assigned a time-ordered id (UUIDv7) to the event without one.
    let generated = results[4]["id"].as_str().unwrap();
    assert_eq!(generated.len(), 36);
    assert_eq!(&generated[14..15], "7");

    // Resending the whole batch stores nothing new.
    let (status, v) = t.post(&batch.to_string());
    assert_eq!(status, 200);
    assert_eq!(
        (v["stored"].as_u64(), v["duplicates"].as_u64()),
        (Some(1), Some(3)),
        "{v}"
    );
    // (item 4 had no id, so its resend is a new event: that is why clients set ids)

    // Stored events carry the server's fields.
    let (_, v) = t.get("/api/v1/events?host=web1");
    let e = &v["data"]["events"][0];
    assert_eq!(e["id"], "e-1");
    assert_eq!(e["source"], "deployer", "source is the token's name");
    assert!(e["received_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(e["summary"], "deployed shop 1.2", "a duplicate never overwrites");

    // Whole-request failures.
    let cases: &[(&str, u16)] = &[("", 400), ("42", 400), ("[1,", 400), ("\u{ff}", 400)];
    for (body, want) in cases {
        let (status, v) = t.post(body);
        assert_eq!(status, *want, "{body:?}: {v}");
    }
    // One broken object is one rejected item.
    let (status, v) = t.post("{not json");
    assert_eq!((status, v["rejected"].as_u64()), (200, Some(1)), "{v}");
    let too_many: Vec<_> = (0..1001)
        .map(|i| event(&format!("b-{i}"), t0, "x.y", "h", "s"))
        .collect();
    let (status, _) = t.post(&serde_json::Value::Array(too_many).to_string());
    assert_eq!(status, 413);
    let (status, _, _) = http("POST", &t.robot("/api/v1/events"), Some(&t.read), Some("{}"));
    assert_eq!(status, 401, "a read token cannot write events");
    let (status, _, _) = http("GET", &t.human("/api/v1/events"), Some(&t.ingest), None);
    assert_eq!(status, 403, "an ingest token cannot read events");

    assert_eq!(
        t.metric("roaster_events_rejected_total{reason=\"bad_kind\"}"),
        2.0
    );
    assert_eq!(
        t.metric("roaster_events_rejected_total{reason=\"reserved_kind\"}"),
        2.0,
        "robots cannot forge audit events"
    );
    assert!(t.metric("roaster_events_duplicates_total") >= 3.0);
    assert!(t.metric("roaster_events_insert_duration_seconds_count") >= 2.0);
    t.shutdown();
}

#[test]
fn kill_switch_states_and_restart() {
    let mut t = TestServer::start();
    let t0 = now_ms() - 1000;
    let one = |id: &str| event(id, t0, "deploy.finished", "web1", "x").to_string();
    // (switch state, expected status, stored after)
    let cases: &[(&str, u16, u64)] = &[
        ("open", 200, 1),
        ("paused", 503, 1),
        ("blackholed", 200, 1),
        ("open", 200, 2),
    ];
    for (i, (state, want, stored)) in cases.iter().enumerate() {
        t.set_switch(state);
        let (status, text, retry) = http(
            "POST",
            &t.robot("/api/v1/events"),
            Some(&t.ingest),
            Some(&one(&format!("s-{i}"))),
        );
        assert_eq!(status, *want, "{state}: {text}");
        if *state == "paused" {
            assert_eq!(retry.as_deref(), Some("5"), "paused answers carry Retry-After");
        }
        if *state == "blackholed" {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["blackholed"], true);
            assert_eq!(v["results"][0]["status"], "blackholed");
        }
        // Only the posted events: each switch change is itself an audit.api event.
        let q = store::EventQuery {
            kind_prefix: Some("deploy".into()),
            ..store::EventQuery::default()
        };
        let count = t
            .server
            .as_ref()
            .unwrap()
            .events()
            .store()
            .query(&q)
            .unwrap()
            .events
            .len() as u64;
        assert_eq!(count, *stored, "after {state}");
    }
    assert_eq!(t.metric("roaster_events_blackholed_total"), 1.0);
    assert_eq!(t.metric("roaster_events_paused_requests_total"), 1.0);
    assert_eq!(
        t.metric("roaster_switch_state{name=\"events\",state=\"open\"}"),
        1.0
    );
    let (_, v) = t.get("/api/v1/switches");
    assert!(
        v["switches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "events"),
        "{v}"
    );

    // The switch state and the events survive a restart.
    t.set_switch("paused");
    t.restart();
    let (status, _, _) = http(
        "POST",
        &t.robot("/api/v1/events"),
        Some(&t.ingest),
        Some(&one("s-9")),
    );
    assert_eq!(status, 503, "paused survives restart");
    t.set_switch("open");
    let (ids, _) = t.ids("limit=10&kind=deploy");
    // same time: the store's tie order, higher shard first (2 shards by default), then
    // newest-stored first (s-3 was stored after s-0)
    let want = if store::shard_of("s-0", 2) > store::shard_of("s-3", 2) {
        ["s-0", "s-3"]
    } else {
        ["s-3", "s-0"]
    };
    assert_eq!(ids, want, "same time: the documented tie order");
    t.shutdown();
}

#[test]
fn filters_table() {
    let t = TestServer::start();
    let base = now_ms() - 3_600_000;
    let batch = serde_json::json!([
        {"id": "a", "time": base, "kind": "deploy.started", "host": "web1", "service": "shop",
         "labels": {"team": "web", "env": "prod"}, "summary": "deploy shop 1.2 started"},
        {"id": "b", "time": base + 1000, "kind": "deploy.finished", "host": "web1", "service": "shop",
         "labels": {"team": "web", "env": "prod"}, "summary": "deploy shop 1.2 finished"},
        {"id": "c", "time": base + 2000, "kind": "chef.run", "host": "db1",
         "labels": {"team": "db", "env": "staging"}, "summary": "chef applied recipe forgotten-cleanup",
         "payload": {"recipe": "forgotten-cleanup", "resources": ["reboot"]}},
        {"id": "d", "time": base + 3000, "kind": "deployment.note", "host": "web2",
         "summary": "a kind sharing a prefix but not a dot boundary", "severity": "warning"},
        {"id": "e", "time": base + 4000, "kind": "package.installed", "host": "db1", "service": "pg",
         "subject": "postgresql-17", "summary": "package upgraded", "severity": "critical"},
    ]);
    let (status, v) = t.post(&batch.to_string());
    assert_eq!((status, v["stored"].as_u64()), (200, Some(5)), "{v}");
    let iso = |ms: i64| {
        let secs = ms / 1000;
        format!("{secs}")
    };
    // (query, expected ids newest first)
    let cases: Vec<(String, Vec<&str>)> = vec![
        (String::new(), vec!["e", "d", "c", "b", "a"]),
        ("kind=deploy".into(), vec!["b", "a"]),
        ("kind=deploy.".into(), vec!["b", "a"]),
        ("kind=deploy.finished".into(), vec!["b"]),
        ("host=db1".into(), vec!["e", "c"]),
        ("service=shop".into(), vec!["b", "a"]),
        ("label=team%3D%22db%22".into(), vec!["c"]),
        (
            "label=env%3D~%22prod%7Cstaging%22&label=team!%3Dweb".into(),
            vec!["c"],
        ),
        ("q=forgotten".into(), vec!["c"]),
        ("q=reboot".into(), vec!["c"]),
        ("q=deploy%20finished".into(), vec!["b"]),
        ("q=postgres*".into(), vec!["e"]),
        ("q=shop&host=web1".into(), vec!["b", "a"]),
        (
            format!("from={}&to={}", iso(base + 1000), iso(base + 3000)),
            vec!["c", "b"],
        ),
        ("from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z".into(), vec![]),
        ("host=nowhere".into(), vec![]),
    ];
    for (query, want) in &cases {
        let (ids, cursor) = t.ids(query);
        assert_eq!(&ids, want, "{query}");
        assert_eq!(cursor, None, "{query}");
    }
    // Clear 400s in the Prometheus error envelope.
    for bad in [
        "limit=0",
        "limit=5000",
        "from=yesterday",
        "cursor=garbage",
        "label=team",
        "label=env%3D~%22(%22",
        "colour=red",
        "host=a&host=b",
    ] {
        let (status, v) = t.get(&format!("/api/v1/events?{bad}"));
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["status"], "error");
        assert_eq!(v["errorType"], "bad_data");
    }
    // The event's JSON is the public envelope.
    let (_, v) = t.get("/api/v1/events?q=forgotten");
    let c = &v["data"]["events"][0];
    assert_eq!(c["payload"]["recipe"], "forgotten-cleanup");
    assert_eq!(c["labels"]["team"], "db");
    assert_eq!(c["severity"], "info");

    // Annotations: oldest first, compact, filtered.
    let (status, v) = t.get(&format!(
        "/api/v1/annotations?from={}&to={}&host=db1",
        iso(base - 1000),
        iso(base + 10_000)
    ));
    assert_eq!(status, 200, "{v}");
    let rows = v["data"]["annotations"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["c", "e"]);
    assert_eq!(rows[1]["time"], base + 4000);
    assert_eq!(rows[1]["severity"], "critical");
    assert_eq!(rows[1]["service"], "pg");
    assert!(rows[0].get("service").is_none(), "absent fields are left out");
    assert_eq!(v["data"]["truncated"], false);
    let (_, v) = t.get("/api/v1/annotations?kind=deploy");
    assert_eq!(
        v["data"]["annotations"].as_array().unwrap().len(),
        2,
        "default range: the last 24 h"
    );
    for bad in ["from=x", "from=20&to=10", "q=words"] {
        let (status, _) = t.get(&format!("/api/v1/annotations?{bad}"));
        assert_eq!(status, 400, "{bad}");
    }
    t.shutdown();
}

#[test]
fn paging_is_stable_while_events_arrive() {
    let t = TestServer::start();
    let base = now_ms() - 3_600_000;
    let batch: Vec<_> = (0..250)
        .map(|i| event(&format!("p-{i:04}"), base + i * 10, "cron.run", "web1", "tick"))
        .collect();
    let (status, _) = t.post(&serde_json::Value::Array(batch).to_string());
    assert_eq!(status, 200);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("kind=cron&limit=40&cursor={c}"),
            None => "kind=cron&limit=40".into(),
        };
        let (ids, next) = t.ids(&q);
        seen.extend(ids);
        pages += 1;
        // Newer events arrive between pages, and one older than the cursor's position.
        let arriving = serde_json::json!([
            event(
                &format!("new-{pages}"),
                base + 10_000 + pages,
                "cron.run",
                "web1",
                "tick"
            ),
            event(
                &format!("old-{pages}"),
                base - 1000 - pages,
                "cron.run",
                "web1",
                "late"
            ),
        ]);
        assert_eq!(t.post(&arriving.to_string()).0, 200);
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages < 50, "paging does not end");
    }
    let originals: Vec<&String> = seen.iter().filter(|id| id.starts_with("p-")).collect();
    assert_eq!(originals.len(), 250, "every original event seen once");
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), seen.len(), "no event on two pages");
    assert!(
        seen.iter().all(|id| !id.starts_with("new-")),
        "newer arrivals are not on later pages"
    );
    assert!(
        seen.iter().any(|id| id.starts_with("old-")),
        "older arrivals show up where they belong"
    );
    t.shutdown();
}

#[test]
fn retention_runs_in_the_server_and_keeps_audit_events() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut c = config(&data);
    c.events.retention_days = 1;
    c.events.retention_interval_ms = 50;
    let now = now_ms();
    let clock = std::sync::Arc::new(model::ManualClock::new(model::Timestamp(now)));
    let opts = StartOptions {
        admin_token: Some(ADMIN.into()),
        clock: clock.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(Server::start_with(c, opts)).unwrap();
    let ingest = TokenStore::open(&data)
        .unwrap()
        .create("robot", Scope::Ingest, now)
        .unwrap()
        .token;
    let day = 24 * 3600 * 1000;
    let batch = serde_json::json!([
        event("old", now - 2 * day, "deploy.finished", "web1", "two days old"),
        event("new", now - 1000, "deploy.finished", "web1", "recent"),
    ]);
    let url = format!("http://{}/api/v1/events", server.addrs.robot().unwrap());
    let (status, text, _) = http("POST", &url, Some(&ingest), Some(&batch.to_string()));
    assert_eq!(status, 200, "{text}");
    let events = server.events().clone();
    // audit events come only from the server itself (robots may not send audit.* kinds)
    let old_audit: model::event::EventInput = serde_json::from_value(event(
        "old-audit",
        now - 2 * day,
        "audit.api",
        "web1",
        "audit events are kept forever",
    ))
    .unwrap();
    let old_audit = events.validate(old_audit, "roaster").unwrap();
    events.record_event(old_audit).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while events.store().count().unwrap() > 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let page = events.store().query(&store::EventQuery::default()).unwrap();
    let ids: Vec<&str> = page.events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["new", "old-audit"]);
    assert!(events.metrics().retention_deleted.get() >= 1);
    rt.block_on(server.shutdown()).unwrap();
}
