//! The robot-plane HTTP endpoints over real HTTP/1.1 (a tiny raw client, no extra deps):
//! remote-write, Influx v1/v2, JSON, auth, kill switches, body limits, gzip and shedding.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use common::{NOW_MS, config, eventually, start};
use ingest::{IngestConfig, Source, SwitchState};
use model::{Label, SeriesKey};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn serve(ingest: &ingest::Ingest) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = ingest.robot_router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: roaster\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

const BEARER: &str = "Bearer rst_ingest_test";

fn sample(name: &str, labels: &[(&str, &str)], ts: i64, value: f64) -> wire::Sample {
    wire::Sample {
        key: SeriesKey::new(name, labels.iter().map(|(k, v)| Label::new(*k, *v)).collect()).unwrap(),
        timestamp_ms: Some(ts),
        value,
    }
}

fn remote_write_body(samples: &[wire::Sample]) -> Vec<u8> {
    wire::remote_write::encode(&wire::remote_write::write_request(samples)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_stores_and_refuses_series_alone() {
    let cfg = IngestConfig {
        max_labels_per_series: 1,
        ..config()
    };
    let f = start(cfg).await;
    let addr = serve(&f.ingest).await;
    let ok = remote_write_body(&[
        sample("up", &[("job", "a")], 1_000, 1.0),
        sample("up", &[("job", "a")], 2_000, 0.0),
    ]);
    let rw_headers = [("Authorization", BEARER), ("Content-Encoding", "snappy")];
    let r = post(addr, "/api/v1/write", &rw_headers, &ok).await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        f.sink.samples(),
        vec![
            (r#"up{job="a"}"#.into(), 1_000, 1.0),
            (r#"up{job="a"}"#.into(), 2_000, 0.0)
        ]
    );

    let mixed = remote_write_body(&[
        sample("wide", &[("a", "1"), ("b", "2")], 3_000, 5.0),
        sample("up", &[("job", "b")], 3_000, 1.0),
    ]);
    let r = post(addr, "/api/v1/write", &rw_headers, &mixed).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("too_many_labels"), "{}", r.body);
    assert_eq!(f.sink.samples().len(), 3);
    assert_eq!(f.ingest.dropped_total(Source::RemoteWrite, "too_many_labels"), 1);

    let r = post(addr, "/api/v1/write", &rw_headers, b"not snappy").await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influx_v1_and_v2_with_precision_and_partial_writes() {
    let f = start(config()).await;
    let addr = serve(&f.ingest).await;
    let r = post(
        addr,
        "/write?db=x&precision=s&u=me&p=rst_ingest_test",
        &[],
        b"cpu,host=h1 usage=1.5,idle=90i 1700000000\n",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = post(
        addr,
        "/api/v2/write?org=o&bucket=b&precision=ms",
        &[("Authorization", "Token rst_ingest_test")],
        b"mem used=3 1700000000123\nthis is not a line\nmem free=4\n",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("partial write"), "{}", r.body);
    let got = f.sink.samples();
    assert_eq!(
        got,
        vec![
            (r#"cpu_usage{host="h1"}"#.into(), 1_700_000_000_000, 1.5),
            (r#"cpu_idle{host="h1"}"#.into(), 1_700_000_000_000, 90.0),
            ("mem_used{}".into(), 1_700_000_000_123, 3.0),
            ("mem_free{}".into(), NOW_MS, 4.0),
        ]
    );
    let r = post(
        addr,
        "/write?precision=fortnights",
        &[("Authorization", BEARER)],
        b"m v=1\n",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_answers_accepted_and_rejected_and_takes_gzip() {
    let f = start(config()).await;
    let addr = serve(&f.ingest).await;
    let body = br#"{"series":[
        {"name":"christmaspi.temperature.ham","labels":{"room":"kitchen"},"samples":[[1450000000000,131.2],[null,"NaN"]]},
        {"name":"","samples":[[1,1]]}
    ]}"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(body).unwrap();
    let gz = gz.finish().unwrap();
    let r = post(
        addr,
        "/api/v1/ingest",
        &[
            ("Authorization", BEARER),
            ("Content-Encoding", "gzip"),
            ("Content-Type", "application/json"),
        ],
        &gz,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["rejected"].as_array().unwrap().len(), 1);
    assert_eq!(v["rejected"][0]["index"], 1);
    assert_eq!(v["rejected_total"], 1);
    assert_eq!(v["rejected"][0]["reason"], "bad_name");
    let got = f.sink.samples();
    assert_eq!(
        got[0],
        (
            r#"{"christmaspi.temperature.ham",room="kitchen"}"#.into(),
            1_450_000_000_000,
            131.2
        )
    );
    assert_eq!(got[1].1, NOW_MS);
    assert!(got[1].2.is_nan());

    let r = post(addr, "/api/v1/ingest", &[("Authorization", BEARER)], b"[1,2]").await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_table_for_auth_switches_and_limits() {
    let cfg = IngestConfig {
        max_http_body_bytes: 64,
        ..config()
    };
    let f = start(cfg).await;
    let addr = serve(&f.ingest).await;
    let line = b"m v=1 1700000000000000000\n";
    let big = vec![b'x'; 65];
    // (switch state for influx, headers, body, expected status, expected Retry-After)
    type Row<'a> = (
        SwitchState,
        &'a [(&'a str, &'a str)],
        &'a [u8],
        u16,
        Option<&'a str>,
    );
    let table: &[Row] = &[
        (SwitchState::Open, &[], line, 401, None),
        (
            SwitchState::Open,
            &[("Authorization", "Bearer wrong")],
            line,
            401,
            None,
        ),
        (SwitchState::Open, &[("Authorization", BEARER)], line, 204, None),
        (SwitchState::Open, &[("Authorization", BEARER)], &big, 413, None),
        (
            SwitchState::Open,
            &[("Authorization", BEARER), ("Content-Encoding", "br")],
            line,
            415,
            None,
        ),
        (
            SwitchState::Paused,
            &[("Authorization", BEARER)],
            line,
            503,
            Some("5"),
        ),
        (
            SwitchState::Blackholed,
            &[("Authorization", BEARER)],
            line,
            204,
            None,
        ),
    ];
    for (i, (state, headers, body, status, retry)) in table.iter().enumerate() {
        f.switches.set("influx", *state).unwrap();
        let r = post(addr, "/write", headers, body).await;
        assert_eq!(r.status, *status, "row {i}: {}", r.body);
        assert_eq!(r.header("retry-after"), *retry, "row {i}");
    }
    assert_eq!(f.sink.samples().len(), 1);
    assert_eq!(f.ingest.dropped_total(Source::Influx, "blackholed"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let cfg = IngestConfig {
        queue_capacity_points: 2,
        batch_max_points: 2,
        writer_threads: 1,
        ..config()
    };
    let f = start(cfg).await;
    let addr = serve(&f.ingest).await;
    f.sink.close_gate();
    let first = tokio::spawn(async move {
        post(
            addr,
            "/api/v1/ingest",
            &[("Authorization", BEARER)],
            br#"{"series":[{"name":"a","samples":[[1,1],[2,2]]}]}"#,
        )
        .await
    });
    let ingest = Arc::clone(&f.ingest);
    eventually("queue saturated", || ingest.readiness().is_err()).await;
    let r = post(
        addr,
        "/api/v1/ingest",
        &[("Authorization", BEARER)],
        br#"{"series":[{"name":"b","samples":[[1,1]]}]}"#,
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_eq!(f.ingest.dropped_total(Source::Json, "queue_full"), 1);
    f.sink.open_gate();
    let r = first.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(f.sink.samples().len(), 2);
}
