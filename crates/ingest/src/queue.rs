//! The bounded queue between ingest and storage, and the writer threads that drain it.
//!
//! - Admission is counted in points by a semaphore of `queue_capacity_points` permits: a
//!   batch takes one permit per point and its writer gives them back after `SampleSink::write`
//!   returns. HTTP and UDP use [`Queue::try_submit`] (shed load when full); plaintext TCP and
//!   the StatsD flusher use [`Queue::submit`], which waits for room (backpressure).
//! - Each writer thread has its own bounded channel; a batch goes to writer `shard % writers`,
//!   so the batches of one connection reach storage in the order they were read.
//! - Writers are std threads: the sink blocks, and async tasks never call it.
//!
//! **Invariant:** permits held + permits available = capacity; a batch's permits are returned
//! exactly once, after its write (successful or not).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use model::Point;
use tokio::sync::{Semaphore, oneshot, watch};

use crate::sink::{SampleSink, SinkError, WriteOutcome};
use crate::source::Source;
use crate::telemetry::{IngestDropped, Metrics, reason};

/// Batches waiting per writer thread; permits bound the points, this bounds the batch count.
const WRITER_CHANNEL_BATCHES: usize = 4096;

/// The answer a submitter can wait for.
pub(crate) type Ack = oneshot::Sender<Result<WriteOutcome, SinkError>>;

/// Points of one source on their way to storage.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) points: Vec<Point>,
    pub(crate) source: Source,
    pub(crate) durable: bool,
    pub(crate) ack: Option<Ack>,
}

/// Why a batch was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueFull {
    /// No room right now.
    Full,
    /// The writers are gone (only during teardown).
    Closed,
    /// More points than the whole queue holds: it can never be queued at once.
    TooBig,
}

#[derive(Debug)]
pub(crate) struct Queue {
    capacity: usize,
    permits: Arc<Semaphore>,
    senders: Vec<crossbeam_channel::Sender<Batch>>,
    queued: Arc<AtomicUsize>,
    depth: watch::Receiver<usize>,
}

impl Queue {
    /// Starts `writers` threads writing into `sink`.
    pub(crate) fn start(
        capacity: usize,
        writers: usize,
        sink: Arc<dyn SampleSink>,
        metrics: Arc<Metrics>,
        thread_nice: i32,
    ) -> std::io::Result<Queue> {
        let permits = Arc::new(Semaphore::new(capacity));
        let queued = Arc::new(AtomicUsize::new(0));
        let (depth_tx, depth) = watch::channel(0usize);
        let depth_tx = Arc::new(depth_tx);
        let mut senders = Vec::with_capacity(writers);
        for i in 0..writers.max(1) {
            let (tx, rx) = crossbeam_channel::bounded::<Batch>(WRITER_CHANNEL_BATCHES);
            senders.push(tx);
            let w = Writer {
                rx,
                sink: Arc::clone(&sink),
                metrics: Arc::clone(&metrics),
                permits: Arc::clone(&permits),
                queued: Arc::clone(&queued),
                depth: Arc::clone(&depth_tx),
            };
            std::thread::Builder::new()
                .name(format!("roaster-ingest-writer-{i}"))
                .spawn(move || {
                    crate::priority::lower_current_thread(thread_nice);
                    w.run()
                })?;
        }
        Ok(Queue {
            capacity,
            permits,
            senders,
            queued,
            depth,
        })
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Points queued or being written.
    pub(crate) fn depth(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    fn channel(&self, shard: usize) -> &crossbeam_channel::Sender<Batch> {
        // `senders` is never empty: `start` creates at least one writer
        &self.senders[shard % self.senders.len()]
    }

    fn admitted(&self, n: usize) {
        self.queued.fetch_add(n, Ordering::AcqRel);
    }

    fn give_back(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// Queues every batch or none: HTTP requests are accepted whole or answered 429.
    pub(crate) fn try_submit_all(&self, batches: Vec<Batch>, shard: usize) -> Result<(), QueueFull> {
        let n: usize = batches.iter().map(|b| b.points.len()).sum();
        if n == 0 {
            return Ok(());
        }
        let Ok(n32) = u32::try_from(n) else {
            return Err(QueueFull::TooBig);
        };
        if n > self.capacity {
            return Err(QueueFull::TooBig);
        }
        match self.permits.try_acquire_many(n32) {
            Ok(p) => p.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(QueueFull::Full),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(QueueFull::Closed),
        }
        self.admitted(n);
        let ch = self.channel(shard);
        let mut unsent = 0;
        for b in batches {
            let len = b.points.len();
            if let Err(e) = ch.try_send(b) {
                unsent += len;
                if let Some(ack) = e.into_inner().ack {
                    let _ = ack.send(Err(SinkError::Unavailable("ingest queue full".into())));
                }
            }
        }
        if unsent > 0 {
            self.queued.fetch_sub(unsent, Ordering::AcqRel);
            self.give_back(unsent);
            return Err(QueueFull::Full);
        }
        Ok(())
    }

    /// Queues one batch if there is room.
    pub(crate) fn try_submit(&self, batch: Batch, shard: usize) -> Result<(), QueueFull> {
        self.try_submit_all(vec![batch], shard)
    }

    /// Queues one batch, waiting for room; the time waited is counted as blocked time.
    pub(crate) async fn submit(
        &self,
        batch: Batch,
        shard: usize,
        metrics: &Metrics,
    ) -> Result<(), QueueFull> {
        let n = batch.points.len();
        if n == 0 {
            return Ok(());
        }
        if n > self.capacity {
            return Err(QueueFull::TooBig);
        }
        let n32 = u32::try_from(n).map_err(|_| QueueFull::TooBig)?;
        let started = Instant::now();
        let permit = match self.permits.try_acquire_many(n32) {
            Ok(p) => p,
            Err(_) => self
                .permits
                .acquire_many(n32)
                .await
                .map_err(|_| QueueFull::Closed)?,
        };
        permit.forget();
        self.admitted(n);
        let ch = self.channel(shard);
        let mut batch = batch;
        loop {
            match ch.try_send(batch) {
                Ok(()) => break,
                Err(crossbeam_channel::TrySendError::Full(b)) => {
                    // many tiny batches filled the writer's channel: wait for it to drain
                    batch = b;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                    self.queued.fetch_sub(n, Ordering::AcqRel);
                    self.give_back(n);
                    return Err(QueueFull::Closed);
                }
            }
        }
        let waited = started.elapsed();
        if waited > Duration::from_micros(50) {
            metrics.queue_blocked(waited);
        }
        Ok(())
    }

    /// Waits until every queued point has been written.
    pub(crate) async fn wait_empty(&self) {
        let mut rx = self.depth.clone();
        let _ = rx.wait_for(|_| self.depth() == 0).await;
    }
}

struct Writer {
    rx: crossbeam_channel::Receiver<Batch>,
    sink: Arc<dyn SampleSink>,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
    depth: Arc<watch::Sender<usize>>,
}

impl Writer {
    fn run(self) {
        for batch in self.rx.iter() {
            let n = batch.points.len();
            let started = Instant::now();
            let res = self.sink.write(&batch.points, batch.durable);
            self.metrics.sink_wait.observe(started.elapsed());
            match &res {
                Ok(o) => {
                    self.metrics.points(batch.source, o.accepted);
                    IngestDropped {
                        source: batch.source,
                        reason: reason::TOO_OLD,
                        count: o.too_old as u64,
                    }
                    .emit(&self.metrics);
                }
                Err(e) => {
                    tracing::warn!(source = batch.source.as_str(), points = n, error = %e, "storage refused a batch");
                    IngestDropped {
                        source: batch.source,
                        reason: reason::STORAGE,
                        count: n as u64,
                    }
                    .emit(&self.metrics);
                }
            }
            if let Some(ack) = batch.ack {
                let _ = ack.send(res);
            }
            self.permits.add_permits(n);
            let left = self.queued.fetch_sub(n, Ordering::AcqRel).saturating_sub(n);
            self.depth.send_replace(left);
        }
    }
}
