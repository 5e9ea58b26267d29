//! Heartbeats and the audit trail end to end: a real server on port 0 with a manual clock,
//! real HTTP on both planes, the real events.db and time-series storage underneath.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::{Clock as _, ManualClock, Timestamp};
use server::config::Config;
use server::tokens::{Scope, TokenStore};

mod common;

use common::ADMIN;

/// The shared harness ([`common::Harness`]) on a manual clock the tests advance.
struct TestServer {
    h: common::Harness,
    clock: Arc<ManualClock>,
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
    c.ingest.graphite_tcp_listen = "off".into();
    c.ingest.graphite_udp_listen = "off".into();
    c.ingest.statsd_udp_listen = "off".into();
    c.ingest.statsd_tcp_listen = "off".into();
    c.heartbeat.series_interval_ms = 100;
    c.heartbeats = vec![server::heartbeat::HeartbeatDef {
        name: "from-config".into(),
        period: "1d".into(),
        grace: "1h".into(),
    }];
    c
}

impl TestServer {
    fn start() -> TestServer {
        let now = model::SystemClock.now();
        let clock = Arc::new(ManualClock::new(Timestamp(now.millis() - 3_600_000)));
        TestServer {
            h: common::Harness::start(config, clock.clone()),
            clock,
        }
    }

    fn human(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr("human-http"))
    }

    fn robot(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr("robot-http"))
    }

    fn token(&self, name: &str, scope: Scope) -> String {
        let store = TokenStore::open(&self.data()).unwrap();
        store.create(name, scope, 0).unwrap().token
    }

    fn shutdown(self) {
        self.h.shutdown();
    }
}

use common::{agent, request as http, urlencode};

/// The values of the series matching `selector`, via the export API (all series, in order).
fn export_values(t: &TestServer, selector: &str) -> Vec<f64> {
    let r = http(
        "GET",
        &t.human(&format!("/api/v1/export?match[]={}", urlencode(selector))),
        Some(ADMIN),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .filter(|l| !l.is_empty())
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn heartbeat_lifecycle_over_http() {
    let mut t = TestServer::start();
    let ingest = t.token("backup-job", Scope::Ingest);
    let read = t.token("viewer", Scope::Read);

    // Definitions live on the human plane; changing them needs admin.
    let put = |t: &TestServer, token: &str, body: &str| {
        http(
            "PUT",
            &t.human("/api/v1/heartbeats/backup"),
            Some(token),
            Some(body),
        )
    };
    assert_eq!(put(&t, &read, r#"{"period":"1h"}"#).status, 403);
    let r = put(&t, ADMIN, r#"{"period":"1h","grace":"10m"}"#);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["data"]["status"], "never_seen");
    assert_eq!(put(&t, ADMIN, r#"{"period":"2h","grace":"10m"}"#).status, 200);
    assert_eq!(put(&t, ADMIN, r#"{"period":"1h","grace":"10m"}"#).status, 200);
    assert_eq!(put(&t, ADMIN, r#"{"period":"soon"}"#).status, 400);
    let r = http(
        "PUT",
        &t.human("/api/v1/heartbeats/from-config"),
        Some(ADMIN),
        Some(r#"{"period":"1h"}"#),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let r = http(
        "PUT",
        &t.human("/api/v1/heartbeats/bad%20name"),
        Some(ADMIN),
        Some(r#"{"period":"1h"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);

    // Pings live on the robot plane with an ingest token.
    let ping = |t: &TestServer, token: Option<&str>, path: &str, body: Option<&str>| {
        http(
            "POST",
            &t.robot(&format!("/api/v1/heartbeats/{path}")),
            token,
            body,
        )
    };
    assert_eq!(ping(&t, None, "backup/start", None).status, 401);
    assert_eq!(ping(&t, Some(&read), "backup/start", None).status, 403);
    let r = ping(&t, Some(&ingest), "nope/start", None);
    assert_eq!(r.status, 404);
    assert!(r.body.contains("no heartbeat named \\\"nope\\\""), "{}", r.body);
    assert_eq!(ping(&t, Some(&ingest), "backup/finish", None).status, 404);
    assert_eq!(
        ping(&t, Some(&ingest), "backup/success?duration=abc", None).status,
        400
    );
    let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(2000));
    assert_eq!(ping(&t, Some(&ingest), "backup/fail", Some(&long)).status, 400);
    let huge = format!(r#"{{"message":"{}"}}"#, "x".repeat(20_000));
    assert_eq!(ping(&t, Some(&ingest), "backup/fail", Some(&huge)).status, 413);

    let r = ping(&t, Some(&ingest), "backup/start?host=db1", None);
    assert_eq!(r.status, 200, "{}", r.body);
    t.clock.advance(12_500);
    let r = ping(&t, Some(&ingest), "backup/success?exit_code=0", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"]["last_duration_seconds"], 12.5);
    assert_eq!(r.json()["data"]["status"], "on_time");
    t.clock.advance(60_000);
    let r = ping(
        &t,
        Some(&ingest),
        "backup/fail",
        Some(r#"{"duration":3,"exit_code":2,"message":"disk full","host":"db1"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["data"]["status"], "failing");
    assert_eq!(v["data"]["last_exit_code"], 2);
    assert_eq!(v["data"]["last_message"], "disk full");
    t.clock.advance(60_000);
    assert_eq!(ping(&t, Some(&ingest), "backup/success", None).status, 200);

    // Lateness: on time until period + grace, then late by the overrun.
    t.clock.advance(70 * 60_000 + 5_000);
    let r = http("GET", &t.human("/api/v1/heartbeats/backup"), Some(&read), None);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["data"]["status"], "late");
    assert_eq!(v["data"]["late_seconds"], 5.0);
    assert_eq!(v["data"]["up"], 0);
    assert_eq!(
        (v["data"]["successes"].as_u64(), v["data"]["failures"].as_u64()),
        (Some(2), Some(1))
    );

    // The list is paginated, ordered by name.
    let r = http("GET", &t.human("/api/v1/heartbeats?limit=1"), Some(&read), None);
    let v = r.json();
    assert_eq!(v["data"]["heartbeats"][0]["name"], "backup");
    let cursor = v["data"]["next_cursor"].as_str().unwrap().to_owned();
    let r = http(
        "GET",
        &t.human(&format!("/api/v1/heartbeats?limit=1&cursor={cursor}")),
        Some(&read),
        None,
    );
    let v = r.json();
    assert_eq!(v["data"]["heartbeats"][0]["name"], "from-config");
    assert_eq!(v["data"]["heartbeats"][0]["origin"], "config");
    assert!(v["data"]["next_cursor"].is_null());
    assert_eq!(
        http("GET", &t.human("/api/v1/heartbeats?limit=0"), Some(&read), None).status,
        400
    );

    // Gauges on /metrics.
    let m = http("GET", &t.human("/metrics"), Some(&read), None).body;
    assert!(
        m.contains("roaster_heartbeat_late_seconds{heartbeat=\"backup\"} 5"),
        "{m}"
    );
    assert!(
        m.contains("roaster_heartbeat_up{heartbeat=\"from-config\"} 0"),
        "{m}"
    );

    // Series, through the same storage as ingest.
    let durations = export_values(&t, r#"roaster_heartbeat_duration_seconds{heartbeat="backup"}"#);
    // The last success had no start ping and no duration: no point.
    assert_eq!(durations, vec![12.5, 3.0]);
    let fails = export_values(
        &t,
        r#"roaster_heartbeat_runs_total{heartbeat="backup",result="fail"}"#,
    );
    assert_eq!(fails.last(), Some(&1.0));
    let up = export_values(&t, r#"roaster_heartbeat_up{heartbeat="backup"}"#);
    assert!(!up.is_empty());
    // Never pinged: only the periodic job writes its lateness series, for rules to query.
    let never = eventually("periodic lateness series", || {
        let v = export_values(&t, r#"roaster_heartbeat_up{heartbeat="from-config"}"#);
        (!v.is_empty()).then_some(v)
    });
    assert!(never.iter().all(|v| *v == 0.0), "{never:?}");

    // Each ping is an event.
    let store = t.server.as_ref().unwrap().events().store().clone();
    let q = store::EventQuery {
        kind_prefix: Some("heartbeat".into()),
        ..store::EventQuery::default()
    };
    let events = store.query(&q).unwrap().events;
    let kinds: Vec<&str> = events.iter().rev().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "heartbeat.start",
            "heartbeat.success",
            "heartbeat.fail",
            "heartbeat.success"
        ]
    );
    let fail = &events[1];
    assert_eq!(fail.subject.as_deref(), Some("backup"));
    assert_eq!(fail.host.as_deref(), Some("db1"));
    assert_eq!(fail.source, "backup-job");
    assert_eq!(fail.severity, model::event::Severity::Warning);
    let p: serde_json::Value = serde_json::from_str(fail.payload.as_ref().unwrap().get()).unwrap();
    assert_eq!(
        p,
        serde_json::json!({"duration_seconds": 3.0, "exit_code": 2, "message": "disk full"})
    );

    // State and API definitions survive a restart.
    t.restart();
    let r = http("GET", &t.human("/api/v1/heartbeats/backup"), Some(&read), None);
    let v = r.json();
    assert_eq!(v["data"]["status"], "late");
    assert_eq!(v["data"]["successes"], 2);
    let fails = {
        let r = http(
            "POST",
            &t.robot("/api/v1/heartbeats/backup/fail"),
            Some(&ingest),
            None,
        );
        assert_eq!(r.status, 200);
        r.json()["data"]["failures"].as_u64()
    };
    assert_eq!(fails, Some(2), "the runs counter continues across restarts");

    // Only API definitions can be deleted.
    assert_eq!(
        http("DELETE", &t.human("/api/v1/heartbeats/backup"), Some(&read), None).status,
        403
    );
    assert_eq!(
        http(
            "DELETE",
            &t.human("/api/v1/heartbeats/from-config"),
            Some(ADMIN),
            None
        )
        .status,
        409
    );
    assert_eq!(
        http("DELETE", &t.human("/api/v1/heartbeats/backup"), Some(ADMIN), None).status,
        200
    );
    assert_eq!(
        http("GET", &t.human("/api/v1/heartbeats/backup"), Some(&read), None).status,
        404
    );
    assert_eq!(
        http(
            "POST",
            &t.robot("/api/v1/heartbeats/backup/start"),
            Some(&ingest),
            None
        )
        .status,
        404
    );
    t.shutdown();
}

/// Polls until `f` returns `Some`, or panics after 10 s.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every stored `audit.*` event, newest first.
fn audit_events(t: &TestServer) -> Vec<model::event::Event> {
    let store = t.server.as_ref().unwrap().events().store().clone();
    let q = store::EventQuery {
        kind_prefix: Some("audit".into()),
        limit: Some(1000),
        ..store::EventQuery::default()
    };
    store.query(&q).unwrap().events
}

/// Waits for the audit event of `request_id` (the recorder stores asynchronously).
fn audit_of(t: &TestServer, request_id: &str) -> (model::event::Event, serde_json::Value) {
    let e = eventually(&format!("audit event {request_id}"), || {
        audit_events(t).into_iter().find(|e| e.id.as_str() == request_id)
    });
    let payload: serde_json::Value = serde_json::from_str(e.payload.as_ref().unwrap().get()).unwrap();
    (e, payload)
}

#[test]
fn audit_trail_records_mutations_with_who_where_and_result() {
    let t = TestServer::start();
    let alice = t.token("alice", Scope::Admin);
    let viewer = t.token("viewer", Scope::Read);
    let switch = t.human("/api/v1/switches/graphite-tcp");

    // A successful change: who, scope, from where, what, result, request id.
    let r = http("PUT", &switch, Some(&alice), Some(r#"{"state":"paused"}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    let id = r.request_id.clone().expect("X-Request-Id");
    let (ev, p) = audit_of(&t, &id);
    assert_eq!(ev.kind, "audit.api");
    assert_eq!(ev.actor.as_deref(), Some("alice"));
    assert_eq!(ev.subject.as_deref(), Some("/api/v1/switches/graphite-tcp"));
    assert_eq!(ev.labels["method"], "PUT");
    assert_eq!(ev.labels["status"], "200");
    assert_eq!(ev.labels["scope"], "admin");
    assert_eq!(p["request_id"], id.as_str());
    assert_eq!(p["peer"], "127.0.0.1");
    assert_eq!(p["status"], 200);
    assert_eq!(p["fields"]["state"], "paused");
    assert!(
        ev.summary
            .contains("PUT /api/v1/switches/graphite-tcp by alice (admin)"),
        "{}",
        ev.summary
    );

    // Refused mutations are audited too: forbidden, bad body, no token.
    let r = http("PUT", &switch, Some(&viewer), Some(r#"{"state":"open"}"#));
    assert_eq!(r.status, 403);
    let (ev, _) = audit_of(&t, r.request_id.as_deref().unwrap());
    assert_eq!(
        (ev.actor.as_deref(), ev.labels["status"].as_str()),
        (Some("viewer"), "403")
    );
    assert_eq!(ev.severity, model::event::Severity::Warning);
    let r = http("PUT", &switch, Some(&alice), Some(r#"{"state":"sideways"}"#));
    assert_eq!(r.status, 400);
    assert_eq!(
        audit_of(&t, r.request_id.as_deref().unwrap()).0.labels["status"],
        "400"
    );
    let r = http("POST", &t.human("/api/v1/admin/compact"), None, None);
    assert_eq!(r.status, 401);
    let (ev, p) = audit_of(&t, r.request_id.as_deref().unwrap());
    assert_eq!(
        (ev.actor.as_deref(), p["scope"].as_str()),
        (Some("anonymous"), Some("none"))
    );

    // Secrets in a body are never stored, only named.
    let r = http(
        "PUT",
        &switch,
        Some(&alice),
        Some(r#"{"state":"open","token":"rst_admin_supersecret","password":"hunter2"}"#),
    );
    assert_eq!(r.status, 400, "unknown fields are refused: {}", r.body);
    let (ev, p) = audit_of(&t, r.request_id.as_deref().unwrap());
    assert_eq!(p["redacted"], serde_json::json!(["password", "token"]));
    let all = serde_json::to_string(&ev).unwrap();
    assert!(!all.contains("supersecret") && !all.contains("hunter2"), "{all}");

    // Reads are not audited (but still get a request id): GET, and the query API's form POST.
    let get = http("GET", &t.human("/api/v1/switches"), Some(&viewer), None);
    assert_eq!(get.status, 200);
    let get_id = get.request_id.expect("X-Request-Id on reads too");
    let a = agent();
    let mut q = a
        .post(&t.human("/api/v1/query"))
        .header("Authorization", &format!("Bearer {viewer}"))
        .send_form([("query", "1+1")])
        .unwrap();
    assert_eq!(q.status().as_u16(), 200);
    let query_id = q
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let _ = q.body_mut().read_to_string();
    // A later mutation is stored after them (one FIFO recorder): once it is there, they would be.
    let r = http(
        "PUT",
        &t.human("/api/v1/heartbeats/audited"),
        Some(&alice),
        Some(r#"{"period":"1h"}"#),
    );
    assert_eq!(r.status, 201);
    let (ev, p) = audit_of(&t, r.request_id.as_deref().unwrap());
    assert_eq!(ev.subject.as_deref(), Some("/api/v1/heartbeats/audited"));
    assert_eq!(p["fields"]["period"], "1h");
    let ids: Vec<String> = audit_events(&t)
        .iter()
        .map(|e| e.id.as_str().to_owned())
        .collect();
    assert!(
        !ids.contains(&get_id) && !ids.contains(&query_id),
        "reads were audited"
    );
    assert_eq!(ids.len(), 6);

    // Append-only: no API edits or deletes audit events, and retention of ordinary events
    // does not touch them.
    for (method, path) in [
        ("DELETE", format!("/api/v1/events/{id}")),
        ("PUT", format!("/api/v1/events/{id}")),
        ("DELETE", "/api/v1/events".to_owned()),
    ] {
        let r = http(method, &t.human(&path), Some(&alice), Some("{}"));
        assert!(
            r.status == 404 || r.status == 405,
            "{method} {path}: {}",
            r.status
        );
    }
    let store = t.server.as_ref().unwrap().events().store().clone();
    let report = store
        .delete_older_than(&store::Retention {
            events_before: Timestamp(i64::MAX),
            audit_before: None,
        })
        .unwrap();
    assert_eq!(report.audit_deleted, 0);
    let (ev, _) = audit_of(&t, &id);
    assert_eq!(
        ev.labels["status"], "200",
        "the first audit event is still there, unchanged"
    );

    let m = http("GET", &t.human("/metrics"), Some(&viewer), None).body;
    assert!(m.contains("roaster_audit_events_dropped_total 0"), "{m}");
    assert!(m.contains("roaster_audit_events_recorded_total"), "{m}");
    t.shutdown();
}
