//! End-to-end test of the StatsD sketch log through the composed server: timers sent over
//! real UDP from three "hosts" (DogStatsD tags) across several flushes, percentiles asked of
//! `GET /api/v1/statsd/quantile` over all of them, per host, per page, and again after a
//! restart on the same data directory.

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use server::config::Config;
use server::{RunningServer, Server, StartOptions};

const ADMIN: &str = "test-admin-token-0123456789abcdef";

fn config(data_dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.human_listen = "127.0.0.1:0".into();
    c.server.robot_listen = "off".into();
    c.server.data_dir = data_dir.to_string_lossy().into_owned();
    c.ingest.graphite_tcp_listen = "off".into();
    c.ingest.graphite_udp_listen = "off".into();
    c.ingest.statsd_udp_listen = "127.0.0.1:0".into();
    c.ingest.statsd_tcp_listen = "off".into();
    c.ingest.statsd_flush_interval_ms = 150;
    c
}

fn start(rt: &tokio::runtime::Runtime, data: &Path) -> RunningServer {
    let opts = StartOptions {
        admin_token: Some(ADMIN.into()),
        ..StartOptions::default()
    };
    rt.block_on(Server::start_with(config(data), opts)).unwrap()
}

fn get(url: &str) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .header("Authorization", format!("Bearer {ADMIN}"))
        .call()
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    )
}

/// Deterministic positive values spread over three decades.
fn values(seed: u64, n: usize) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            (10f64.powf(3.0 * u) * 1000.0).round() / 1000.0
        })
        .collect()
}

fn exact(all: &[f64], q: f64) -> f64 {
    let mut s = all.to_vec();
    s.sort_by(f64::total_cmp);
    s[(q * (s.len() - 1) as f64) as usize]
}

fn assert_close(group: &serde_json::Value, all: &[f64]) {
    assert_eq!(group["count"].as_u64().unwrap(), all.len() as u64, "{group}");
    for q in ["0.5", "0.9", "0.99"] {
        let got = group["quantiles"][q].as_f64().unwrap();
        let want = exact(all, q.parse().unwrap());
        assert!(
            (got - want).abs() <= 0.01 * want + 1e-9,
            "q {q}: {got} vs {want} in {group}"
        );
    }
}

#[test]
fn timer_percentiles_merge_across_flushes_hosts_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = start(&rt, &data);
    let statsd = server.addrs.get("statsd-udp").unwrap().to_string();
    let base = format!("http://{}", server.addrs.get("human-http").unwrap());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();

    // three hosts of different speed, five rounds each spread over several flushes
    let hosts = ["web1", "web2", "web3"];
    let mut sent: Vec<Vec<f64>> = vec![Vec::new(); hosts.len()];
    for round in 0..5u64 {
        for (h, host) in hosts.iter().enumerate() {
            let vals: Vec<f64> = values(round * 7 + h as u64 + 1, 200)
                .into_iter()
                .map(|v| v * (1 + 4 * h) as f64)
                .collect();
            for chunk in vals.chunks(20) {
                let packet: String = chunk
                    .iter()
                    .map(|v| format!("api.latency:{v}|ms|#host:{host}\n"))
                    .collect();
                sock.send_to(packet.as_bytes(), &statsd).unwrap();
            }
            sent[h].extend(vals);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let all: Vec<f64> = sent.iter().flatten().copied().collect();

    let url =
        |extra: &str| format!("{base}/api/v1/statsd/quantile?name=api.latency&start=0&q=0.5,0.9,0.99{extra}");
    // wait for the last flush to reach the log
    let deadline = Instant::now() + Duration::from_secs(20);
    let overall = loop {
        let (status, v) = get(&url(""));
        assert_eq!(status, 200, "{v}");
        let n = v["data"]["groups"][0]["count"].as_u64().unwrap_or(0);
        if n == all.len() as u64 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let data_v = &overall["data"];
    assert_eq!(data_v["relative_accuracy"].as_f64(), Some(0.01));
    assert!(data_v["sketches_merged"].as_u64().unwrap() >= 5, "{overall}");
    assert_close(&data_v["groups"][0], &all);

    // per host, and the glob spelling of the name
    let (status, by_host) = get(&format!(
        "{base}/api/v1/statsd/quantile?name=api.*&start=0&q=0.5,0.9,0.99&group_by=host"
    ));
    assert_eq!(status, 200, "{by_host}");
    let groups = by_host["data"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    for (g, (host, vals)) in groups.iter().zip(hosts.iter().zip(&sent)) {
        assert_eq!(g["group"], *host);
        assert_close(g, vals);
    }

    // pages of one group
    let (_, p1) = get(&url("&group_by=host&limit=1"));
    assert_eq!(p1["data"]["groups"].as_array().unwrap().len(), 1);
    assert_eq!(p1["data"]["next_after"], "web1");
    let (_, p3) = get(&url("&group_by=host&limit=1&after=web2"));
    assert_eq!(p3["data"]["groups"][0]["group"], "web3");
    assert!(p3["data"]["next_after"].is_null());

    // a selector over tags
    let (_, sel) = get(&format!(
        "{base}/api/v1/statsd/quantile?match={}&start=0&q=0.5,0.9,0.99",
        "%7B__name__%3D%22api.latency%22%2Chost%3D~%22web%5B13%5D%22%7D"
    ));
    let some: Vec<f64> = sent[0].iter().chain(&sent[2]).copied().collect();
    assert_close(&sel["data"]["groups"][0], &some);

    // bad requests
    for bad in [
        "",
        "?name=api.latency&q=1.5",
        "?name=api.latency&start=x",
        "?name=api.latency&limit=0",
    ] {
        let (status, v) = get(&format!("{base}/api/v1/statsd/quantile{bad}"));
        assert_eq!(status, 400, "{bad}: {v}");
    }

    // a restart keeps the sketches
    rt.block_on(server.shutdown()).unwrap();
    let server = start(&rt, &data);
    let base2 = format!("http://{}", server.addrs.get("human-http").unwrap());
    let (status, again) = get(&format!(
        "{base2}/api/v1/statsd/quantile?name=api.latency&start=0&q=0.5,0.9,0.99"
    ));
    assert_eq!(status, 200);
    assert_eq!(again["data"]["groups"], overall["data"]["groups"]);
    let (_, metrics) = {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent
            .get(format!("{base2}/metrics"))
            .header("Authorization", format!("Bearer {ADMIN}"))
            .call()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    assert!(metrics.contains("roaster_statsd_sketch_log_bytes"), "{metrics}");
    rt.block_on(server.shutdown()).unwrap();
}
