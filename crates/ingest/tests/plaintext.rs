//! Graphite and StatsD over real sockets (port 0): end to end into an in-memory sink,
//! kill switches, limits, allow-list, rejections and UDP shedding.

mod common;

use std::sync::Arc;

use common::{NOW_MS, config, eventually, start};
use ingest::{IngestConfig, Source, SwitchState};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpStream, UdpSocket};

async fn send_tcp(addr: std::net::SocketAddr, text: &str) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(text.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
}

async fn send_udp(addr: std::net::SocketAddr, packets: &[&str]) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for p in packets {
        s.send_to(p.as_bytes(), addr).await.unwrap();
    }
}

fn s(name: &str, ts: i64, v: f64) -> (String, i64, f64) {
    (name.to_owned(), ts, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphite_tcp_lines_arrive_and_bad_lines_cost_one_line() {
    let f = start(config()).await;
    let text = "a.b.c 1.5 1700000000\n\
                bad line here\n\
                a.b.c 2 1700000010\n\
                disk;host=h1;dev=sda 7 1700000000\n\
                now.metric 3\n\
                neg.ts 4 -1\n\
                \n\
                no.newline.at.end 9 1700000001";
    send_tcp(f.addrs.graphite_tcp.unwrap(), text).await;
    let got = f.sink.wait_points(6);
    assert_eq!(
        got,
        vec![
            s(r#"{"a.b.c"}"#, 1_700_000_000_000, 1.5),
            s(r#"{"a.b.c"}"#, 1_700_000_010_000, 2.0),
            s(r#"disk{dev="sda",host="h1"}"#, 1_700_000_000_000, 7.0),
            s(r#"{"now.metric"}"#, NOW_MS, 3.0),
            s(r#"{"neg.ts"}"#, NOW_MS, 4.0),
            s(r#"{"no.newline.at.end"}"#, 1_700_000_001_000, 9.0),
        ]
    );
    let rej = f.ingest.rejections();
    assert_eq!(rej.len(), 1, "{rej:?}");
    assert_eq!(rej[0].source, Source::GraphiteTcp);
    assert!(rej[0].line_excerpt.starts_with("bad line here"), "{rej:?}");
    assert_eq!(f.ingest.dropped_total(Source::GraphiteTcp, rej[0].reason), 1);
    f.ingest.wait_queue_empty().await;
    assert_eq!(f.ingest.points_total(Source::GraphiteTcp), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphite_tcp_line_longer_than_the_buffer_is_skipped_alone() {
    let cfg = IngestConfig {
        max_line_bytes: 100,
        tcp_read_buffer_bytes: 128,
        ..config()
    };
    let f = start(cfg).await;
    let long = format!("x.{} 1 1700000000\n", "y".repeat(1000));
    let text = format!("ok.before 1 1700000000\n{long}ok.after 2 1700000000\n");
    send_tcp(f.addrs.graphite_tcp.unwrap(), &text).await;
    let got = f.sink.wait_points(2);
    let names: Vec<&str> = got.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, [r#"{"ok.before"}"#, r#"{"ok.after"}"#]);
    assert_eq!(f.ingest.dropped_total(Source::GraphiteTcp, "line_too_long"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphite_templates_turn_path_parts_into_labels() {
    let cfg = IngestConfig {
        graphite_templates: vec!["host.measurement.field".into()],
        ..config()
    };
    let f = start(cfg).await;
    send_tcp(f.addrs.graphite_tcp.unwrap(), "web01.cpu.idle 42 1700000000\n").await;
    let got = f.sink.wait_points(1);
    assert_eq!(got, vec![s(r#"cpu_idle{host="web01"}"#, 1_700_000_000_000, 42.0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphite_udp_packets_arrive() {
    let f = start(config()).await;
    send_udp(
        f.addrs.graphite_udp.unwrap(),
        &["u.one 1 1700000000\nu.two 2 1700000000\n", "u.one 3 1700000060"],
    )
    .await;
    let mut got = f.sink.wait_points(3);
    // datagrams read in one batch are resolved together: only each series keeps its order
    got.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    assert_eq!(
        got,
        vec![
            s(r#"{"u.one"}"#, 1_700_000_000_000, 1.0),
            s(r#"{"u.two"}"#, 1_700_000_000_000, 2.0),
            s(r#"{"u.one"}"#, 1_700_000_060_000, 3.0),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statsd_udp_and_tcp_feed_one_aggregator_flushed_on_demand() {
    let f = start(config()).await;
    send_udp(
        f.addrs.statsd_udp.unwrap(),
        &["hits:1|c", "hits:2|c|@0.5\ntemp:20|g", "bogus"],
    )
    .await;
    let ingest = Arc::clone(&f.ingest);
    // the gauge delta must come after the absolute value
    eventually("3 statsd metrics over udp", || ingest.statsd_observed() == 3).await;
    send_tcp(f.addrs.statsd_tcp.unwrap(), "hits:3|c\ntemp:+1|g\n").await;
    eventually("5 statsd metrics", || ingest.statsd_observed() == 5).await;
    f.ingest.flush_statsd().await;
    f.ingest.wait_queue_empty().await;
    let got = f.sink.samples();
    let value = |name: &str| got.iter().find(|p| p.0 == name).map(|p| p.2);
    // 1 + 2/0.5 + 3 = 8 over the 3600 s interval the test configures
    assert_eq!(value(r#"{"hits.count"}"#), Some(8.0), "{got:?}");
    assert_eq!(value(r#"{"hits.rate"}"#), Some(8.0 / 3600.0), "{got:?}");
    assert_eq!(value("temp{}"), Some(21.0), "{got:?}");
    assert!(got.iter().all(|p| p.1 == NOW_MS));
    let rej = f.ingest.rejections();
    assert!(
        rej.iter()
            .any(|r| r.source == Source::StatsdUdp && r.line_excerpt.starts_with("bogus")),
        "{rej:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch_paused_holds_data_and_blackholed_discards_it() {
    let f = start(config()).await;
    let addr = f.addrs.graphite_tcp.unwrap();

    f.switches.set("graphite-tcp", SwitchState::Paused).unwrap();
    send_tcp(addr, "held.metric 1 1700000000\n").await;
    f.switches.set("graphite-tcp", SwitchState::Open).unwrap();
    let got = f.sink.wait_points(1);
    assert_eq!(got, vec![s(r#"{"held.metric"}"#, 1_700_000_000_000, 1.0)]);

    f.switches.set("graphite-tcp", SwitchState::Blackholed).unwrap();
    send_tcp(addr, "gone.metric 1 1700000000\ngone.metric 2 1700000001\n").await;
    let ingest = Arc::clone(&f.ingest);
    eventually("2 blackholed", || {
        ingest.dropped_total(Source::GraphiteTcp, "blackholed") == 2
    })
    .await;

    f.switches.set("graphite-udp", SwitchState::Blackholed).unwrap();
    send_udp(f.addrs.graphite_udp.unwrap(), &["gone.udp 1 1700000000"]).await;
    eventually("udp blackholed", || {
        ingest.dropped_total(Source::GraphiteUdp, "blackholed") == 1
    })
    .await;

    f.switches.set("statsd-udp", SwitchState::Blackholed).unwrap();
    send_udp(f.addrs.statsd_udp.unwrap(), &["a:1|c\nb:1|c"]).await;
    eventually("statsd blackholed", || {
        ingest.dropped_total(Source::StatsdUdp, "blackholed") == 2
    })
    .await;
    assert_eq!(f.ingest.statsd_observed(), 0);
    assert_eq!(f.sink.samples().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_reject_the_series_not_the_batch() {
    let cfg = IngestConfig {
        max_series_per_metric: 2,
        max_series_total: 3,
        max_labels_per_series: 1,
        max_name_bytes: 20,
        ..config()
    };
    let f = start(cfg).await;
    // each row: line, stored?, reason when refused
    let table: &[(&str, bool, &str)] = &[
        ("m;a=1 1 1700000000", true, ""),
        ("m;a=2 1 1700000000", true, ""),
        ("m;a=3 1 1700000000", false, "series_limit_per_metric"),
        ("n 1 1700000000", true, ""),
        ("o 1 1700000000", false, "series_limit_total"),
        ("p;a=1;b=2 1 1700000000", false, "too_many_labels"),
        ("a.very.long.metric.name.indeed 1 1700000000", false, "bad_name"),
        ("m;a=1 2 1700000001", true, ""),
    ];
    let mut text = String::new();
    for (line, _, _) in table {
        text.push_str(line);
        text.push('\n');
    }
    send_tcp(f.addrs.graphite_tcp.unwrap(), &text).await;
    let stored = table.iter().filter(|r| r.1).count();
    f.sink.wait_points(stored);
    f.ingest.wait_queue_empty().await;
    let ingest = Arc::clone(&f.ingest);
    eventually("all refusals counted", || {
        table
            .iter()
            .filter(|r| !r.1)
            .all(|r| ingest.dropped_total(Source::GraphiteTcp, r.2) == 1)
    })
    .await;
    assert_eq!(f.sink.samples().len(), stored);
    let reasons: Vec<&str> = f.ingest.rejections().iter().map(|r| r.reason).collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_outside_the_allow_list_are_refused() {
    let cfg = IngestConfig {
        plaintext_allow_cidrs: vec!["10.0.0.0/8".into()],
        ..config()
    };
    let f = start(cfg).await;
    send_tcp(f.addrs.graphite_tcp.unwrap(), "x 1 1700000000\n").await;
    send_udp(f.addrs.statsd_udp.unwrap(), &["x:1|c"]).await;
    let ingest = Arc::clone(&f.ingest);
    eventually("tcp refused", || {
        ingest.dropped_total(Source::GraphiteTcp, "not_allowed") == 1
    })
    .await;
    eventually("udp refused", || {
        ingest.dropped_total(Source::StatsdUdp, "not_allowed") == 1
    })
    .await;
    assert!(f.sink.samples().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sheds_when_the_queue_is_full_and_tcp_waits() {
    let cfg = IngestConfig {
        queue_capacity_points: 2,
        batch_max_points: 2,
        writer_threads: 1,
        ..config()
    };
    let f = start(cfg).await;
    f.sink.close_gate();
    // the first batch is taken by the writer (blocked in the sink), the second fills the
    // queue, the third cannot be queued
    let udp = f.addrs.graphite_udp.unwrap();
    let ingest = Arc::clone(&f.ingest);
    send_udp(udp, &["q.a 1 1700000000\nq.b 1 1700000000"]).await;
    eventually("first batch queued", || ingest.readiness().is_err()).await;
    send_udp(udp, &["q.c 1 1700000000\nq.d 1 1700000000"]).await;
    eventually("udp drops counted", || {
        ingest.dropped_total(Source::GraphiteUdp, "queue_full") == 2
    })
    .await;
    assert_eq!(f.ingest.readiness(), Err("ingest_queue_saturated".into()));

    // TCP is not dropped: it waits for room
    send_tcp(
        f.addrs.graphite_tcp.unwrap(),
        "t.a 1 1700000000\nt.b 2 1700000000\n",
    )
    .await;
    f.sink.open_gate();
    f.sink.wait_points(4);
    f.ingest.wait_queue_empty().await;
    assert_eq!(f.ingest.dropped_total(Source::GraphiteTcp, "queue_full"), 0);
    assert_eq!(f.ingest.readiness(), Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_flushes_statsd_and_empties_the_queue() {
    let f = start(config()).await;
    // an idle connection must not hold up the drain
    let mut idle = TcpStream::connect(f.addrs.graphite_tcp.unwrap()).await.unwrap();
    idle.write_all(b"idle.metric 1 1700000000\n").await.unwrap();
    f.sink.wait_points(1);
    send_udp(f.addrs.statsd_udp.unwrap(), &["drained:5|c"]).await;
    let ingest = Arc::clone(&f.ingest);
    eventually("observed", || ingest.statsd_observed() == 1).await;
    f.ingest.drain().await;
    let got = f.sink.samples();
    assert!(
        got.iter().any(|p| p.0 == r#"{"drained.count"}"# && p.2 == 5.0),
        "{got:?}"
    );
    assert_eq!(f.ingest.readiness(), Err("shutting_down".into()));
    let mut e = model::telemetry::Exposition::new();
    f.ingest.render_metrics(&mut e);
    let text = e.finish();
    for needle in [
        "roaster_ingest_points_total{source=\"statsd-udp\"}",
        "roaster_ingest_queue_depth_points 0",
        "roaster_ingest_sink_wait_seconds_count",
        "roaster_ingest_statsd_metrics_total{source=\"statsd-udp\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} missing in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_never_break_a_connection() {
    let f = start(config()).await;
    let mut conn = TcpStream::connect(f.addrs.graphite_tcp.unwrap()).await.unwrap();
    let mut udp_text = String::new();
    // xorshift: deterministic garbage biased towards the bytes the parsers care about
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let alphabet = b" \t\r\n;=.-+eE0123456789abcnaif\xff\xc3\x00~";
    let rounds = 200;
    for round in 0..rounds {
        let mut blob = Vec::new();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for _ in 0..(x % 300) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            blob.push(alphabet[(x % alphabet.len() as u64) as usize]);
        }
        blob.extend_from_slice(format!("\nsentinel.{round} 1 1700000000\n").as_bytes());
        conn.write_all(&blob).await.unwrap();
        if round % 20 == 0 {
            udp_text = String::from_utf8_lossy(&blob).into_owned();
            send_udp(f.addrs.statsd_udp.unwrap(), &[&udp_text]).await;
            send_udp(f.addrs.graphite_udp.unwrap(), &[&udp_text]).await;
        }
    }
    conn.shutdown().await.unwrap();
    let ingest = Arc::clone(&f.ingest);
    eventually("every sentinel", || {
        let got = f.sink.samples();
        (0..rounds).all(|r| {
            let name = format!("{{\"sentinel.{r}\"}}");
            got.iter().any(|p| p.0 == name)
        })
    })
    .await;
    assert!(!udp_text.is_empty());
    assert!(ingest.rejections().len() <= 100 * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_keys_stay_refused_and_too_old_points_are_counted() {
    let cfg = IngestConfig {
        max_series_total: 1,
        ..config()
    };
    let f = start(cfg).await;
    f.sink.refuse_older_than(1_600_000_000_000);
    let mut conn = TcpStream::connect(f.addrs.graphite_tcp.unwrap()).await.unwrap();
    conn.write_all(b"first 1 1700000000\nsecond 1 1700000000\n")
        .await
        .unwrap();
    f.sink.wait_points(1);
    let ingest = Arc::clone(&f.ingest);
    eventually("first refusal", || {
        ingest.dropped_total(Source::GraphiteTcp, "series_limit_total") == 1
    })
    .await;
    // the refusal is cached: later lines of the key are counted without a new rejection entry
    conn.write_all(b"second 2 1700000001\nsecond 3 1700000002\nfirst 0 1500000000\n")
        .await
        .unwrap();
    conn.shutdown().await.unwrap();
    eventually("cached refusals", || {
        ingest.dropped_total(Source::GraphiteTcp, "series_limit_total") == 3
    })
    .await;
    eventually("too old", || {
        ingest.dropped_total(Source::GraphiteTcp, "too_old") == 1
    })
    .await;
    assert_eq!(f.ingest.rejections().len(), 1);
    assert_eq!(
        f.sink.samples(),
        vec![("first{}".to_owned(), 1_700_000_000_000, 1.0)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_udp_datagram_loses_only_its_cut_line() {
    let cfg = IngestConfig {
        max_udp_packet_bytes: 32,
        ..config()
    };
    let f = start(cfg).await;
    // 20 bytes + a line cut at byte 32 ("cut.metric 12345" would read as "cut.metric 1")
    send_udp(
        f.addrs.graphite_udp.unwrap(),
        &["whole.one 1 1700000000\ncut.metric 12345 1700000000\n"],
    )
    .await;
    let got = f.sink.wait_points(1);
    assert_eq!(got, vec![s(r#"{"whole.one"}"#, 1_700_000_000_000, 1.0)]);
    let ingest = Arc::clone(&f.ingest);
    eventually("cut line refused", || {
        ingest.dropped_total(Source::GraphiteUdp, "line_too_long") == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flush_timer_writes_statsd_aggregates() {
    let cfg = IngestConfig {
        statsd_flush_interval_ms: 50,
        ..config()
    };
    let f = start(cfg).await;
    send_udp(f.addrs.statsd_udp.unwrap(), &["timed:1|ms\ntimed:3|ms"]).await;
    // the timer flushes every 50 ms; the sink's condition variable says when points land
    // (an early flush may come before the packet is read: wait for the one that has it)
    let mean_name = r#"{"timed.mean"}"#;
    let mut got = f.sink.wait_points(1);
    while !got.iter().any(|p| p.0 == mean_name) {
        got = f.sink.wait_points(got.len() + 1);
    }
    let mean = got.iter().find(|p| p.0 == mean_name).map(|p| p.2);
    assert_eq!(mean, Some(2.0));
}

/// The value of one sample line in an exposition text.
fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_udp_is_not_read_and_kernel_drops_are_counted_per_socket() {
    // the smallest buffer the kernel allows: it holds only a few datagrams
    let f = start(IngestConfig {
        udp_recv_buffer_bytes: 1,
        ..config()
    })
    .await;
    let sent = 1000usize;
    f.switches.set("statsd-udp", SwitchState::Paused).unwrap();
    let packets: Vec<String> = (0..sent).map(|i| format!("k{}:1|c", i % 10)).collect();
    let refs: Vec<&str> = packets.iter().map(String::as_str).collect();
    send_udp(f.addrs.statsd_udp.unwrap(), &refs).await;
    let render = |ingest: &ingest::Ingest| {
        let mut e = model::telemetry::Exposition::new();
        ingest.render_metrics(&mut e);
        e.finish()
    };
    let drops_sample = "roaster_ingest_udp_socket_drops_total{source=\"statsd-udp\"}";
    let ingest = Arc::clone(&f.ingest);
    eventually("kernel drops while paused", || {
        metric(&render(&ingest), drops_sample).is_some_and(|d| d > 0.0)
    })
    .await;
    f.switches.set("statsd-udp", SwitchState::Open).unwrap();
    // every datagram is either read after reopening (the buffer kept it) or a kernel drop
    eventually("held datagrams read, the rest counted as dropped", || {
        let text = render(&ingest);
        let drops = metric(&text, drops_sample).unwrap_or(0.0) as usize;
        let read = metric(&text, "roaster_ingest_udp_datagrams_total{source=\"statsd-udp\"}").unwrap_or(0.0)
            as usize;
        read + drops == sent && ingest.statsd_observed() as usize == read
    })
    .await;
    assert_eq!(f.ingest.dropped_total(Source::StatsdUdp, "paused"), 0);
}
