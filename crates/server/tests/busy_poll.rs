//! Busy-polling of human-plane connections (`server.human_busy_poll_us`), over a real socket
//! with hand-written HTTP/1.1 so the test owns the timing: a client that asks again at once is
//! spun for (and gets the same answers), a client that pauses makes its connection spin once
//! more and then not at all, and budget 0 never spins. The counters are read over the same
//! connection, so no other connection's spin is counted. The listener's spin for the next
//! connection is checked the same way with one request per connection, as Python's urllib
//! asks.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use server::config::Config;

mod common;

use common::{ADMIN, Harness};

fn with_budget(data_dir: &Path, budget_us: u64) -> Config {
    let mut c = Config::default();
    c.server.human_listen = "127.0.0.1:0".into();
    c.server.robot_listen = "off".into();
    c.server.data_dir = data_dir.to_string_lossy().into_owned();
    c.server.shutdown_timeout_ms = 10_000;
    c.server.human_busy_poll_us = budget_us;
    c.ingest.graphite_tcp_listen = "off".into();
    c.ingest.graphite_udp_listen = "off".into();
    c.ingest.statsd_udp_listen = "off".into();
    c.ingest.statsd_tcp_listen = "off".into();
    c
}

/// The largest budget, so that an unoptimised build on a busy machine still hits.
fn polling(d: &Path) -> Config {
    with_budget(d, 1_000)
}

fn not_polling(d: &Path) -> Config {
    with_budget(d, 0)
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Conn {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    /// `GET path` with the admin token; the status and body.
    fn get(&mut self, path: &str) -> (u16, String) {
        // one write: a request split over several would wait for delayed ACKs (Nagle)
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN}\r\n\r\n");
        self.writer.write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, String::from_utf8(body).unwrap())
    }

    /// The busy-poll counters (hits, misses) from `/metrics`, asked over this connection.
    fn counters(&mut self) -> (u64, u64) {
        self.family_counters("roaster_human_busy_polls_total")
    }

    /// The cool-downs so far (`roaster_human_busy_poll_cool_downs_total`) and the spins seen
    /// preempted (`roaster_human_busy_poll_preempted_total`), asked over this connection.
    fn cool_downs_and_preempted(&mut self) -> (u64, u64) {
        let text = self.metrics();
        (
            sample(&text, "roaster_human_busy_poll_cool_downs_total"),
            sample(&text, "roaster_human_busy_poll_preempted_total"),
        )
    }

    /// The (hit, miss) samples of the counter family `name` from `/metrics`.
    fn family_counters(&mut self, name: &str) -> (u64, u64) {
        let text = self.metrics();
        let outcome = |o: &str| sample(&text, &format!("{name}{{outcome=\"{o}\"}}"));
        (outcome("hit"), outcome("miss"))
    }

    /// `/metrics`, asked over this connection.
    fn metrics(&mut self) -> String {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200);
        text
    }
}

/// The value of the sample written `series` (name and labels) in the exposition `text`.
fn sample(text: &str, series: &str) -> u64 {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// 200 requests back to back, then five with pauses far above the budget.
fn fast_then_slow(h: &Harness) -> ((u64, u64), (u64, u64)) {
    let mut c = Conn::open(&h.addr("human-http"));
    for _ in 0..200 {
        assert_eq!(c.get("/healthz"), (200, "ok".to_owned()));
    }
    let fast = c.counters();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(c.get("/healthz"), (200, "ok".to_owned()));
    }
    std::thread::sleep(Duration::from_millis(30));
    (fast, c.counters())
}

#[test]
fn a_client_asking_at_once_is_spun_for_and_a_pausing_one_stops_the_spinning() {
    let h = Harness::start(polling, std::sync::Arc::new(model::SystemClock));
    let ((hits, misses), (hits_after, misses_after)) = fast_then_slow(&h);
    let (cool_downs, _) = Conn::open(&h.addr("human-http")).cool_downs_and_preempted();
    // at most one spin per answer, and requests sent at once are mostly caught
    assert!(
        hits + misses <= 200,
        "{hits} hits + {misses} misses for 200 answers"
    );
    assert!(hits >= 1, "no spin saw the next request ({misses} misses)");
    // pausing: the spin after the /metrics answer misses, and then the connection waits in
    // the event loop without spinning
    assert_eq!(hits_after, hits);
    if cool_downs == 0 {
        assert_eq!(misses_after, misses + 1);
    } else {
        // this machine made the spins compete for a CPU (see the pinned test below), and a
        // cool-down may have covered that answer, so it was not spun for
        assert!(
            misses_after <= misses + 1,
            "{misses} misses, {misses_after} after"
        );
    }
    h.shutdown();
}

#[test]
fn budget_zero_never_spins() {
    let h = Harness::start(not_polling, std::sync::Arc::new(model::SystemClock));
    let (fast, slow) = fast_then_slow(&h);
    assert_eq!(fast, (0, 0));
    assert_eq!(slow, (0, 0));
    assert_eq!(connections_fast_then_slow(&h), ((0, 0), (0, 0)));
    h.shutdown();
}

/// The listener's spin counters (hits, misses), asked over a connection of their own.
fn accept_counters(h: &Harness) -> (u64, u64) {
    Conn::open(&h.addr("human-http")).family_counters("roaster_human_accept_polls_total")
}

/// 200 connections opened back to back with one request each, then five with pauses far
/// above the budget; the listener's counters after each phase.
fn connections_fast_then_slow(h: &Harness) -> ((u64, u64), (u64, u64)) {
    let addr = h.addr("human-http");
    for _ in 0..200 {
        assert_eq!(Conn::open(&addr).get("/healthz"), (200, "ok".to_owned()));
    }
    let fast = accept_counters(h);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(Conn::open(&addr).get("/healthz"), (200, "ok".to_owned()));
    }
    std::thread::sleep(Duration::from_millis(30));
    (fast, accept_counters(h))
}

#[test]
fn the_listener_spins_for_connections_opened_at_once_and_stops_after_a_pause() {
    let h = Harness::start(polling, std::sync::Arc::new(model::SystemClock));
    let ((hits, misses), (hits_after, misses_after)) = connections_fast_then_slow(&h);
    // at most one spin per accept (201 connections), and connections opened at once are
    // mostly caught
    assert!(
        hits + misses <= 201,
        "{hits} hits + {misses} misses for 201 connections"
    );
    assert!(hits >= 1, "no spin saw the next connection ({misses} misses)");
    // pausing: the spin after the counters' connection misses (if that connection came within
    // the budget and so turned the spin on), and then the listener waits in the event loop
    // without spinning: at most one miss for six pauses
    assert_eq!(hits_after, hits);
    assert!(
        misses_after <= misses + 1,
        "{misses} misses before six pauses, {misses_after} after"
    );
    h.shutdown();
}

/// Pins the calling thread, and so the threads it starts from now on, to the first CPU it may
/// run on.
fn pin_to_one_cpu() {
    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
    let allowed = sched_getaffinity(None).unwrap();
    let cpu = (0..CpuSet::MAX_CPU).find(|&c| allowed.is_set(c)).unwrap();
    let mut one = CpuSet::new();
    one.set(cpu);
    sched_setaffinity(None, &one).unwrap();
}

#[test]
fn a_client_on_the_servers_cpu_makes_it_stop_spinning_for_a_while() {
    // the server's threads start from this one, so they share its single CPU with the client
    pin_to_one_cpu();
    let h = Harness::start(polling, std::sync::Arc::new(model::SystemClock));
    let addr = h.addr("human-http");
    // one request per connection, back to back, as Python's urllib asks
    for _ in 0..300 {
        assert_eq!(Conn::open(&addr).get("/healthz"), (200, "ok".to_owned()));
    }
    let (spun_hits, spun_misses) = accept_counters(&h);
    let (cool_downs, preempted) = Conn::open(&addr).cool_downs_and_preempted();
    // a spin holds the CPU the client needs, so the kernel switches the server out mid-spin...
    assert!(preempted >= 4, "only {preempted} spins preempted");
    // ...and half of eight spins preempted starts a cool-down, during which accepts do not spin
    assert!(cool_downs >= 1, "no cool-down after {preempted} preempted spins");
    assert!(
        spun_hits + spun_misses < 300,
        "the listener spun for every connection ({spun_hits} hits, {spun_misses} misses)"
    );
    h.shutdown();
}
