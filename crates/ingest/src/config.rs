//! [`IngestConfig`]: every knob of the ingest path, with its unit in its name.
//!
//! The server embeds this struct as the `[ingest]` section of its TOML config, so field
//! names are public contract: renaming one breaks users' config files.

use serde::{Deserialize, Serialize};

/// Configuration of the robot-facing ingest path: listeners, limits and queues.
///
/// Every bound the ingest path enforces comes from here. [`IngestConfig::validate`] is
/// called by [`crate::Ingest::new`], so a bad value fails at startup naming the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Graphite plaintext over TCP; `""` or `"off"` disables it, port 0 picks a free port.
    pub graphite_tcp_listen: String,
    /// Graphite plaintext over UDP; `""` or `"off"` disables it.
    pub graphite_udp_listen: String,
    /// StatsD over UDP; `""` or `"off"` disables it.
    pub statsd_udp_listen: String,
    /// StatsD over TCP (newline-separated metrics); `""` or `"off"` disables it.
    pub statsd_tcp_listen: String,
    /// Client networks allowed to use the plaintext protocols (Graphite, StatsD), which have
    /// no authentication. Traffic from other addresses is refused and counted (`not_allowed`).
    pub plaintext_allow_cidrs: Vec<String>,
    /// Graphite templates, as InfluxDB's graphite input takes them: `[filter] template [tags]`.
    pub graphite_templates: Vec<String>,
    /// StatsD flush interval in milliseconds (Etsy's `flushInterval`).
    pub statsd_flush_interval_ms: u64,
    /// Percentiles computed for StatsD timers at each flush (`upper_90`, `mean_90`, `sum_90`).
    pub statsd_percentiles: Vec<f64>,
    /// Stop emitting counters that saw no update during a flush interval (Etsy `deleteCounters`).
    pub statsd_delete_idle_counters: bool,
    /// Stop emitting gauges that saw no update during a flush interval (Etsy `deleteGauges`).
    pub statsd_delete_idle_gauges: bool,
    /// Stop emitting timers that saw no update during a flush interval (Etsy `deleteTimers`).
    pub statsd_delete_idle_timers: bool,
    /// Stop emitting sets that saw no update during a flush interval (Etsy `deleteSets`).
    pub statsd_delete_idle_sets: bool,
    /// With `statsd_delete_idle_gauges`, flushes that still send a gauge after its last
    /// update, the first included (Etsy `gaugesMaxTTL`); at least 1.
    pub statsd_gauges_max_ttl_flushes: u32,
    /// Most distinct StatsD aggregation keys (name + tags); new keys beyond it are dropped.
    pub statsd_max_keys: usize,
    /// Most raw timer values kept per key and interval for exact percentiles; beyond it
    /// count/sum/min/max keep updating and percentiles come from the sketch.
    pub statsd_max_timer_samples_per_key: usize,
    /// Most raw timer values kept across all timers per interval.
    pub statsd_max_timer_samples_total: usize,
    /// Most distinct members per StatsD set per interval.
    pub statsd_max_set_members_per_key: usize,
    /// Prefix of every flushed StatsD name (Etsy `globalPrefix`); empty: none.
    pub statsd_global_prefix: String,
    /// Prefix of flushed counters (Etsy `prefixCounter`); empty: none.
    pub statsd_prefix_counter: String,
    /// Prefix of flushed timers (Etsy `prefixTimer`); empty: none.
    pub statsd_prefix_timer: String,
    /// Prefix of flushed gauges (Etsy `prefixGauge`); empty: none.
    pub statsd_prefix_gauge: String,
    /// Prefix of flushed sets (Etsy `prefixSet`); empty: none.
    pub statsd_prefix_set: String,
    /// How long the per-flush timer sketches (`<data>/sketches/`, queried through
    /// `/api/v1/statsd/quantile`) are kept, in hours; 0 stores none.
    pub statsd_sketch_retention_hours: u64,
    /// Most bytes the sketch log may hold; its oldest segments are deleted beyond it.
    pub statsd_sketch_max_bytes: u64,
    /// Size at which a sketch log segment is closed and a new one started, in bytes.
    pub statsd_sketch_segment_bytes: u64,
    /// fsync the sketch log once per flush, after the flush's sketches are written.
    pub statsd_sketch_fsync: bool,
    /// Most sketches one quantile query may merge (the query fails beyond, asking to narrow it).
    pub statsd_sketch_query_max_sketches: usize,
    /// Most groups (`group_by` values) one quantile query may produce.
    pub statsd_sketch_query_max_groups: usize,
    /// Requested kernel receive buffer of UDP sockets, in bytes. `SO_RCVBUF` is capped by
    /// `net.core.rmem_max`; when that is smaller, `SO_RCVBUFFORCE` is used if the process may
    /// (`CAP_NET_ADMIN`, e.g. root). The effective size is logged and exported. The kernel
    /// charges about 830 bytes per queued one-metric datagram and grants twice the request:
    /// the default holds about 80,000 datagrams, 100 ms of a reader stall at 800,000/s.
    /// Memory is only used while datagrams wait.
    pub udp_recv_buffer_bytes: usize,
    /// Most datagrams read by one `recvmmsg` call on a UDP socket (each gets a buffer of
    /// `max_udp_packet_bytes`); 1 to 1024.
    pub udp_batch_datagrams: usize,
    /// Nice value (0–19) every robot-plane thread runs at — the robot runtime, ingest writers
    /// and UDP readers — so that on a saturated machine the human plane wins the CPU. 0 keeps
    /// the process' priority.
    pub robot_thread_nice: i32,
    /// Longest accepted plaintext line (Graphite, StatsD TCP), in bytes.
    pub max_line_bytes: usize,
    /// Largest UDP datagram read, in bytes; longer datagrams are truncated by the kernel and
    /// their last line is rejected.
    pub max_udp_packet_bytes: usize,
    /// Largest HTTP request body, compressed and decompressed, in bytes (413 beyond).
    pub max_http_body_bytes: usize,
    /// Most labels one series may carry (the metric name is not counted).
    pub max_labels_per_series: usize,
    /// Longest metric name, in bytes.
    pub max_name_bytes: usize,
    /// Longest label value (and label name), in bytes.
    pub max_label_value_bytes: usize,
    /// Most series one metric name may have; new series beyond it are rejected.
    pub max_series_per_metric: usize,
    /// Most series in storage; new series beyond it are rejected.
    pub max_series_total: usize,
    /// Capacity of the queue between ingest and storage, in points. When full, HTTP answers
    /// 429, TCP stops reading and UDP drops (`queue_full`). Each queued point costs about 24
    /// bytes: the default (262,144, about 6 MiB) absorbed 5.5 M points/s in the peer benchmark;
    /// 1,048,576 was 12 % faster there but cost 28 MiB more peak memory.
    pub queue_capacity_points: usize,
    /// Most points in one batch handed to storage.
    pub batch_max_points: usize,
    /// Storage writer threads; batches of one connection always go to the same thread, so
    /// each connection's points reach storage in order.
    pub writer_threads: usize,
    /// Read buffer of one plaintext TCP connection, in bytes.
    pub tcp_read_buffer_bytes: usize,
    /// Most open plaintext TCP connections per listener; further connections wait in the
    /// kernel's accept queue.
    pub max_tcp_connections: usize,
    /// Most entries in each Graphite connection's series-id cache (raw key → series id).
    pub graphite_series_cache_entries: usize,
    /// Whether HTTP ingest waits for the WAL fsync before answering 2xx.
    pub http_durable_ack: bool,
    /// `Retry-After` value, in seconds, sent with 429 and 503 answers.
    pub retry_after_seconds: u64,
    /// Rejected lines kept per source for `GET /api/v1/ingest/rejections`.
    pub rejections_kept_per_source: usize,
}

impl Default for IngestConfig {
    fn default() -> IngestConfig {
        let etsy = crate::statsd::aggregator::AggregatorConfig::default();
        IngestConfig {
            graphite_tcp_listen: "127.0.0.1:2003".into(),
            graphite_udp_listen: "127.0.0.1:2003".into(),
            statsd_udp_listen: "127.0.0.1:8125".into(),
            statsd_tcp_listen: "127.0.0.1:8125".into(),
            plaintext_allow_cidrs: vec!["127.0.0.0/8".into(), "::1/128".into()],
            graphite_templates: Vec::new(),
            statsd_flush_interval_ms: 10_000,
            statsd_percentiles: vec![90.0],
            statsd_delete_idle_counters: false,
            statsd_delete_idle_gauges: false,
            statsd_delete_idle_timers: false,
            statsd_delete_idle_sets: false,
            statsd_gauges_max_ttl_flushes: etsy.gauges_max_ttl_flushes,
            statsd_max_keys: 1_000_000,
            statsd_max_timer_samples_per_key: etsy.max_timer_samples_per_key,
            statsd_max_timer_samples_total: etsy.max_timer_samples_total,
            statsd_max_set_members_per_key: etsy.max_set_members_per_key,
            statsd_global_prefix: etsy.global_prefix,
            statsd_prefix_counter: etsy.prefix_counter,
            statsd_prefix_timer: etsy.prefix_timer,
            statsd_prefix_gauge: etsy.prefix_gauge,
            statsd_prefix_set: etsy.prefix_set,
            statsd_sketch_retention_hours: 24 * 14,
            statsd_sketch_max_bytes: 1 << 30,
            statsd_sketch_segment_bytes: 32 << 20,
            statsd_sketch_fsync: true,
            statsd_sketch_query_max_sketches: 2_000_000,
            statsd_sketch_query_max_groups: 1000,
            udp_recv_buffer_bytes: 32 << 20,
            udp_batch_datagrams: 64,
            robot_thread_nice: 10,
            max_line_bytes: 64 << 10,
            max_udp_packet_bytes: 65_535,
            max_http_body_bytes: 32 << 20,
            max_labels_per_series: 64,
            max_name_bytes: 1024,
            max_label_value_bytes: 4096,
            max_series_per_metric: 1_000_000,
            max_series_total: 10_000_000,
            queue_capacity_points: 1 << 18,
            batch_max_points: 16 << 10,
            writer_threads: 2,
            tcp_read_buffer_bytes: 256 << 10,
            max_tcp_connections: 1024,
            graphite_series_cache_entries: 1 << 20,
            http_durable_ack: true,
            retry_after_seconds: 5,
            rejections_kept_per_source: 100,
        }
    }
}

/// A config value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ingest.{key}: {problem}")]
pub struct ConfigError {
    /// The offending key.
    pub key: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl IngestConfig {
    /// Checks every value that could make ingest misbehave; names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: &'static str, problem: &str| {
            Err(ConfigError {
                key,
                problem: problem.into(),
            })
        };
        let positive: [(&'static str, usize); 14] = [
            ("max_line_bytes", self.max_line_bytes),
            ("max_udp_packet_bytes", self.max_udp_packet_bytes),
            ("max_http_body_bytes", self.max_http_body_bytes),
            ("max_name_bytes", self.max_name_bytes),
            ("max_label_value_bytes", self.max_label_value_bytes),
            ("max_series_per_metric", self.max_series_per_metric),
            ("max_series_total", self.max_series_total),
            ("queue_capacity_points", self.queue_capacity_points),
            ("batch_max_points", self.batch_max_points),
            ("writer_threads", self.writer_threads),
            ("tcp_read_buffer_bytes", self.tcp_read_buffer_bytes),
            ("max_tcp_connections", self.max_tcp_connections),
            ("statsd_max_keys", self.statsd_max_keys),
            ("rejections_kept_per_source", self.rejections_kept_per_source),
        ];
        for (key, v) in positive {
            if v == 0 {
                return err(key, "must be greater than 0");
            }
        }
        if self.batch_max_points > self.queue_capacity_points {
            return err("batch_max_points", "must not exceed queue_capacity_points");
        }
        if u32::try_from(self.queue_capacity_points).is_err() {
            return err("queue_capacity_points", "must be below 2^32");
        }
        if !(1..=1024).contains(&self.udp_batch_datagrams) {
            return err("udp_batch_datagrams", "must be between 1 and 1024");
        }
        if !(0..=19).contains(&self.robot_thread_nice) {
            return err("robot_thread_nice", "must be between 0 and 19");
        }
        if self.writer_threads > 64 {
            return err("writer_threads", "must be at most 64");
        }
        if self.tcp_read_buffer_bytes < self.max_line_bytes.saturating_add(1) {
            return err("tcp_read_buffer_bytes", "must be larger than max_line_bytes");
        }
        if self.statsd_flush_interval_ms == 0 {
            return err("statsd_flush_interval_ms", "must be greater than 0");
        }
        if self.statsd_sketch_retention_hours > 24 * 365 * 100 {
            return err("statsd_sketch_retention_hours", "must be at most 100 years");
        }
        if self.statsd_sketch_segment_bytes < 4096 {
            return err("statsd_sketch_segment_bytes", "must be at least 4096");
        }
        if self.statsd_sketch_max_bytes < self.statsd_sketch_segment_bytes {
            return err(
                "statsd_sketch_max_bytes",
                "must be at least statsd_sketch_segment_bytes",
            );
        }
        if self.statsd_sketch_query_max_sketches == 0 || self.statsd_sketch_query_max_groups == 0 {
            return err(
                "statsd_sketch_query_max_sketches",
                "query bounds must be greater than 0",
            );
        }
        if let Err(e) = self.aggregator_config().validate() {
            return err("statsd", &e.to_string());
        }
        for c in &self.plaintext_allow_cidrs {
            if let Err(e) = c.parse::<crate::cidr::Cidr>() {
                return err("plaintext_allow_cidrs", &e.to_string());
            }
        }
        for (key, addr) in [
            ("graphite_tcp_listen", &self.graphite_tcp_listen),
            ("graphite_udp_listen", &self.graphite_udp_listen),
            ("statsd_udp_listen", &self.statsd_udp_listen),
            ("statsd_tcp_listen", &self.statsd_tcp_listen),
        ] {
            if listen_addr(addr).is_err() {
                return err(key, &format!("{addr:?} is not host:port, \"\" or \"off\""));
            }
        }
        Ok(())
    }
}

impl IngestConfig {
    /// The StatsD sketch log's settings; `None` when `statsd_sketch_retention_hours` is 0.
    pub fn sketch_log_config(&self) -> Option<crate::sketchlog::SketchLogConfig> {
        (self.statsd_sketch_retention_hours > 0).then(|| crate::sketchlog::SketchLogConfig {
            retention_ms: i64::try_from(self.statsd_sketch_retention_hours.saturating_mul(3_600_000))
                .unwrap_or(i64::MAX),
            max_bytes: self.statsd_sketch_max_bytes,
            segment_bytes: self.statsd_sketch_segment_bytes,
            fsync: self.statsd_sketch_fsync,
            query_max_sketches: self.statsd_sketch_query_max_sketches,
            query_max_groups: self.statsd_sketch_query_max_groups,
        })
    }

    /// The StatsD aggregator's settings.
    pub fn aggregator_config(&self) -> crate::statsd::aggregator::AggregatorConfig {
        crate::statsd::aggregator::AggregatorConfig {
            flush_interval_ms: i64::try_from(self.statsd_flush_interval_ms).unwrap_or(i64::MAX),
            percentiles: self.statsd_percentiles.clone(),
            delete_idle_counters: self.statsd_delete_idle_counters,
            delete_idle_gauges: self.statsd_delete_idle_gauges,
            gauges_max_ttl_flushes: self.statsd_gauges_max_ttl_flushes,
            delete_idle_timers: self.statsd_delete_idle_timers,
            delete_idle_sets: self.statsd_delete_idle_sets,
            max_keys: self.statsd_max_keys,
            max_timer_samples_per_key: self.statsd_max_timer_samples_per_key,
            max_timer_samples_total: self.statsd_max_timer_samples_total,
            max_set_members_per_key: self.statsd_max_set_members_per_key,
            global_prefix: self.statsd_global_prefix.clone(),
            prefix_counter: self.statsd_prefix_counter.clone(),
            prefix_timer: self.statsd_prefix_timer.clone(),
            prefix_gauge: self.statsd_prefix_gauge.clone(),
            prefix_set: self.statsd_prefix_set.clone(),
        }
    }
}

/// Parses a listen address; `Ok(None)` means the listener is disabled.
pub(crate) fn listen_addr(s: &str) -> Result<Option<std::net::SocketAddr>, std::net::AddrParseError> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse().map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_round_trips() {
        let c = IngestConfig::default();
        c.validate().unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let back: IngestConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn bad_values_name_their_key() {
        type Edit = fn(&mut IngestConfig);
        let cases: &[(Edit, &str)] = &[
            (|c| c.queue_capacity_points = 0, "queue_capacity_points"),
            (
                |c| c.batch_max_points = c.queue_capacity_points + 1,
                "batch_max_points",
            ),
            (
                |c| c.plaintext_allow_cidrs = vec!["10.0.0.0/33".into()],
                "plaintext_allow_cidrs",
            ),
            (|c| c.statsd_percentiles = vec![0.0], "statsd"),
            (|c| c.statsd_gauges_max_ttl_flushes = 0, "statsd"),
            (|c| c.graphite_tcp_listen = "nope".into(), "graphite_tcp_listen"),
            (|c| c.tcp_read_buffer_bytes = 10, "tcp_read_buffer_bytes"),
            (|c| c.udp_batch_datagrams = 0, "udp_batch_datagrams"),
            (|c| c.udp_batch_datagrams = 1025, "udp_batch_datagrams"),
        ];
        for (edit, key) in cases {
            let mut c = IngestConfig::default();
            edit(&mut c);
            assert_eq!(c.validate().unwrap_err().key, *key);
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(serde_json::from_str::<IngestConfig>(r#"{"max_lines":1}"#).is_err());
    }
}
