//! Event store figures from issue 5, measured against a real SQLite file.
//!
//! What it proves, and the targets:
//! - `insert`: sustained ingest with full-text indexing, batches of 500 (≥ 20,000 events/s),
//!   and that re-sending 1,000 stored events costs no more than a fresh 1,000.
//! - `build` + `query`: with a large table (5 M events in the issue), full-text + host filter
//!   p50 ≤ 20 ms / p99 ≤ 100 ms, 24 h annotations ≤ 10 ms, and cursor paging through
//!   100,000 results with flat time per page.
//!
//! Run (release, niced, one mode at a time):
//! ```text
//! CARGO_TARGET_DIR=/work/target-store nice -n 10 cargo bench -p store --bench events -- insert 200000
//! CARGO_TARGET_DIR=/work/target-store nice -n 10 cargo bench -p store --bench events -- build 5000000 /tmp/roaster-events.db
//! CARGO_TARGET_DIR=/work/target-store nice -n 10 cargo bench -p store --bench events -- query /tmp/roaster-events.db
//! ```
//! Every mode opens the store with the default shard count ([`SqliteConfig::shards`], 2
//! since session 5): `build` makes `PATH` plus `PATH`'s `events.1.db`-style shard files, and
//! `query` opens whatever layout `PATH` records (a file built before session 5 opens as one
//! shard, migrated to schema 5 in place).
//!
//! The data is synthetic and deterministic (see [`Gen`]): 1,000 hosts, 40 services, 24 kinds,
//! events spread evenly over 60 days, summaries of six words from a 4,000-word vocabulary,
//! three labels, and a payload of package names on a third of the events.
//!
//! `recent [N] [THREADS]` is the HTTP scenario (`bench/scenarios/events_ingest.py`) in-process:
//! its event shape, times spread over a 100 s window, batches of 500 from THREADS callers;
//! it reports process CPU and bytes written per event, the figures to A/B a storage change by.
//!
//! Schema 4 without its service index (branch s4-events 2026-11-21 13:35, load ≈ 1, see
//! BENCHMARKS.md "Session 4 — events"): 5 M events, one word with a host p50 1.9 ms, p99
//! 3.4 ms; common word with a host 13.6 / 15.7 ms; 24 h annotations, one host 0.30 / 0.74 ms;
//! one service + kind 16 / 24 ms, which is why main's schema 4 keeps the service index;
//! paging flat.
//!
//! Last measured 2026-11-21 11:20–11:28 (schema 2) on the shared 2-core machine (load 2–3):
//! - recent 200 k, 2 threads: 0.037–0.043 s CPU per 1k events, 13.5 KiB written per event
//!   (schema 1 in the same minutes: 0.049–0.055 s, 17 KiB).
//! - insert 200 k: 44,800 events per CPU-second (wall 28,600/s); resend of 1,000 stored
//!   events 2.5 ms against 37 ms for a fresh 1,000; retention deletes ~56,000 events
//!   (with their full-text rows) per CPU-second.
//! - 5 M events (built in 146 s wall / 123 s CPU): 1 word + host p50 1.0 ms, p99 1.3 ms; a
//!   common word (12 % of events) + host p50 8.8 ms, p99 14 ms; 24 h annotations for one
//!   host p50 0.27 ms, p99 0.48 ms; a kind prefix alone: common (1/24) p50 2.4 ms, p99 3.8
//!   ms, no such kind (`deploy.<word>`, decided through the full-text `kind` column) p50
//!   6.7 ms, p99 10 ms; paging 100 k events of one kind prefix 5.1 ms per
//!   1,000-event page (first ten pages) and 4.3 ms (last ten); paging 100 k full-text
//!   matches of a common word 67 and 76 ms per page (the set of matching rowids is rebuilt
//!   for every page).

use std::time::{Duration, Instant};

use model::Timestamp;
use model::event::{Event, EventId, Severity};
use serde_json::value::RawValue;
use store::{AnnotationQuery, EventQuery, EventStore, SqliteConfig, SqliteStore, Synchronous};

const END: i64 = 1_795_000_000_000;
const SPAN_MS: i64 = 60 * 86_400_000;
const HOSTS: u64 = 1000;
const SERVICES: u64 = 40;
const KINDS: &[&str] = &[
    "deploy.started",
    "deploy.finished",
    "deploy.failed",
    "chef.run",
    "chef.failed",
    "ansible.start",
    "ansible.finish",
    "package.installed",
    "package.removed",
    "package.upgraded",
    "user.added",
    "user.removed",
    "file.changed",
    "service.restarted",
    "service.stopped",
    "heartbeat.success",
    "heartbeat.fail",
    "cron.finished",
    "backup.finished",
    "backup.failed",
    "cert.renewed",
    "config.changed",
    "reboot.done",
    "audit.api",
];

/// A small deterministic generator (xorshift64*), so every run builds the same data.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn word(&mut self) -> String {
        word(self.below(4000))
    }

    /// Event number `i` of `total`, spread evenly over the 60 days before `END`.
    fn event(&mut self, i: u64, total: u64) -> Event {
        let time = END - SPAN_MS + (i as i64 * SPAN_MS / total.max(1) as i64);
        let host = self.below(HOSTS);
        let kind = KINDS[self.below(KINDS.len() as u64) as usize];
        let summary = (0..6).map(|_| self.word()).collect::<Vec<_>>().join(" ");
        let payload = (self.below(3) == 0).then(|| {
            let pkgs: Vec<String> = (0..3)
                .map(|_| format!("{}-{}.{}", self.word(), self.below(9), self.below(20)))
                .collect();
            RawValue::from_string(serde_json::json!({"packages": pkgs, "exit": 0}).to_string())
                .unwrap_or_else(|_| RawValue::from_string("null".into()).unwrap())
        });
        Event {
            id: EventId::generate(
                Timestamp(time),
                u128::from(self.next()) << 64 | u128::from(self.next()),
            ),
            time: Timestamp(time),
            received_at: Timestamp(time + 150),
            source: format!("agent-h{host:04}"),
            kind: kind.to_owned(),
            subject: Some(self.word()),
            actor: Some(format!("user{}", self.below(50))),
            host: Some(format!("h{host:04}")),
            service: Some(format!("svc{}", self.below(SERVICES))),
            labels: [
                (
                    "env".to_owned(),
                    ["prod", "staging", "dev"][self.below(3) as usize].to_owned(),
                ),
                ("region".to_owned(), format!("r{}", self.below(8))),
                ("team".to_owned(), format!("team{}", self.below(12))),
            ]
            .into(),
            severity: [
                Severity::Info,
                Severity::Info,
                Severity::Warning,
                Severity::Critical,
            ][self.below(4) as usize],
            summary,
            payload,
        }
    }
}

/// The `n`th word of the vocabulary: two or three syllables.
fn word(n: u64) -> String {
    const SYL: &[&str] = &[
        "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "bo", "da", "fu", "gi", "ha", "je", "pu",
    ];
    let mut s = String::new();
    let mut k = n;
    for _ in 0..3 {
        s.push_str(SYL[(k % 16) as usize]);
        k /= 16;
    }
    s
}

/// CPU time this thread has run (Linux `/proc/thread-self/schedstat`), so figures can be
/// read apart from how busy the shared machine is; zero where unavailable.
fn cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|ns| ns.parse().ok()))
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn open(path: &str, synchronous: Synchronous, batch: usize) -> SqliteStore {
    let mut config = SqliteConfig::new(path);
    config.synchronous = synchronous;
    config.max_batch_items = batch;
    config.cache_kib = 256 * 1024;
    match SqliteStore::open(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot open {path}: {e}");
            std::process::exit(2);
        }
    }
}

fn insert(n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.db");
    let store = open(path.to_str().unwrap(), Synchronous::Normal, 1000);
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let events: Vec<Event> = (0..n).map(|i| g.event(i, n)).collect();
    let start = Instant::now();
    let cpu = cpu_time();
    for batch in events.chunks(500) {
        store.insert_batch(batch).unwrap();
    }
    let took = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu);
    println!(
        "insert: {n} events in batches of 500 (synchronous=NORMAL, full-text): wall {:.2} s = {:.0} events/s; on-CPU {:.2} s = {:.0} events per CPU-second",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        cpu.as_secs_f64(),
        n as f64 / cpu.as_secs_f64().max(1e-9)
    );
    // fresh batches of 1,000 vs the same 1,000 again, five times each
    let (mut fresh_times, mut resend_times) = (Vec::new(), Vec::new());
    let mut dups = 0;
    for round in 0..5 {
        let fresh: Vec<Event> = (0..1000).map(|i| g.event(n + round * 1000 + i, n)).collect();
        let t = Instant::now();
        store.insert_batch(&fresh).unwrap();
        fresh_times.push(t.elapsed());
        let t = Instant::now();
        let results = store.insert_batch(&fresh).unwrap();
        resend_times.push(t.elapsed());
        dups += results
            .iter()
            .filter(|r| **r == store::ItemResult::Duplicate)
            .count();
    }
    fresh_times.sort();
    resend_times.sort();
    println!(
        "idempotency: batch of 1000, median of 5: fresh {:.2} ms, resend {:.2} ms ({dups} of 5000 duplicates, count {})",
        ms(percentile(&fresh_times, 0.5)),
        ms(percentile(&resend_times, 0.5)),
        store.count().unwrap()
    );
    // retention: delete the oldest half (chunks of 10,000, full-text rows included)
    let cut = Timestamp(END - SPAN_MS / 2);
    let (t, c) = (Instant::now(), cpu_time());
    let report = store
        .delete_older_than(&store::Retention {
            events_before: cut,
            audit_before: None,
        })
        .unwrap();
    let (took, cpu) = (t.elapsed(), cpu_time().saturating_sub(c));
    println!(
        "retention: deleted {} non-audit events ({} left) in wall {:.2} s, on-CPU {:.2} s = {:.0} events per CPU-second",
        report.events_deleted,
        store.count().unwrap(),
        took.as_secs_f64(),
        cpu.as_secs_f64(),
        report.events_deleted as f64 / cpu.as_secs_f64().max(1e-9)
    );
}

/// Process-wide CPU time (utime + stime of every thread, checkpointer included) and bytes
/// written (`wchar`), from `/proc/self`; zero where unavailable.
fn process_cpu_and_written() -> (Duration, u64) {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // after the comm: state is field 3, utime 14 and stime 15 (in clock ticks)
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .map(|ticks| Duration::from_millis(ticks * 10))
        .unwrap_or_default();
    let written = std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar: ").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(0);
    (cpu, written)
}

/// One event shaped like `bench/scenarios/events_ingest.py`'s: 11 kinds, 60 hosts, 8
/// services (on 70 %), three labels, a summary line and a ~300–600 byte JSON payload of
/// versions, file paths and a free-text diff; `time` anywhere in a 100 s window.
fn http_like_event(g: &mut Gen, n: u64, window_start: i64) -> Event {
    const KINDS: &[&str] = &[
        "deploy.started",
        "deploy.finished",
        "chef.run",
        "package.installed",
        "package.removed",
        "user.added",
        "user.removed",
        "file.changed",
        "cron.run",
        "ansible.start",
        "ansible.finished",
    ];
    const SVCS: &[&str] = &[
        "shop", "search", "checkout", "auth", "postgres", "redis", "nginx", "billing",
    ];
    const WORDS: &[&str] = &[
        "the", "quick", "change", "rolled", "config", "restart", "reload", "upgrade", "patch", "security",
        "kernel", "disk", "memory", "network", "timeout", "retry", "rollback", "canary", "blue", "green",
        "cluster", "shard", "replica", "primary",
    ];
    let pick = |g: &mut Gen, xs: &[&'static str]| xs[g.below(xs.len() as u64) as usize];
    let kind = pick(g, KINDS);
    let h = g.below(60);
    let host = match h {
        0..30 => format!("web{:02}", h + 1),
        30..40 => format!("db{:02}", h - 29),
        _ => format!("cache{:02}", h - 39),
    };
    let svc = pick(g, SVCS);
    let ver = format!("{}.{}.{}", 1 + g.below(9), g.below(41), g.below(100));
    let files: Vec<String> = (0..1 + g.below(6))
        .map(|_| format!("/etc/{svc}/{}.d/{}.conf", pick(g, WORDS), pick(g, WORDS)))
        .collect();
    let diff: Vec<&str> = (0..20 + g.below(41)).map(|_| pick(g, WORDS)).collect();
    let payload = serde_json::json!({
        "version": ver, "changed_files": files, "diff": diff.join(" "),
        "run_id": g.below(1_000_000_000), "exit_code": ([0, 0, 0, 0, 1, 2][g.below(6) as usize]),
    });
    let time = window_start + g.below(100_000) as i64;
    Event {
        id: EventId::parse(&format!("{:08}-{:03}", n / 500, n % 500), 1024).unwrap(),
        time: Timestamp(time),
        received_at: Timestamp(time + 150),
        source: "bench".into(),
        kind: kind.to_owned(),
        subject: kind.starts_with("package").then(|| "openssl".to_owned()),
        actor: Some("alice".into()),
        summary: format!("{kind} {svc} {ver} on {host}: {} resources updated", g.below(120)),
        service: (g.below(10) < 7).then(|| svc.to_owned()),
        host: Some(host),
        labels: [
            (
                "team".to_owned(),
                ["web", "db", "platform"][g.below(3) as usize].to_owned(),
            ),
            (
                "env".to_owned(),
                ["prod", "staging"][g.below(2) as usize].to_owned(),
            ),
            (
                "dc".to_owned(),
                ["fra1", "ams2", "lon1"][g.below(3) as usize].to_owned(),
            ),
        ]
        .into(),
        severity: [
            Severity::Info,
            Severity::Info,
            Severity::Warning,
            Severity::Critical,
        ][g.below(4) as usize],
        payload: RawValue::from_string(payload.to_string()).ok(),
    }
}

/// The HTTP scenario's store side in-process: `threads` callers (as connections) insert
/// batches of 500 events shaped like `events_ingest.py`'s, times spread over a 100 s window.
/// Reports wall events/s, process CPU (all threads) per 1,000 events and bytes written per
/// event. Knobs (bench only): `EVB_CHECKPOINT_MS` (0 = on the writer),
/// `EVB_CACHE_KIB`.
fn recent(n: u64, threads: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("bench.db"));
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = env("EVB_CHECKPOINT_MS") {
        config.background_checkpoint = (ms > 0).then(|| Duration::from_millis(ms));
    }
    if let Some(c) = env("EVB_CACHE_KIB") {
        config.cache_kib = c as u32;
    }
    config.wal_autocheckpoint_pages = 10_000;
    let store = SqliteStore::open(config).unwrap();
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let batches: Vec<Vec<Event>> = (0..n.div_ceil(500))
        .map(|b| {
            (b * 500..(b * 500 + 500).min(n))
                .map(|i| http_like_event(&mut g, i, END))
                .collect()
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (cpu0, w0) = process_cpu_and_written();
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(batch) = batches.get(i) else { break };
                    store.insert_batch(batch).unwrap();
                }
            });
        }
    });
    let took = start.elapsed();
    let (cpu1, w1) = process_cpu_and_written();
    let cpu = cpu1.saturating_sub(cpu0).as_secs_f64();
    println!(
        "recent: {n} events, {threads} threads: wall {:.0} events/s; process CPU {:.4} s per 1k events; {:.1} KiB written per event; count {}",
        n as f64 / took.as_secs_f64(),
        cpu / (n as f64 / 1000.0),
        (w1 - w0) as f64 / n as f64 / 1024.0,
        store.count().unwrap()
    );
}

fn build(n: u64, path: &str) {
    let store = open(path, Synchronous::Off, 10_000);
    let have = store.count().unwrap();
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let start = Instant::now();
    let cpu = cpu_time();
    let mut done = 0;
    while done < n {
        let batch: Vec<Event> = (done..(done + 10_000).min(n)).map(|i| g.event(i, n)).collect();
        if done >= have {
            store.insert_batch(&batch).unwrap();
        }
        done += batch.len() as u64;
        if done % 500_000 == 0 {
            println!("  {done} events, {:.0} s", start.elapsed().as_secs_f64());
        }
    }
    println!(
        "build: {n} events in {:.0} s wall, {:.0} s on-CPU (synchronous=OFF, batches of 10000), count {}",
        start.elapsed().as_secs_f64(),
        cpu_time().saturating_sub(cpu).as_secs_f64(),
        store.count().unwrap()
    );
}

/// Prints wall-clock and on-CPU percentiles (the machine is shared, so wall time includes
/// waiting for a core; on-CPU time is what the query itself costs).
/// Prints wall-clock percentiles and the mean on-CPU time (the machine is shared, so wall
/// time includes waiting for a core; the kernel accounts CPU time in ticks, so only its mean
/// over many runs is meaningful).
fn report(name: &str, mut samples: Vec<Duration>, cpu: Vec<Duration>, rows: usize) {
    samples.sort();
    let n = samples.len().max(1) as f64;
    println!(
        "{name}: n={} wall p50 {:.2} ms p99 {:.2} ms max {:.2} ms | on-CPU mean {:.2} ms | mean rows {:.1}",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.99)),
        ms(percentile(&samples, 1.0)),
        cpu.iter().map(|d| ms(*d)).sum::<f64>() / n,
        rows as f64 / n
    );
}

fn query(path: &str) {
    let opened = Instant::now();
    let store = open(path, Synchronous::Normal, 1000);
    let count = store.count().unwrap();
    println!(
        "query: {count} events in {path} (opened, pending migrations included, in {:.1} s)",
        opened.elapsed().as_secs_f64()
    );
    let mut g = Gen(42);
    let run = |name: &str, make: &mut dyn FnMut(&mut Gen) -> EventQuery, g: &mut Gen| {
        let (mut samples, mut cpu) = (Vec::new(), Vec::new());
        let mut rows = 0;
        for _ in 0..300 {
            let q = make(g);
            let (t, c) = (Instant::now(), cpu_time());
            let page = store.query(&q).unwrap();
            samples.push(t.elapsed());
            cpu.push(cpu_time().saturating_sub(c));
            rows += page.events.len();
        }
        report(name, samples, cpu, rows);
    };
    run(
        "full text (1 word) + host, limit 100",
        &mut |g| EventQuery {
            q: Some(g.word()),
            host: Some(format!("h{:04}", g.below(HOSTS))),
            ..Default::default()
        },
        &mut g,
    );
    run(
        "full text (1 word) + host + last 7 days, limit 100",
        &mut |g| EventQuery {
            q: Some(g.word()),
            host: Some(format!("h{:04}", g.below(HOSTS))),
            from: Some(Timestamp(END - 7 * 86_400_000)),
            ..Default::default()
        },
        &mut g,
    );
    run(
        "full text (2 words), no other filter, limit 100",
        &mut |g| EventQuery {
            q: Some(format!("{} {}", g.word(), g.word())),
            ..Default::default()
        },
        &mut g,
    );
    run(
        "full text common word (kind token 'deploy', ~12% of events) + host, limit 100",
        &mut |g| EventQuery {
            q: Some("deploy".into()),
            host: Some(format!("h{:04}", g.below(HOSTS))),
            ..Default::default()
        },
        &mut g,
    );
    run(
        "host + kind prefix + label env=prod, limit 100",
        &mut |g| EventQuery {
            host: Some(format!("h{:04}", g.below(HOSTS))),
            kind_prefix: Some("deploy".into()),
            labels: vec![model::Matcher::equal("env", "prod")],
            ..Default::default()
        },
        &mut g,
    );
    run(
        "kind prefix only (deploy.failed, 1/24 of events: the full-text count hits the cap), limit 100",
        &mut |_| EventQuery {
            kind_prefix: Some("deploy.failed".into()),
            ..Default::default()
        },
        &mut g,
    );
    run(
        "kind prefix only, no such kind (driven by the full-text kind column), limit 100",
        &mut |g| EventQuery {
            kind_prefix: Some(format!("deploy.{}", g.word())),
            ..Default::default()
        },
        &mut g,
    );
    let mut ann = |name: &str, make: &mut dyn FnMut(&mut Gen) -> AnnotationQuery| {
        let (mut samples, mut cpu) = (Vec::new(), Vec::new());
        let mut rows = 0;
        for _ in 0..300 {
            let q = make(&mut g);
            let (t, c) = (Instant::now(), cpu_time());
            let a = store.annotations(&q).unwrap();
            samples.push(t.elapsed());
            cpu.push(cpu_time().saturating_sub(c));
            rows += a.rows.len();
        }
        report(name, samples, cpu, rows);
    };
    let day = |g: &mut Gen| {
        let to = END - g.below(50) as i64 * 86_400_000;
        (Timestamp(to - 86_400_000), Timestamp(to))
    };
    ann("annotations 24 h, one host", &mut |g| {
        let (from, to) = day(g);
        AnnotationQuery {
            from,
            to,
            host: Some(format!("h{:04}", g.below(HOSTS))),
            ..Default::default()
        }
    });
    ann("annotations 24 h, one service + kind deploy", &mut |g| {
        let (from, to) = day(g);
        AnnotationQuery {
            from,
            to,
            service: Some(format!("svc{}", g.below(SERVICES))),
            kind_prefix: Some("deploy".into()),
            ..Default::default()
        }
    });
    ann("annotations 24 h, kind deploy.failed (all hosts)", &mut |g| {
        let (from, to) = day(g);
        AnnotationQuery {
            from,
            to,
            kind_prefix: Some("deploy.failed".into()),
            ..Default::default()
        }
    });
    // paging: 100 pages of 1000 through the events of one common kind prefix
    for (name, base) in [
        (
            "kind prefix 'package'",
            EventQuery {
                kind_prefix: Some("package".into()),
                limit: Some(1000),
                ..Default::default()
            },
        ),
        (
            "full text 'deploy'",
            EventQuery {
                q: Some("deploy".into()),
                limit: Some(1000),
                ..Default::default()
            },
        ),
    ] {
        let mut cursor = None;
        let mut times = Vec::new();
        let mut total = 0;
        for _ in 0..100 {
            let q = EventQuery {
                cursor: cursor.clone(),
                ..base.clone()
            };
            let t = Instant::now();
            let page = store.query(&q).unwrap();
            times.push(t.elapsed());
            total += page.events.len();
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        let first: f64 = times.iter().take(10).map(|d| ms(*d)).sum::<f64>() / 10.0;
        let last: f64 = times.iter().rev().take(10).map(|d| ms(*d)).sum::<f64>() / 10.0;
        let max = times.iter().map(|d| ms(*d)).fold(0.0, f64::max);
        println!(
            "paging {name}: {total} events in {} pages of 1000, mean first 10 pages {first:.2} ms, last 10 {last:.2} ms, max {max:.2} ms",
            times.len()
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(0) {
        Some("insert") => insert(arg(1).and_then(|s| s.parse().ok()).unwrap_or(200_000)),
        Some("build") => build(
            arg(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000),
            arg(2).unwrap_or("/tmp/roaster-events.db"),
        ),
        Some("recent") => recent(
            arg(1).and_then(|s| s.parse().ok()).unwrap_or(300_000),
            arg(2).and_then(|s| s.parse().ok()).unwrap_or(2),
        ),
        Some("query") => query(arg(1).unwrap_or("/tmp/roaster-events.db")),
        _ => eprintln!("usage: events (insert [N] | recent [N] [THREADS] | build [N] [PATH] | query [PATH])"),
    }
}
