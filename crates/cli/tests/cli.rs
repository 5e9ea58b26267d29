//! The `roaster` binary itself: config commands, tokens, ctl, and a graceful SIGTERM.

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "cli-test-admin-token-0123456789";

fn roaster(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roaster"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn version_and_config_example() {
    let out = roaster(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = roaster(&["config", "example"]);
    assert!(out.status.success());
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/roaster.example.toml"
    ))
    .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), example);
}

#[test]
fn config_check_table() {
    let dir = tempfile::tempdir().unwrap();
    // (file contents, success, text expected on stderr)
    let cases = [
        ("", true, ""),
        ("[server]\nhuman_listen = \"127.0.0.1:9000\"\n", true, ""),
        ("[server]\nhuman_lisen = \"x\"\n", false, "human_lisen"),
        (
            "[storage]\nretention_raw_ms = -5\n",
            false,
            "storage.retention_raw_ms",
        ),
        (
            "[ingest]\nqueue_capacity_points = 0\n",
            false,
            "ingest.queue_capacity_points",
        ),
        ("not toml at all [", false, "invalid config"),
    ];
    for (i, (text, ok, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = roaster(&["config", "check", path.to_str().unwrap()]);
        assert_eq!(out.status.success(), *ok, "{text:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{text:?}: {err}");
    }
    let out = roaster(&[
        "config",
        "check",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
}

#[test]
fn token_create_prints_the_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = roaster(&[
        "token",
        "create",
        "--scope",
        "read",
        "--name",
        "grafana",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    assert!(token.trim().starts_with("rst_read_"));
    let file = std::fs::read_to_string(data.join("tokens.json")).unwrap();
    assert!(file.contains("grafana") && !file.contains(token.trim()));
    // (args, succeeds)
    let cases: [(&[&str], bool); 2] = [
        (&["--scope", "root", "--name", "x"], false),
        (&["--scope", "read", "--name", "grafana"], false),
    ];
    for (args, ok) in cases {
        let mut all = vec!["token", "create"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--data-dir", data.to_str().unwrap()]);
        assert_eq!(roaster(&all).status.success(), ok, "{args:?}");
    }
}

struct Serve {
    child: Child,
    listeners: serde_json::Value,
}

fn serve(dir: &Path) -> Serve {
    let data = dir.join("data");
    let _ = std::fs::remove_file(data.join("listeners.json"));
    let config = dir.join("roaster.toml");
    std::fs::write(
        &config,
        "[server]\nhuman_listen = \"127.0.0.1:0\"\nrobot_listen = \"127.0.0.1:0\"\n\
         [ingest]\ngraphite_tcp_listen = \"127.0.0.1:0\"\ngraphite_udp_listen = \"127.0.0.1:0\"\n\
         statsd_udp_listen = \"127.0.0.1:0\"\nstatsd_tcp_listen = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_roaster"))
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
        .env("ROASTER_ADMIN_TOKEN", ADMIN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let listeners = loop {
        if let Ok(text) = std::fs::read_to_string(data.join("listeners.json"))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        {
            break v;
        }
        assert!(Instant::now() < deadline, "no listeners.json");
        std::thread::sleep(Duration::from_millis(20));
    };
    Serve { child, listeners }
}

impl Serve {
    fn addr(&self, l: &str) -> String {
        self.listeners[l].as_str().unwrap().to_owned()
    }

    fn ctl(&self, args: &[&str]) -> Output {
        let url = format!("http://{}", self.addr("human-http"));
        let mut all = vec!["ctl", "--url", &url];
        all.extend_from_slice(args);
        Command::new(env!("CARGO_BIN_EXE_roaster"))
            .args(&all)
            .env("ROASTER_TOKEN", ADMIN)
            .output()
            .unwrap()
    }

    fn export_count(&self, selector: &str) -> usize {
        let url = format!("http://{}/api/v1/export", self.addr("human-http"));
        let body = ureq::get(&url)
            .query("match[]", selector)
            .header("Authorization", &format!("Bearer {ADMIN}"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        body.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["values"].as_array().unwrap().len()
            })
            .sum()
    }

    /// Sends `signal` (`-TERM`, `-INT`) and returns the exit status and how long the exit took.
    fn terminate(mut self, signal: &str) -> (std::process::ExitStatus, Duration, String) {
        let t0 = Instant::now();
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read as _;
            let _ = e.read_to_string(&mut stderr);
        }
        (status, t0.elapsed(), stderr)
    }
}

#[test]
fn ctl_commands_and_graceful_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(dir.path());
    // (args, succeeds, text expected on stdout)
    let cases: [(&[&str], bool, &str); 5] = [
        (&["switch", "graphite-udp", "paused"], true, "\"paused\""),
        (&["switch", "graphite-udp", "wobbly"], false, ""),
        (&["switches"], true, "graphite-udp"),
        (&["compact"], true, "success"),
        (&["switch", "nope", "open"], false, ""),
    ];
    for (args, ok, needle) in cases {
        let out = s.ctl(args);
        assert_eq!(
            out.status.success(),
            ok,
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(needle), "{args:?}");
    }
    let snap = dir.path().join("snap");
    let out = s.ctl(&["snapshot", snap.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(snap.join("tsdb").is_dir());

    // Points stored before SIGTERM survive the restart: shutdown drains ingest and closes the WAL.
    let mut tcp = std::net::TcpStream::connect(s.addr("graphite-tcp")).unwrap();
    let mut lines = String::new();
    let base = model::Clock::now(&model::SystemClock).millis() / 1000 - 7200;
    for i in 0..1000 {
        lines.push_str(&format!("sigterm.metric {i} {}\n", base + i));
    }
    tcp.write_all(lines.as_bytes()).unwrap();
    drop(tcp);
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.export_count(r#"{__name__="sigterm.metric"}"#) < 1000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, took, stderr) = s.terminate("-TERM");
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    assert!(stderr.contains(r#""msg":"listening""#), "{stderr}");
    assert!(stderr.contains(r#""listener":"human-http""#), "{stderr}");

    let s = serve(dir.path());
    assert_eq!(s.export_count(r#"{__name__="sigterm.metric"}"#), 1000);
    let out = s.ctl(&["switches"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("paused"),
        "switch state survived"
    );
    // SIGINT (Ctrl-C) shuts down just as gracefully.
    let (status, _, stderr) = s.terminate("-INT");
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains(r#""msg":"stopped""#), "{stderr}");
}

/// The `audit.*` events of a data directory's events.db, newest first, read by a second
/// SQLite connection (possibly beside a running server).
fn audit_events(data: &Path) -> Vec<model::event::Event> {
    use store::EventStore as _;
    let db = store::SqliteStore::open(store::SqliteConfig::new(data.join("events.db"))).unwrap();
    let q = store::EventQuery {
        kind_prefix: Some("audit".into()),
        limit: Some(1000),
        ..store::EventQuery::default()
    };
    db.query(&q).unwrap().events
}

#[test]
fn token_create_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let create = |name: &str| {
        Command::new(env!("CARGO_BIN_EXE_roaster"))
            .args([
                "token",
                "create",
                "--scope",
                "ingest",
                "--name",
                name,
                "--data-dir",
            ])
            .arg(&data)
            .env("USER", "ops-alice")
            .output()
            .unwrap()
    };
    let out = create("collectd");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    assert!(
        !create("collectd").status.success(),
        "duplicate names are refused"
    );
    let events = audit_events(&data);
    assert_eq!(events.len(), 2, "both attempts are audited");
    let (failed, ok) = (&events[0], &events[1]);
    assert_eq!(ok.kind, "audit.token");
    assert_eq!(ok.subject.as_deref(), Some("collectd"));
    assert_eq!(ok.actor.as_deref(), Some("local:ops-alice"));
    assert_eq!(ok.labels["result"], "ok");
    assert_eq!(ok.labels["scope"], "ingest");
    assert_eq!(failed.labels["result"], "error");
    let all = serde_json::to_string(&events).unwrap();
    assert!(
        !all.contains(token.trim()),
        "the secret is never in the audit trail"
    );
}

#[test]
fn ctl_goes_through_the_audited_api() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(dir.path());
    let out = s.ctl(&["switch", "statsd-udp", "paused"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = s.ctl(&["switches"]);
    assert!(out.status.success());
    let data = dir.path().join("data");
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let e = audit_events(&data);
        if !e.is_empty() || Instant::now() > deadline {
            break e;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(events.len(), 1, "the switch change, not the listing: {events:?}");
    let e = &events[0];
    assert_eq!(e.kind, "audit.api");
    assert_eq!(e.actor.as_deref(), Some("admin-from-env"));
    assert_eq!(e.subject.as_deref(), Some("/api/v1/switches/statsd-udp"));
    assert_eq!(e.labels["status"], "200");
    let p: serde_json::Value = serde_json::from_str(e.payload.as_ref().unwrap().get()).unwrap();
    assert!(
        p["user_agent"].as_str().unwrap().starts_with("roaster-ctl/"),
        "{p}"
    );
    assert_eq!(p["peer"], "127.0.0.1");
    let (status, _, _) = s.terminate("-TERM");
    assert!(status.success());
}

#[test]
fn event_and_events_search_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = serve(dir.path());
    let data = dir.path().join("data");
    let token = |scope: &str, name: &str| {
        let out = roaster(&[
            "token",
            "create",
            "--scope",
            scope,
            "--name",
            name,
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let ingest = token("ingest", "ansible");
    let read = token("read", "operator");
    let robot = format!("http://{}", s.addr("robot-http"));
    let human = format!("http://{}", s.addr("human-http"));
    let event = |args: &[&str]| {
        let mut all = vec!["event"];
        all.extend_from_slice(args);
        Command::new(env!("CARGO_BIN_EXE_roaster"))
            .args(&all)
            .env("ROASTER_URL", &robot)
            .env("ROASTER_TOKEN", &ingest)
            .output()
            .unwrap()
    };
    // (args, succeeds, stdout starts with)
    let cases: &[(&[&str], bool, &str)] = &[
        (
            &[
                "--kind",
                "ansible.start",
                "--host",
                "web1",
                "Ansible playbook started",
            ],
            true,
            "stored ",
        ),
        (
            &[
                "--kind",
                "deploy.finished",
                "--host",
                "web1",
                "--service",
                "shop",
                "--label",
                "team=web",
                "--severity",
                "warning",
                "--id",
                "deploy-42",
                "--time",
                "2026-11-20T10:00:00Z",
                "--payload",
                r#"{"version":"1.2.3"}"#,
                "shop 1.2.3 deployed",
            ],
            true,
            "stored deploy-42",
        ),
        (
            &["--kind", "deploy.finished", "--id", "deploy-42", "again"],
            true,
            "duplicate deploy-42",
        ),
        (&["--kind", "NotAVerb", "x"], false, ""),
        (&["--kind", "a.b", "--payload", "{oops", "x"], false, ""),
    ];
    for (args, ok, prefix) in cases {
        let out = event(args);
        assert_eq!(
            out.status.success(),
            *ok,
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(prefix),
            "{args:?}"
        );
    }
    let search = |args: &[&str]| {
        let mut all = vec!["events", "search", "--url", &human, "--token", &read];
        all.extend_from_slice(args);
        let out = roaster(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = search(&["--host", "web1"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        out.lines().next().unwrap().contains("ansible.start"),
        "newest first: {out}"
    );
    let out = search(&["--kind", "deploy", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["id"], "deploy-42");
    assert_eq!(v["source"], "ansible");
    assert_eq!(v["payload"]["version"], "1.2.3");
    assert_eq!(v["time"], "2026-11-20T10:00:00.000Z");
    let out = search(&["--q", "playbook", "--label", "team!=web"]);
    assert!(out.contains("Ansible playbook started"), "{out}");
    // (--host: `token create` above also recorded audit.token events.)
    let out = search(&["--host", "web1", "--limit", "1", "--all"]);
    assert_eq!(out.lines().count(), 2, "--all follows the cursor: {out}");
    // The events kill switch through `roaster ctl`.
    let out = s.ctl(&["switch", "events", "paused"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = event(&["--kind", "a.b", "while paused"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("503"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.ctl(&["switch", "events", "open"]).status.success());
    let out = roaster(&[
        "events", "search", "--url", &human, "--token", &read, "--from", "soon",
    ]);
    assert!(!out.status.success(), "a bad --from is the server's 400");
    let (status, _, stderr) = s.terminate("-TERM");
    assert!(status.success(), "{stderr}");
}

#[test]
fn acknowledged_events_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = serve(dir.path());
    let data = dir.path().join("data");
    let out = roaster(&[
        "token",
        "create",
        "--scope",
        "ingest",
        "--name",
        "robot",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let ingest = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let now = model::Clock::now(&model::SystemClock).millis();
    let robot = format!("http://{}/api/v1/events", s.addr("robot-http"));
    for round in 0..5 {
        let batch: Vec<serde_json::Value> = (0..200)
            .map(|i| {
                serde_json::json!({"id": format!("k9-{round}-{i}"), "time": now - i, "kind": "crash.test",
                                   "host": "web1", "summary": "acknowledged before the kill"})
            })
            .collect();
        let mut resp = ureq::post(&robot)
            .header("Authorization", &format!("Bearer {ingest}"))
            .send_json(serde_json::Value::Array(batch))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(v["stored"], 200, "{v}");
    }
    // SIGKILL right after the last acknowledgement: no shutdown, no checkpoint.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let s = serve(dir.path());
    let url = format!("http://{}/api/v1/events", s.addr("human-http"));
    let mut cursor: Option<String> = None;
    let mut seen = 0;
    loop {
        let mut req = ureq::get(&url)
            .query("kind", "crash")
            .query("limit", "1000")
            .header("Authorization", &format!("Bearer {ADMIN}"));
        if let Some(c) = &cursor {
            req = req.query("cursor", c);
        }
        let v: serde_json::Value =
            serde_json::from_str(&req.call().unwrap().body_mut().read_to_string().unwrap()).unwrap();
        seen += v["data"]["events"].as_array().unwrap().len();
        match v["data"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, 1000, "every acknowledged event survived kill -9");
    let (status, _, stderr) = s.terminate("-TERM");
    assert!(status.success(), "{stderr}");
}
