//! Graphite plaintext listeners: TCP (the throughput path) and UDP.
//!
//! TCP, per connection: read big buffers (`tcp_read_buffer_bytes`), split lines with
//! `memchr`, parse each with `wire::graphite::parse_line` (no allocation), and look the raw
//! key (`path;tags` exactly as sent) up in a per-connection cache of series ids. Only on a
//! miss is a key copied: the misses of one buffer are resolved together in one blocking job
//! (templates → `SeriesKey` → cardinality limits → `sink.resolve`). The points of one buffer
//! form one batch (split at `batch_max_points`), submitted with backpressure: while the
//! queue is full the connection is not read.
//!
//! The cache also remembers refused keys (bad labels, cardinality limits), so a flood of a
//! refused series costs a hash lookup per line, not a storage call; such lines are counted
//! every time but kept in the rejections list only when first refused. The cache is
//! cleared when it reaches `graphite_series_cache_entries`; reconnecting also clears it.
//!
//! UDP: one reader thread per socket, reading batches of datagrams (`crate::udp`),
//! parsing and resolving on that thread, shedding (`queue_full`) when the queue is full.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::{Point, SeriesId, Timestamp};
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};

use crate::limiter::Refused;
use crate::queue::{Batch, QueueFull};
use crate::telemetry::reason;
use crate::udp::{Recv, UDP_POLL, UdpReader, bind_udp};
use crate::{IngestError, Shared, Source, SwitchState, spawn_ingest};

type Hasher = foldhash::fast::RandomState;

/// What a connection knows about a raw key.
#[derive(Clone, Copy)]
enum Known {
    Series(SeriesId),
    Refused(&'static str),
}

/// Raw key bytes → series id (or refusal), bounded.
///
/// Keyed by a 128-bit fingerprint of the raw key (two independently, randomly seeded
/// foldhash hashes) instead of the key itself: an entry is then 32 bytes with no pointer to
/// chase, so a lookup costs one cache miss instead of two or three (measured with
/// `benches/graphite_tcp.rs`, 100,000 series: 280 → 190 ns of CPU per point). Two distinct keys would have to agree on
/// both 64-bit hashes to be confused: about 2^-128 per pair for unseen seeds, so even an
/// adversary who controls the keys cannot aim at a collision without reading the seeds.
struct SeriesCache {
    map: HashMap<u128, Known, std::hash::BuildHasherDefault<PassThrough>>,
    seeds: (Hasher, Hasher),
    cap: usize,
}

/// A hasher for keys that already are uniform hashes: the fingerprint's low 64 bits.
#[derive(Default)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // only u128 keys are hashed here; fold anything else anyway
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 = i as u64;
    }
}

impl SeriesCache {
    fn new(cap: usize) -> SeriesCache {
        SeriesCache {
            map: HashMap::default(),
            seeds: (Hasher::default(), Hasher::default()),
            cap,
        }
    }

    fn fingerprint(&self, key: &[u8]) -> u128 {
        use std::hash::BuildHasher as _;
        (u128::from(self.seeds.0.hash_one(key)) << 64) | u128::from(self.seeds.1.hash_one(key))
    }

    fn get(&self, fp: u128) -> Option<Known> {
        self.map.get(&fp).copied()
    }

    fn insert(&mut self, fp: u128, v: Known) {
        if self.map.len() >= self.cap {
            self.map.clear();
        }
        self.map.insert(fp, v);
    }
}

/// Points of one key not yet in the cache, collected over one buffer.
struct Miss {
    key: String,
    fp: u128,
    points: Vec<(i64, f64)>,
}

/// Resolves missed keys in a blocking context; returns, per key, the id or the refusal.
fn resolve_misses(sh: &Shared, misses: &[Miss]) -> Vec<Result<SeriesId, Refused>> {
    misses
        .iter()
        .map(|m| {
            let (path, tags) = m.key.split_once(';').unwrap_or((&m.key, ""));
            let line = wire::graphite::GraphiteLine {
                key: &m.key,
                path,
                tags,
                value: 0.0,
                timestamp_ms: None,
            };
            let key = line
                .series_key(sh.templates.as_ref(), &sh.limits)
                .map_err(|r| Refused {
                    reason: r.reason.as_str(),
                    detail: r.detail,
                })?;
            sh.limiter.resolve(&key)
        })
        .collect()
}

/// Per-connection (or per-socket) parse state.
pub(crate) struct LineSink {
    source: Source,
    cache: SeriesCache,
    misses: Vec<Miss>,
    miss_index: HashMap<u128, usize, std::hash::BuildHasherDefault<PassThrough>>,
    points: Vec<Point>,
}

impl LineSink {
    fn new(source: Source, cache_cap: usize) -> LineSink {
        LineSink {
            source,
            cache: SeriesCache::new(cache_cap),
            misses: Vec::new(),
            miss_index: HashMap::default(),
            points: Vec::new(),
        }
    }

    /// Parses every complete line of `buf`; hits become points, misses are collected.
    fn lines(&mut self, sh: &Shared, buf: &[u8], now: Timestamp) {
        let mut start = 0;
        let mut lineno = 0usize;
        // lines of already refused keys, counted once per buffer rather than per line
        let mut refused: Vec<(&'static str, usize)> = Vec::new();
        while start < buf.len() {
            let end = memchr::memchr(b'\n', &buf[start..]).map_or(buf.len(), |i| start + i);
            let line = &buf[start..end];
            start = end + 1;
            lineno += 1;
            // blank lines are skipped silently; only lines starting blank need the scan
            if line.first().is_none_or(u8::is_ascii_whitespace) && line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match wire::graphite::parse_line(line, &sh.limits) {
                Ok(gl) => {
                    let ts = gl.timestamp_ms.unwrap_or(now.millis());
                    let fp = self.cache.fingerprint(gl.key.as_bytes());
                    match self.cache.get(fp) {
                        Some(Known::Series(series)) => self.points.push(Point {
                            series,
                            ts,
                            value: gl.value,
                        }),
                        Some(Known::Refused(r)) => match refused.iter_mut().find(|(k, _)| *k == r) {
                            Some((_, n)) => *n += 1,
                            None => refused.push((r, 1)),
                        },
                        None => self.miss(gl.key, fp, ts, gl.value),
                    }
                }
                Err(mut e) => {
                    e.line = lineno;
                    sh.reject_line(self.source, &e, now);
                }
            }
        }
        for (r, n) in refused {
            sh.dropped(self.source, r, n);
        }
    }

    fn miss(&mut self, key: &str, fp: u128, ts: i64, value: f64) {
        match self.miss_index.get(&fp) {
            Some(&i) => {
                if let Some(m) = self.misses.get_mut(i) {
                    m.points.push((ts, value));
                }
            }
            None => {
                self.miss_index.insert(fp, self.misses.len());
                self.misses.push(Miss {
                    key: key.to_owned(),
                    fp,
                    points: vec![(ts, value)],
                });
            }
        }
    }

    /// Applies resolved misses: caches ids and refusals, appends the points.
    fn resolved(
        &mut self,
        sh: &Shared,
        misses: Vec<Miss>,
        ids: Vec<Result<SeriesId, Refused>>,
        now: Timestamp,
    ) {
        self.miss_index.clear();
        for (m, id) in misses.into_iter().zip(ids) {
            match id {
                Ok(series) => {
                    self.points
                        .extend(m.points.iter().map(|&(ts, value)| Point { series, ts, value }));
                    self.cache.insert(m.fp, Known::Series(series));
                }
                Err(r) => {
                    sh.reject(self.source, r.reason, &format!("{} ({})", m.key, r.detail), now);
                    sh.dropped(self.source, r.reason, m.points.len().saturating_sub(1));
                    self.cache.insert(m.fp, Known::Refused(r.reason));
                }
            }
        }
    }

    /// The points gathered so far, as batches of at most `batch_max_points`.
    fn take_batches(&mut self, batch_max: usize) -> Vec<Batch> {
        if self.points.is_empty() {
            return Vec::new();
        }
        // the next read will likely produce as many points: keep the capacity
        let cap = self.points.len();
        let points = std::mem::replace(&mut self.points, Vec::with_capacity(cap));
        if points.len() <= batch_max {
            return vec![self.batch(points)];
        }
        points.chunks(batch_max).map(|c| self.batch(c.to_vec())).collect()
    }

    fn batch(&self, points: Vec<Point>) -> Batch {
        Batch {
            points,
            source: self.source,
            durable: false,
            ack: None,
        }
    }
}

/// Binds the Graphite TCP listener and starts accepting.
pub(crate) async fn start_tcp(sh: Arc<Shared>, addr: SocketAddr) -> Result<SocketAddr, IngestError> {
    listen_tcp(sh, addr, Source::GraphiteTcp, |sh, stream| {
        Box::pin(serve_tcp(sh, stream))
    })
    .await
}

/// Binds a plaintext TCP listener for `source` and serves each accepted connection with
/// `handler` (through [`accept_loop`]); returns the bound address.
pub(crate) async fn listen_tcp(
    sh: Arc<Shared>,
    addr: SocketAddr,
    source: Source,
    handler: Handler,
) -> Result<SocketAddr, IngestError> {
    let bind_err = |e| IngestError::Bind {
        listener: source.as_str(),
        addr,
        source: e,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    tracing::info!(listener = source.as_str(), addr = %local, "listening");
    let sh2 = Arc::clone(&sh);
    spawn_ingest(&sh, accept_loop(sh2, listener, source, handler));
    Ok(local)
}

/// A connection handler, boxed so one accept loop serves Graphite and StatsD.
pub(crate) type Handler =
    fn(Arc<Shared>, TcpStream) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Accepts connections up to `max_tcp_connections`, refusing peers outside the allow-list.
pub(crate) async fn accept_loop(sh: Arc<Shared>, listener: TcpListener, source: Source, handler: Handler) {
    let slots = Arc::new(tokio::sync::Semaphore::new(sh.cfg.max_tcp_connections));
    loop {
        let permit = tokio::select! {
            () = sh.stop.cancelled() => return,
            p = Arc::clone(&slots).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let accepted = tokio::select! {
            () = sh.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning
                tracing::warn!(listener = source.as_str(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !sh.allow.allows(peer.ip()) {
            tracing::debug!(listener = source.as_str(), peer = %peer, "connection refused by plaintext_allow_cidrs");
            sh.dropped(source, reason::NOT_ALLOWED, 1);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let sh2 = Arc::clone(&sh);
        spawn_ingest(&sh, async move {
            let gauge = &sh2.metrics.tcp_connections[source.index()];
            gauge.add(1);
            handler(Arc::clone(&sh2), stream).await;
            gauge.add(-1);
            drop(permit);
        });
    }
}

/// Waits while `source` is paused; `false` when ingest is stopping.
pub(crate) async fn wait_unpaused(sh: &Shared, source: Source) -> bool {
    if sh.switch(source) != SwitchState::Paused {
        return !sh.stop.is_cancelled();
    }
    let mut rx = sh.switches.subscribe();
    while sh.switch(source) == SwitchState::Paused {
        tokio::select! {
            () = sh.stop.cancelled() => return false,
            r = rx.changed() => if r.is_err() { return false },
        }
    }
    !sh.stop.is_cancelled()
}

/// Serves one Graphite TCP connection until EOF, error or shutdown.
async fn serve_tcp(sh: Arc<Shared>, stream: TcpStream) {
    let ls = LineSink::new(Source::GraphiteTcp, sh.cfg.graphite_series_cache_entries);
    read_lines(sh, stream, Lines::Graphite(ls)).await;
}

/// What a plaintext TCP connection carries.
pub(crate) enum Lines {
    /// Graphite lines, with the connection's series cache.
    Graphite(LineSink),
    /// StatsD lines, fed to the shared aggregator.
    Statsd,
}

impl Lines {
    fn source(&self) -> Source {
        match self {
            Lines::Graphite(ls) => ls.source,
            Lines::Statsd => Source::StatsdTcp,
        }
    }

    /// Handles the complete lines of one read; `false` when the connection should close.
    async fn chunk(&mut self, sh: &Arc<Shared>, chunk: &[u8], shard: usize) -> bool {
        let source = self.source();
        if sh.switch(source) == SwitchState::Blackholed {
            let lines = memchr::memchr_iter(b'\n', chunk).count() + usize::from(!chunk.ends_with(b"\n"));
            sh.dropped(source, reason::BLACKHOLED, lines);
            return true;
        }
        match self {
            Lines::Graphite(ls) => process(sh, ls, chunk, shard).await,
            Lines::Statsd => {
                crate::statsd::observe_packet(sh, source, chunk);
                true
            }
        }
    }
}

/// Reads newline-separated lines from a plaintext TCP connection in big buffers, honouring
/// the kill switch (paused: not read), `max_line_bytes` and shutdown.
pub(crate) async fn read_lines(sh: Arc<Shared>, mut stream: TcpStream, mut proto: Lines) {
    let source = proto.source();
    let shard = sh.shard();
    let mut buf = vec![0u8; sh.cfg.tcp_read_buffer_bytes];
    let mut filled = 0usize;
    // inside a line longer than the buffer: skip to its end
    let mut discarding = false;
    loop {
        if !wait_unpaused(&sh, source).await {
            break;
        }
        let Some(free) = buf.get_mut(filled..) else { break };
        let n = tokio::select! {
            () = sh.stop.cancelled() => break,
            r = stream.read(free) => match r { Ok(n) => n, Err(_) => break },
        };
        let eof = n == 0;
        filled += n;
        let mut start = 0;
        if discarding {
            match memchr::memchr(b'\n', &buf[..filled]) {
                Some(i) => {
                    start = i + 1;
                    discarding = false;
                }
                None => {
                    filled = 0;
                    if eof {
                        break;
                    }
                    continue;
                }
            }
        }
        // complete lines end at the last newline; at EOF the tail is a line too
        let end = if eof {
            filled
        } else {
            match memchr::memrchr(b'\n', &buf[start..filled]) {
                Some(i) => start + i + 1,
                None => start,
            }
        };
        if end > start && !proto.chunk(&sh, &buf[start..end], shard).await {
            break;
        }
        if eof {
            break;
        }
        buf.copy_within(end..filled, 0);
        filled -= end;
        if filled == buf.len() {
            let now = sh.clock.now();
            let head = String::from_utf8_lossy(&buf[..buf.len().min(crate::telemetry::EXCERPT_MAX_BYTES)])
                .into_owned();
            sh.reject(source, wire::Reason::LineTooLong.as_str(), &head, now);
            filled = 0;
            discarding = true;
        }
    }
}

/// Handles the complete lines of one read; `false` when the connection should close.
async fn process(sh: &Arc<Shared>, ls: &mut LineSink, chunk: &[u8], shard: usize) -> bool {
    let now = sh.clock.now();
    ls.lines(sh, chunk, now);
    if !ls.misses.is_empty() {
        let misses = std::mem::take(&mut ls.misses);
        let sh2 = Arc::clone(sh);
        let job = tokio::task::spawn_blocking(move || {
            let ids = resolve_misses(&sh2, &misses);
            (misses, ids)
        });
        match job.await {
            Ok((misses, ids)) => ls.resolved(sh, misses, ids, now),
            Err(_) => return false,
        }
    }
    for batch in ls.take_batches(sh.cfg.batch_max_points) {
        let n = batch.points.len();
        match sh.queue.submit(batch, shard, &sh.metrics).await {
            Ok(()) => {}
            Err(QueueFull::Closed) => return false,
            Err(QueueFull::Full | QueueFull::TooBig) => sh.dropped(ls.source, reason::QUEUE_FULL, n),
        }
    }
    true
}

/// Binds the Graphite UDP socket and starts its reader thread.
pub(crate) fn start_udp(sh: Arc<Shared>, addr: SocketAddr) -> Result<SocketAddr, IngestError> {
    let source = Source::GraphiteUdp;
    let socket = bind_udp(&sh, source, addr)?;
    let local = socket.local_addr().map_err(|e| IngestError::Bind {
        listener: source.as_str(),
        addr,
        source: e,
    })?;
    let sh2 = Arc::clone(&sh);
    let t = std::thread::Builder::new()
        .name("roaster-graphite-udp".into())
        .spawn(move || {
            crate::priority::lower_current_thread(sh2.cfg.robot_thread_nice);
            udp_loop(&sh2, socket)
        })
        .map_err(IngestError::Spawn)?;
    sh.threads.lock().push(t);
    Ok(local)
}

fn udp_loop(sh: &Shared, socket: std::net::UdpSocket) {
    let source = Source::GraphiteUdp;
    let mut reader = UdpReader::new(sh, socket, source);
    let mut ls = LineSink::new(source, sh.cfg.graphite_series_cache_entries);
    let mut oldest: Option<Instant> = None;
    loop {
        let got = reader.recv(sh);
        if matches!(got, Recv::Batch) {
            let now = sh.clock.now();
            for p in reader.packets() {
                ls.lines(sh, p, now);
            }
            if !ls.misses.is_empty() {
                let misses = std::mem::take(&mut ls.misses);
                let ids = resolve_misses(sh, &misses);
                ls.resolved(sh, misses, ids, now);
            }
            if !ls.points.is_empty() {
                oldest.get_or_insert_with(Instant::now);
            }
        }
        let stop = matches!(got, Recv::Stop);
        let due = oldest.is_some_and(|t| t.elapsed() >= UDP_POLL)
            || ls.points.len() >= sh.cfg.batch_max_points
            || matches!(got, Recv::Nothing)
            || stop;
        if due {
            oldest = None;
            for b in ls.take_batches(sh.cfg.batch_max_points) {
                let n = b.points.len();
                if sh.queue.try_submit(b, 0).is_err() {
                    sh.dropped(source, reason::QUEUE_FULL, n);
                }
            }
        }
        if stop {
            return;
        }
    }
}
