//! Real clients against the real `roaster` binary: collectd (`write_graphite`), Prometheus 2.42
//! (`remote_write` to Roaster and scraping Roaster's `/metrics`) and Python's `statsd` library.
//!
//! `scripts/test` installs the clients (Debian packages `collectd-core`, `prometheus`,
//! `python3-statsd`). When a client is missing, the test says so and passes — unless
//! `ROASTER_REQUIRE_REAL_CLIENTS` is set (CI sets it), where a missing client is a failure.
//! Every test starts its own server on port 0 with a fresh data directory and checks that names,
//! labels, values and timestamps arrived right, through `/api/v1/export`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

const ADMIN_TOKEN: &str = "real-clients-admin-token-0123456789";

/// A `roaster serve` child process on port 0, killed when dropped.
struct Roaster {
    child: Child,
    _dir: tempfile::TempDir,
    listeners: Value,
}

impl Roaster {
    fn start(extra_toml: &str) -> Roaster {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let config = dir.path().join("roaster.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
human_listen = "127.0.0.1:0"
robot_listen = "127.0.0.1:0"

[ingest]
graphite_tcp_listen = "127.0.0.1:0"
graphite_udp_listen = "127.0.0.1:0"
statsd_udp_listen = "127.0.0.1:0"
statsd_tcp_listen = "127.0.0.1:0"
{extra_toml}
"#
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_roaster"))
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .env("ROASTER_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
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
                "roaster did not write {listeners_file:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Roaster {
            child,
            _dir: dir,
            listeners,
        }
    }

    fn addr(&self, listener: &str) -> String {
        self.listeners[listener]
            .as_str()
            .unwrap_or_else(|| panic!("no {listener} in {}", self.listeners))
            .to_string()
    }

    fn port(&self, listener: &str) -> u16 {
        self.addr(listener).rsplit(':').next().unwrap().parse().unwrap()
    }

    /// All series matching `selector`, as (metric labels, values, timestamps) from the export API.
    fn export(&self, selector: &str) -> Vec<(Value, Vec<f64>, Vec<i64>)> {
        let url = format!("http://{}/api/v1/export", self.addr("human-http"));
        let body = ureq::get(&url)
            .query("match[]", selector)
            .header("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let values = v["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                let ts = v["timestamps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect();
                (v["metric"].clone(), values, ts)
            })
            .collect()
    }

    /// Polls `export(selector)` until `done` holds or 30 s pass; returns the last answer.
    fn wait_for(
        &self,
        selector: &str,
        done: impl Fn(&[(Value, Vec<f64>, Vec<i64>)]) -> bool,
    ) -> Vec<(Value, Vec<f64>, Vec<i64>)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.export(selector);
            if done(&got) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn create_token(&self, scope: &str) -> String {
        common::create_token(
            &self._dir.path().join("data"),
            scope,
            &format!("real-clients-{scope}"),
        )
    }
}

impl Drop for Roaster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

fn now_secs() -> i64 {
    model::Clock::now(&model::SystemClock).millis() / 1000
}

#[test]
fn collectd_write_graphite_arrives_with_names_values_and_timestamps() {
    if !have(Path::new("/usr/sbin/collectd")) {
        return;
    }
    let roaster = Roaster::start("");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("collectd.sock");
    let conf = dir.path().join("collectd.conf");
    std::fs::write(
        &conf,
        format!(
            r#"Hostname "roastertest"
FQDNLookup false
Interval 1
BaseDir "{base}"
PIDFile "{base}/collectd.pid"
PluginDir "/usr/lib/collectd"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin unixsock
<Plugin unixsock>
  SocketFile "{sock}"
</Plugin>
LoadPlugin write_graphite
<Plugin write_graphite>
  <Node "roaster">
    Host "127.0.0.1"
    Port "{port}"
    Protocol "tcp"
    Prefix "collectd."
    StoreRates true
    AlwaysAppendDS false
    EscapeCharacter "_"
  </Node>
</Plugin>
"#,
            base = dir.path().display(),
            sock = sock.display(),
            port = roaster.port("graphite-tcp"),
        ),
    )
    .unwrap();
    let mut collectd = Command::new("/usr/sbin/collectd")
        .args(["-f", "-C"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "collectd did not open its socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Fixed values and timestamps through collectd's own command socket, so we know what to expect.
    let t0 = now_secs() - 120;
    let mut stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    for (i, v) in [42.5, 43.25, -1.5].iter().enumerate() {
        writeln!(
            stream,
            "PUTVAL \"roastertest/roaster-oven/gauge-temp\" interval=1 {}:{v}",
            t0 + i as i64
        )
        .unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        assert!(answer.starts_with('0'), "collectd refused PUTVAL: {answer}");
    }
    // PUTVAL only queues a value for collectd's write threads, so one FLUSH can overtake the
    // last values and leave them in write_graphite's buffer: flush on every poll.
    let selector = r#"{__name__="collectd.roastertest.roaster-oven.gauge-temp"}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        writeln!(stream, "FLUSH").unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        let got = roaster.export(selector);
        if got.first().is_some_and(|(_, v, _)| v.len() >= 3) || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = collectd.kill();
    let _ = collectd.wait();
    assert_eq!(got.len(), 1, "{got:?}");
    let (metric, values, timestamps) = &got[0];
    assert_eq!(metric["__name__"], "collectd.roastertest.roaster-oven.gauge-temp");
    assert_eq!(values, &vec![42.5, 43.25, -1.5]);
    assert_eq!(timestamps, &vec![t0 * 1000, (t0 + 1) * 1000, (t0 + 2) * 1000]);
}

#[test]
fn prometheus_remote_writes_its_scrape_of_roaster() {
    if !have(Path::new("/usr/bin/prometheus")) {
        return;
    }
    let roaster = Roaster::start("");
    let ingest_token = roaster.create_token("ingest");
    let read_token = roaster.create_token("read");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            r#"global:
  scrape_interval: 1s
  external_labels:
    replica: "ci"
scrape_configs:
  - job_name: roaster
    metrics_path: /metrics
    authorization:
      credentials: "{read_token}"
    static_configs:
      - targets: ["{human}"]
remote_write:
  - url: "http://{robot}/api/v1/write"
    authorization:
      credentials: "{ingest_token}"
    queue_config:
      batch_send_deadline: 1s
      min_backoff: 100ms
"#,
            human = roaster.addr("human-http"),
            robot = roaster.addr("robot-http"),
        ),
    )
    .unwrap();
    let started = now_secs();
    let mut prometheus = Command::new("/usr/bin/prometheus")
        .arg(format!("--config.file={}", conf.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg("--web.listen-address=127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let got = roaster.wait_for(r#"{__name__="up",job="roaster"}"#, |s| {
        s.first().is_some_and(|(_, v, _)| v.len() >= 3)
    });
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    assert_eq!(got.len(), 1, "expected one `up` series: {got:?}");
    let (metric, values, timestamps) = &got[0];
    assert_eq!(metric["job"], "roaster");
    assert_eq!(metric["instance"], roaster.addr("human-http").as_str());
    assert_eq!(metric["replica"], "ci");
    assert!(
        values.iter().all(|v| *v == 1.0),
        "Roaster was up for every scrape: {values:?}"
    );
    let window = (started - 5) * 1000..=(now_secs() + 5) * 1000;
    assert!(
        timestamps.iter().all(|t| window.contains(t)),
        "{timestamps:?} outside {window:?}"
    );
    // Roaster's own figures made the round trip too: the scrape saw the remote-write ingest counter.
    let own = roaster.export(r#"{__name__="roaster_ingest_points_total",job="roaster"}"#);
    assert!(
        !own.is_empty(),
        "Roaster's /metrics families did not arrive through remote-write"
    );
}

#[test]
fn python_statsd_client_counters_timers_gauges_sets() {
    let python = PathBuf::from("/usr/bin/python3");
    if !have(&python) {
        return;
    }
    let probe = Command::new(&python)
        .args(["-c", "import statsd"])
        .status()
        .unwrap();
    if !probe.success() {
        assert!(
            std::env::var("ROASTER_REQUIRE_REAL_CLIENTS")
                .map(|v| v.is_empty() || v == "0")
                .unwrap_or(true),
            "python3-statsd is required but missing"
        );
        eprintln!("skipping: python3-statsd is not installed");
        return;
    }
    let roaster = Roaster::start("statsd_flush_interval_ms = 1000\n");
    let port = roaster.port("statsd-udp");
    let script = format!(
        r#"
import statsd, time
c = statsd.StatsClient("127.0.0.1", {port}, prefix="app")
c.incr("hits", 5)
c.incr("hits", 2)
c.decr("hits", 1)
for ms in (10, 20, 30, 40):
    c.timing("db.query", ms)
c.gauge("queue", 7)
c.gauge("queue", 3, delta=True)
c.set("users", "alice")
c.set("users", "bob")
c.set("users", "alice")
"#
    );
    let status = Command::new(&python).args(["-c", &script]).status().unwrap();
    assert!(status.success());
    let first = |selector: &str| -> f64 {
        let got = roaster.wait_for(selector, |s| !s.is_empty());
        assert_eq!(got.len(), 1, "{selector}: {got:?}");
        got[0].1[0]
    };
    assert_eq!(first(r#"{__name__="app.hits.count"}"#), 6.0);
    assert_eq!(first(r#"{__name__="app.db.query.count"}"#), 4.0);
    assert_eq!(first(r#"{__name__="app.db.query.mean"}"#), 25.0);
    assert_eq!(first(r#"{__name__="app.db.query.upper"}"#), 40.0);
    assert_eq!(first(r#"{__name__="app.db.query.lower"}"#), 10.0);
    assert_eq!(first(r#"{__name__="app.queue"}"#), 10.0);
    // Timestamps are the flush time: within the test's run.
    let got = roaster.export(r#"{__name__="app.hits.count"}"#);
    let t = got[0].2[0];
    assert!(
        (t / 1000 - now_secs()).abs() < 60,
        "flush timestamp {t} is not now"
    );
}
