//! Ingest's self-telemetry: typed counters with their metric names as constants, the typed
//! events that update them ([`IngestDropped`]), and the ring of recent rejections.
//!
//! Units: every `*_total` counter counts points (one Graphite or StatsD line, one
//! remote-write sample, one Influx field, one JSON sample), except where its help says
//! otherwise.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use model::Timestamp;
use model::telemetry::{Counter, Exposition, Gauge, Histogram};
use parking_lot::Mutex;

use crate::source::Source;

/// Points handed to storage, by source.
pub const POINTS_TOTAL: &str = "roaster_ingest_points_total";
/// Points (or lines, packets, connections: see the reason) dropped, by source and reason.
pub const DROPPED_TOTAL: &str = "roaster_ingest_dropped_total";
/// Points waiting in the queue into storage.
pub const QUEUE_DEPTH: &str = "roaster_ingest_queue_depth_points";
/// Capacity of the queue into storage.
pub const QUEUE_CAPACITY: &str = "roaster_ingest_queue_capacity_points";
/// Time plaintext readers spent waiting for room in the queue (backpressure).
pub const QUEUE_BLOCKED_SECONDS: &str = "roaster_ingest_queue_blocked_seconds_total";
/// Time each batch spent in `SampleSink::write` (storage locks, WAL, fsync when durable).
pub const SINK_WAIT_SECONDS: &str = "roaster_ingest_sink_wait_seconds";
/// Series created through ingest.
pub const SERIES_CREATED_TOTAL: &str = "roaster_ingest_series_created_total";
/// Open plaintext TCP connections, by source.
pub const TCP_CONNECTIONS: &str = "roaster_ingest_tcp_connections";
/// StatsD aggregation keys currently held.
pub const STATSD_KEYS: &str = "roaster_ingest_statsd_keys";
/// Effective kernel receive buffer of the UDP sockets.
pub const UDP_RCVBUF_BYTES: &str = "roaster_ingest_udp_receive_buffer_bytes";
/// Datagrams received on the UDP sockets, by source.
pub const UDP_DATAGRAMS_TOTAL: &str = "roaster_ingest_udp_datagrams_total";
/// Datagrams the kernel dropped on our UDP sockets (buffer full, also while paused), by
/// source: the `drops` column of `/proc/net/udp{,6}`.
pub const UDP_SOCKET_DROPS: &str = "roaster_ingest_udp_socket_drops_total";
/// Host-wide UDP receive-buffer overflows (`Udp: RcvbufErrors` in `/proc/net/snmp`).
pub const UDP_RCVBUF_ERRORS: &str = "roaster_ingest_udp_rcvbuf_errors_total";

/// Drop reasons that are not parse errors (those use `wire::Reason::as_str`).
pub mod reason {
    /// The queue into storage was full (UDP; HTTP answers 429 and counts this too).
    pub const QUEUE_FULL: &str = "queue_full";
    /// The source's kill switch is `paused` (HTTP requests refused with 503).
    pub const PAUSED: &str = "paused";
    /// The source's kill switch is `blackholed`.
    pub const BLACKHOLED: &str = "blackholed";
    /// The client address is not in `plaintext_allow_cidrs` (counts packets or connections).
    pub const NOT_ALLOWED: &str = "not_allowed";
    /// A new series would exceed `max_series_per_metric`.
    pub const SERIES_LIMIT_PER_METRIC: &str = "series_limit_per_metric";
    /// A new series would exceed `max_series_total`.
    pub const SERIES_LIMIT_TOTAL: &str = "series_limit_total";
    /// Storage refused the series or could not write.
    pub const STORAGE: &str = "storage_error";
    /// Storage refused the point as older than it accepts.
    pub const TOO_OLD: &str = "too_old";
}

/// The counters of the ingest path.
#[derive(Debug)]
pub(crate) struct Metrics {
    points: [Counter; 7],
    dropped: Mutex<BTreeMap<(Source, &'static str), u64>>,
    pub(crate) queue_blocked_micros: Counter,
    pub(crate) sink_wait: Histogram,
    pub(crate) series_created: Counter,
    pub(crate) tcp_connections: [Gauge; 7],
    pub(crate) statsd_keys: Gauge,
    pub(crate) udp_rcvbuf_bytes: Gauge,
    udp_datagrams: [Counter; 7],
    /// The UDP sockets bound: (source, socket inode), to find their kernel drop counters.
    pub(crate) udp_sockets: Mutex<Vec<(Source, u64)>>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            points: Default::default(),
            dropped: Mutex::new(BTreeMap::new()),
            queue_blocked_micros: Counter::default(),
            sink_wait: Histogram::default(),
            series_created: Counter::default(),
            tcp_connections: Default::default(),
            statsd_keys: Gauge::default(),
            udp_rcvbuf_bytes: Gauge::default(),
            udp_datagrams: Default::default(),
            udp_sockets: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn points(&self, source: Source, n: usize) {
        self.points[source.index()].add(n as u64);
    }

    pub(crate) fn udp_datagrams(&self, source: Source, n: usize) {
        self.udp_datagrams[source.index()].add(n as u64);
    }

    /// Kernel drops on the UDP sockets of a source (`None` when none is bound or the
    /// kernel table is unreadable).
    pub(crate) fn udp_socket_drops(&self, source: Source) -> Option<u64> {
        let sockets = self.udp_sockets.lock().clone();
        let inodes: Vec<u64> = sockets
            .iter()
            .filter(|(s, _)| *s == source)
            .map(|(_, i)| *i)
            .collect();
        if inodes.is_empty() {
            return None;
        }
        let found = crate::udp::socket_drops(&inodes);
        (!found.is_empty()).then(|| found.iter().map(|(_, d)| d).sum())
    }

    pub(crate) fn points_total(&self, source: Source) -> u64 {
        self.points[source.index()].get()
    }

    pub(crate) fn dropped_total(&self, source: Source, reason: &str) -> u64 {
        self.dropped
            .lock()
            .iter()
            .filter(|((s, r), _)| *s == source && *r == reason)
            .map(|(_, n)| *n)
            .sum()
    }

    pub(crate) fn queue_blocked(&self, d: Duration) {
        self.queue_blocked_micros
            .add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    pub(crate) fn render(&self, out: &mut Exposition, queue_depth: usize, queue_capacity: usize) {
        out.family(POINTS_TOTAL, "counter", "Points handed to storage, by source.");
        for s in Source::ALL {
            out.sample(
                POINTS_TOTAL,
                &[("source", s.as_str())],
                self.points_total(s) as f64,
            );
        }
        out.family(
            DROPPED_TOTAL,
            "counter",
            "Points dropped by ingest, by source and reason (not_allowed counts packets or connections).",
        );
        for ((s, r), n) in self.dropped.lock().iter() {
            out.sample(DROPPED_TOTAL, &[("source", s.as_str()), ("reason", r)], *n as f64);
        }
        out.gauge(
            QUEUE_DEPTH,
            "Points waiting in the queue into storage.",
            queue_depth as f64,
        );
        out.gauge(
            QUEUE_CAPACITY,
            "Capacity of the queue into storage, in points.",
            queue_capacity as f64,
        );
        out.family(
            QUEUE_BLOCKED_SECONDS,
            "counter",
            "Time plaintext readers waited for room in the queue.",
        );
        out.sample(
            QUEUE_BLOCKED_SECONDS,
            &[],
            self.queue_blocked_micros.get() as f64 / 1e6,
        );
        out.histogram(
            SINK_WAIT_SECONDS,
            "Time each batch spent in the storage write call.",
            &[],
            &self.sink_wait,
        );
        out.counter(
            SERIES_CREATED_TOTAL,
            "Series created through ingest.",
            self.series_created.get(),
        );
        out.family(
            TCP_CONNECTIONS,
            "gauge",
            "Open plaintext TCP connections, by source.",
        );
        for s in [Source::GraphiteTcp, Source::StatsdTcp] {
            out.sample(
                TCP_CONNECTIONS,
                &[("source", s.as_str())],
                self.tcp_connections[s.index()].get() as f64,
            );
        }
        out.gauge(
            STATSD_KEYS,
            "StatsD aggregation keys currently held.",
            self.statsd_keys.get() as f64,
        );
        out.gauge(
            UDP_RCVBUF_BYTES,
            "Effective kernel receive buffer of the UDP sockets.",
            self.udp_rcvbuf_bytes.get() as f64,
        );
        out.family(
            UDP_DATAGRAMS_TOTAL,
            "counter",
            "Datagrams received on the UDP sockets, by source.",
        );
        for s in [Source::GraphiteUdp, Source::StatsdUdp] {
            out.sample(
                UDP_DATAGRAMS_TOTAL,
                &[("source", s.as_str())],
                self.udp_datagrams[s.index()].get() as f64,
            );
        }
        let drops: Vec<(Source, u64)> = [Source::GraphiteUdp, Source::StatsdUdp]
            .into_iter()
            .filter_map(|s| Some((s, self.udp_socket_drops(s)?)))
            .collect();
        if !drops.is_empty() {
            out.family(
                UDP_SOCKET_DROPS,
                "counter",
                "Datagrams the kernel dropped on our UDP sockets (receive buffer full, also while paused), by source.",
            );
            for (s, n) in drops {
                out.sample(UDP_SOCKET_DROPS, &[("source", s.as_str())], n as f64);
            }
        }
        if let Some(n) = udp_rcvbuf_errors() {
            out.counter(
                UDP_RCVBUF_ERRORS,
                "Host-wide UDP receive-buffer overflows (/proc/net/snmp).",
                n,
            );
        }
    }
}

/// Reads `Udp: ... RcvbufErrors` from `/proc/net/snmp`; `None` off Linux or when absent.
fn udp_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    parse_rcvbuf_errors(&text)
}

fn parse_rcvbuf_errors(text: &str) -> Option<u64> {
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let header = udp.next()?;
    let values = udp.next()?;
    let col = header.split_whitespace().position(|h| h == "RcvbufErrors")?;
    values.split_whitespace().nth(col)?.parse().ok()
}

/// A typed self-telemetry event: points dropped for a reason. `emit` counts it and logs at
/// debug level (drops can come in floods, so they are not logged louder).
#[derive(Debug, Clone, Copy)]
pub(crate) struct IngestDropped {
    pub(crate) source: Source,
    pub(crate) reason: &'static str,
    pub(crate) count: u64,
}

impl IngestDropped {
    pub(crate) fn emit(self, m: &Metrics) {
        if self.count == 0 {
            return;
        }
        *m.dropped.lock().entry((self.source, self.reason)).or_insert(0) += self.count;
        tracing::debug!(
            source = self.source.as_str(),
            reason = self.reason,
            count = self.count,
            "ingest dropped points"
        );
    }
}

/// One rejected line (or sample) kept so users can see why their data is missing.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The source it arrived on.
    pub source: Source,
    /// The reason code, as in `roaster_ingest_dropped_total{reason}`.
    pub reason: &'static str,
    /// The offending input (lossy UTF-8, at most [`EXCERPT_MAX_BYTES`] bytes), with detail.
    pub line_excerpt: String,
    /// When it was rejected.
    pub at: Timestamp,
}

/// Longest excerpt kept of a rejected line.
pub const EXCERPT_MAX_BYTES: usize = 200;

impl serde::Serialize for Rejection {
    /// `{"source":"graphite-tcp","reason":"bad_value","line_excerpt":"...","at_ms":1700000000000}`
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("Rejection", 4)?;
        st.serialize_field("source", self.source.as_str())?;
        st.serialize_field("reason", self.reason)?;
        st.serialize_field("line_excerpt", &self.line_excerpt)?;
        st.serialize_field("at_ms", &self.at.millis())?;
        st.end()
    }
}

/// Truncates text to at most `max` bytes on a char boundary.
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The last N rejections per source.
#[derive(Debug)]
pub(crate) struct Rejections {
    kept: usize,
    rings: [Mutex<VecDeque<Rejection>>; 7],
}

impl Rejections {
    pub(crate) fn new(kept: usize) -> Rejections {
        Rejections {
            kept,
            rings: Default::default(),
        }
    }

    pub(crate) fn push(&self, source: Source, reason: &'static str, line: &str, at: Timestamp) {
        let r = Rejection {
            source,
            reason,
            line_excerpt: excerpt(line, EXCERPT_MAX_BYTES),
            at,
        };
        let mut ring = self.rings[source.index()].lock();
        while ring.len() >= self.kept {
            ring.pop_front();
        }
        ring.push_back(r);
    }

    pub(crate) fn all(&self) -> Vec<Rejection> {
        let mut v: Vec<Rejection> = Vec::new();
        for ring in &self.rings {
            v.extend(ring.lock().iter().cloned());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rcvbuf_errors_are_read_from_snmp() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\nUdp: 10 0 3 7 42 0\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(parse_rcvbuf_errors(text), Some(42));
        assert_eq!(parse_rcvbuf_errors("Ip: a\nIp: 1\n"), None);
    }

    #[test]
    fn ring_keeps_the_last_n_per_source() {
        let r = Rejections::new(2);
        for i in 0..5 {
            r.push(Source::Json, "bad_value", &format!("line {i}"), Timestamp(i));
        }
        r.push(Source::Influx, "malformed", &"é".repeat(300), Timestamp(9));
        let all = r.all();
        let json: Vec<_> = all
            .iter()
            .filter(|r| r.source == Source::Json)
            .map(|r| r.line_excerpt.as_str())
            .collect();
        assert_eq!(json, ["line 3", "line 4"]);
        let influx = all.iter().find(|r| r.source == Source::Influx).unwrap();
        assert!(influx.line_excerpt.len() <= EXCERPT_MAX_BYTES);
        assert_eq!(
            serde_json::to_string(&all[0]).unwrap(),
            r#"{"source":"influx","reason":"malformed","line_excerpt":""#.to_owned()
                + &influx.line_excerpt
                + r#"","at_ms":9}"#
        );
    }
}
